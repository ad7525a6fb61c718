"""One contract for every Lightning backend, run against the simulated node, the fake LND
(tests/test_lnd_adapter.py) and a real LNbits 1.6.2 (tests/lnbits_kit.py).

The contract (lightning/backend.py): a payment id is paid at most once whatever is repeated;
status() reports what the backend holds, NOT_FOUND for what it never received; a lost answer
is an UnknownOutcome, never a failure.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import bolt11
import httpx
import pytest
from lightning_kit import free_port, make_invoice
from sqlalchemy import func, select
from test_lnd_adapter import URL, FakeLnd, _backend

from payrail.db.engine import make_engine
from payrail.db.tables import sim_node_payments
from payrail.lightning.backend import (
    Destination,
    DestinationKind,
    LightningBackend,
    NodeStatus,
    PaymentResult,
    UnknownOutcome,
)
from payrail.lightning.lnbits import LnbitsBackend
from payrail.lightning.lnd import LndRestBackend
from payrail.lightning.simulated import SimulatedNode
from payrail.services.faults import FaultStore
from payrail.support.clock import SystemClock

AMOUNT_SATS = 1_234


@dataclass
class Contract:
    node: LightningBackend
    new_invoice: Callable[[int], str]  # amount_sats -> BOLT11 the backend can pay
    sends: Callable[[str], Awaitable[int]]  # payment hash -> payments the backend made for it
    received_msat: Callable[[], int]  # what the recipient holds (-1: not observable)
    unreachable: Callable[[], LightningBackend] | None  # the same backend, its server gone


def _destination(invoice: str) -> Destination:
    return Destination.to_invoice(invoice, bolt11.decode(invoice).payment_hash)


@pytest.fixture(params=["simulated", "fake_lnd", "lnbits"])
async def contract(request, tmp_path) -> AsyncIterator[Contract]:
    if request.param == "simulated":
        path = tmp_path / "sim.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        engine = make_engine(f"sqlite:///{path}")
        clock = SystemClock()
        node = SimulatedNode(engine, clock, FaultStore(engine, clock), seed=11)

        async def sim_sends(payment_hash: str) -> int:
            async with engine.connect() as conn:
                return await conn.scalar(
                    select(func.count()).where(sim_node_payments.c.destination == payment_hash)
                )

        yield Contract(node, lambda sats: make_invoice(sats * 1000), sim_sends, lambda: -1, None)
        await engine.dispose()
    elif request.param == "fake_lnd":
        fake = FakeLnd()
        lnd = _backend(fake)

        async def lnd_sends(payment_hash: str) -> int:
            bodies = [json.loads(r.content) for r in fake.sends()]
            return sum(
                1
                for b in bodies
                if bolt11.decode(b["payment_request"]).payment_hash == payment_hash
            )

        def lnd_gone() -> LightningBackend:
            def refuse(request: httpx.Request) -> httpx.Response:
                raise httpx.ConnectError("connection refused", request=request)

            return LndRestBackend(URL, "ab" * 16, 2_000, transport=httpx.MockTransport(refuse))

        yield Contract(lnd, lambda sats: make_invoice(sats * 1000), lnd_sends, lambda: -1, lnd_gone)
        await lnd.aclose()
    else:
        lnbits = request.getfixturevalue("lnbits")
        payer, payee = lnbits.wallet("contract-payer"), lnbits.wallet("contract-payee")
        lnbits.fund(payer, 100_000)
        node = LnbitsBackend(lnbits.url, payer.adminkey, 10_000)

        async def lnbits_sends(payment_hash: str) -> int:
            return len(lnbits.outgoing(payer, payment_hash))

        def lnbits_gone() -> LightningBackend:
            return LnbitsBackend(f"http://127.0.0.1:{free_port()}", payer.adminkey, 2_000)

        yield Contract(
            node,
            lambda sats: lnbits.invoice(payee, sats * 1000),
            lnbits_sends,
            lambda: lnbits.balance_msat(payee),
            lnbits_gone,
        )
        await node.aclose()


async def test_backend_declares_it_pays_invoices(contract):
    assert DestinationKind.INVOICE in contract.node.kinds


async def test_an_invoice_is_paid_once_however_often_pay_is_repeated(contract):
    invoice = contract.new_invoice(AMOUNT_SATS)
    destination = _destination(invoice)
    before = contract.received_msat()
    assert await contract.node.pay("payout-c1", destination, AMOUNT_SATS) == PaymentResult(
        NodeStatus.SUCCEEDED
    )
    assert (await contract.node.status("payout-c1", destination)).status == NodeStatus.SUCCEEDED
    again = await contract.node.pay("payout-c1", destination, AMOUNT_SATS)
    assert again.status == NodeStatus.SUCCEEDED
    assert await contract.sends(destination.payment_hash) == 1
    if before >= 0:
        assert contract.received_msat() == before + AMOUNT_SATS * 1000


async def test_status_of_a_payment_never_sent_is_not_found(contract):
    destination = _destination(contract.new_invoice(AMOUNT_SATS))
    assert await contract.node.status("payout-never", destination) == PaymentResult(
        NodeStatus.NOT_FOUND
    )
    assert await contract.sends(destination.payment_hash) == 0


# The simulated node has no connection to lose; its unknown outcomes come from fault injection.
@pytest.mark.parametrize("contract", ["fake_lnd", "lnbits"], indirect=True)
async def test_a_lost_connection_is_an_unknown_outcome_never_a_failure(contract):
    assert contract.unreachable is not None
    gone = contract.unreachable()
    destination = _destination(contract.new_invoice(AMOUNT_SATS))
    with pytest.raises(UnknownOutcome):
        await gone.pay("payout-gone", destination, AMOUNT_SATS)
    with pytest.raises(UnknownOutcome):
        await gone.status("payout-gone", destination)
    await gone.aclose()
