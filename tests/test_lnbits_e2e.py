"""End to end in production mode on PostgreSQL: payrail pays real recipients through a real
LNbits 1.6.2. The recipient's Lightning Address is served on loopback (tests/lightning_kit.py)
with invoices of a second LNbits wallet, so every case checks real balances on both sides:
the project's ledger, the paying wallet and the recipient's wallet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from conftest import ADMIN_KEY, _truncate
from lightning_kit import AddressServer, Behaviour
from lnbits_kit import Lnbits, Wallet
from sqlalchemy import func, select

from payrail.bootstrap import Runtime, SimulatedCrash, build_runtime
from payrail.config import Settings
from payrail.db.tables import payouts
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app
from payrail.jobs import queue
from payrail.lightning.lnbits import LnbitsBackend
from payrail.services import projects
from payrail.support.clock import ShiftableClock

PROJECT = "studio_11"
PROJECT_FUNDING_SATS = 50_000
PAYER_FUNDING_SATS = 200_000
AMOUNT = 2_100
FEE = 42  # ceil(2% of 2,100)


@dataclass
class World:
    lnbits: Lnbits
    payer: Wallet
    payee: Wallet
    server: AddressServer
    rt: Runtime
    clock: ShiftableClock
    client: httpx.AsyncClient

    async def balance(self) -> int:
        answer = await self.client.get(
            f"/projects/{PROJECT}/balance", headers={"apikey": ADMIN_KEY}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["balance"]

    def wallets_msat(self) -> tuple[int, int]:
        return self.lnbits.balance_msat(self.payer), self.lnbits.balance_msat(self.payee)

    async def payout_rows(self) -> int:
        async with self.rt.engine.connect() as conn:
            return await conn.scalar(select(func.count()).select_from(payouts))

    async def recover(self) -> None:
        """A later worker pass: leases and backoffs have run out."""
        self.clock.advance(self.rt.settings.lease_ms + queue.BACKOFF_CAP_MS)
        await worker.run_until_idle(self.rt)


class KillAfterSend(httpx.AsyncBaseTransport):
    """LNbits receives the payment, then dies before its answer reaches payrail."""

    def __init__(self, lnbits: Lnbits) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lnbits = lnbits
        self.armed = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.armed and request.method == "POST" and request.url.path == "/api/v1/payments":
            await response.aread()
            self.armed = False
            await asyncio.to_thread(self.lnbits.kill)
            raise httpx.ReadError("LNbits died before answering", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def database_url(pg_url: str) -> str:
    """PostgreSQL only: these are the production cases."""
    asyncio.run(_truncate(pg_url))
    return pg_url


async def _world(lnbits: Lnbits, database_url: str, node_transport=None) -> World:
    if not lnbits.running:
        lnbits.start()
    payer, payee = lnbits.wallet("studio-payer"), lnbits.wallet("player-wallet")
    lnbits.fund(payer, PAYER_FUNDING_SATS)
    server = AddressServer(issuer=lambda msat, md: lnbits.invoice(payee, msat, md)).start()
    settings = Settings(
        mode="production",
        database_url=database_url,
        admin_key=ADMIN_KEY,
        lightning_backend="lnbits",
        lnbits_url=lnbits.url,
        lnbits_admin_key=payer.adminkey,
        lnurl_insecure_hosts=(server.host,),
        stripe_backend="disabled",
        settle_wait_ms=5_000,
        node_timeout_ms=5_000,
        lease_ms=15_000,
        run_worker=False,
    )
    clock = ShiftableClock()
    node = None
    if node_transport is not None:
        node = LnbitsBackend(lnbits.url, payer.adminkey, 5_000, transport=node_transport)
    rt = build_runtime(settings, clock=clock, node=node)
    created = await projects.create_project(rt, PROJECT, "Studio")
    await projects.fund(rt, PROJECT, PROJECT_FUNDING_SATS, "fund-11")
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, runtime=rt, migrate_db=False)),
        base_url="http://test/api/v1",
        headers={"apikey": created.api_key},
    )
    return World(lnbits, payer, payee, server, rt, clock, client)


@pytest.fixture
async def world(lnbits, database_url) -> AsyncIterator[World]:
    w = await _world(lnbits, database_url)
    yield w
    await w.client.aclose()
    await w.rt.aclose()
    w.server.stop()


def _pay(gamertag: str, **extra: object) -> dict[str, object]:
    return {"gamertag": gamertag, "amount": AMOUNT, "projectId": PROJECT, **extra}


async def test_pay_by_gamertag_moves_exactly_the_amount_to_the_recipient_wallet(world):
    await world.client.put(
        "/recipients/Player1", json={"lightningAddress": world.server.address("p1")}
    )
    balance, (payer, payee) = await world.balance(), world.wallets_msat()
    response = await world.client.post("/payouts", json=_pay("player1"))
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data["status"] == "completed" and data["destinationKind"] == "lightning_address"
    assert world.wallets_msat() == (payer - AMOUNT * 1000, payee + AMOUNT * 1000)
    assert await world.balance() == balance - AMOUNT - FEE
    assert len(world.lnbits.outgoing(world.payer, data["paymentHash"])) == 1


async def test_an_invoice_for_another_amount_is_refused_and_nothing_moves(world):
    world.server.behaviours["greedy"] = Behaviour(amount_offset_msat=1_000)
    await world.client.put(
        "/recipients/greedy", json={"lightningAddress": world.server.address("greedy")}
    )
    balance, wallets = await world.balance(), world.wallets_msat()
    response = await world.client.post("/payouts", json=_pay("greedy"))
    assert response.status_code == 502, response.text
    assert response.json()["data"]["error"] == "RECIPIENT_INVOICE_INVALID"
    assert world.wallets_msat() == wallets
    assert await world.balance() == balance
    assert await world.payout_rows() == 0


async def test_unregistered_gamertag_in_production_is_404_before_any_charge(world):
    balance, wallets = await world.balance(), world.wallets_msat()
    response = await world.client.post("/payouts", json=_pay("nobody"))
    assert response.status_code == 404, response.text
    assert response.json()["data"]["error"] == "RECIPIENT_NOT_FOUND"
    assert world.wallets_msat() == wallets
    assert await world.balance() == balance
    assert await world.payout_rows() == 0


async def test_crash_between_recording_the_invoice_and_sending_pays_once(world):
    await world.client.put(
        "/recipients/crashy", json={"lightningAddress": world.server.address("c")}
    )
    balance, (payer, payee) = await world.balance(), world.wallets_msat()
    world.rt.crashpoints.add("after_mark_in_flight")  # invoice recorded, send intent, no send
    with pytest.raises(SimulatedCrash):
        await world.client.post("/payouts", json=_pay("crashy"))
    world.rt.crashpoints.clear()
    async with world.rt.engine.connect() as conn:
        (row,) = (await conn.execute(select(payouts))).mappings()
    assert row["state"] == "in_flight" and row["invoice"]
    await world.recover()
    await world.recover()  # a second pass changes nothing
    async with world.rt.engine.connect() as conn:
        (row,) = (await conn.execute(select(payouts))).mappings()
    assert row["state"] == "completed"
    assert len(world.server.issued) == 1
    assert len(world.lnbits.outgoing(world.payer, row["payment_hash"])) == 1
    assert world.wallets_msat() == (payer - AMOUNT * 1000, payee + AMOUNT * 1000)
    assert await world.balance() == balance - AMOUNT - FEE


async def test_lnbits_killed_after_the_send_stays_pending_then_completes_with_one_payment(
    lnbits, database_url
):
    transport = KillAfterSend(lnbits)
    w = await _world(lnbits, database_url, node_transport=transport)
    try:
        await w.client.put("/recipients/lucky", json={"lightningAddress": w.server.address("l")})
        balance, (payer, payee) = await w.balance(), w.wallets_msat()
        response = await w.client.post("/payouts", json=_pay("lucky"))
        assert response.status_code == 202, response.text
        payout_id = response.json()["data"]["id"]
        assert not lnbits.running
        await w.recover()  # LNbits is down: still unknown, never failed
        state = (await w.client.get(f"/payouts/{payout_id}")).json()["data"]["status"]
        assert state == "pending"
        assert await w.balance() == balance - AMOUNT - FEE  # still reserved, not released
        lnbits.start()
        await w.recover()
        data = (await w.client.get(f"/payouts/{payout_id}")).json()["data"]
        assert data["status"] == "completed"
        assert len(lnbits.outgoing(w.payer, data["paymentHash"])) == 1
        assert len(w.server.issued) == 1
        assert w.wallets_msat() == (payer - AMOUNT * 1000, payee + AMOUNT * 1000)
        assert await w.balance() == balance - AMOUNT - FEE
    finally:
        if not lnbits.running:
            lnbits.start()
        await w.client.aclose()
        await w.rt.aclose()
        w.server.stop()
