"""The LND adapter's receiving side (deposits) against a fake LND speaking its REST dialect,
as tests/test_lnd_adapter.py does for payments: AddInvoice (POST /v1/invoices) and
LookupInvoice (GET /v1/invoice/{r_hash_str}), then a deposit through payrail's service paid
at the fake and credited once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import bolt11
import httpx
import pytest
from conftest import PROJECT
from lightning_kit import make_invoice
from test_lnd_adapter import MACAROON, URL, FakeLnd

from payrail.bootstrap import build_runtime
from payrail.domain.deposits import DepositRequest
from payrail.lightning.backend import (
    InvoiceRefused,
    InvoiceState,
    InvoiceStatus,
    UnknownOutcome,
)
from payrail.lightning.lnd import LndRestBackend
from payrail.services import deposits, projects


@dataclass
class FakeLndInvoices(FakeLnd):
    """FakeLnd plus LND's invoice registry: invoices by hash, settled or canceled by hand."""

    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    refuse_with: tuple[int, dict[str, Any]] | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/invoices":
            self.requests.append(request)
            if self.refuse_with is not None:
                return httpx.Response(self.refuse_with[0], json=self.refuse_with[1])
            body = json.loads(request.content)
            preimage = secrets.token_bytes(32)
            payment_hash = hashlib.sha256(preimage).hexdigest()
            request_text = make_invoice(
                int(body["value"]) * 1000,
                description=body["memo"],
                expiry_s=int(body["expiry"]),
                payment_hash=payment_hash,
            )
            r_hash = base64.b64encode(bytes.fromhex(payment_hash)).decode()
            self.invoices[payment_hash] = {
                "r_hash": r_hash,
                "payment_request": request_text,
                "value": body["value"],
                "state": "OPEN",
                "amt_paid_msat": "0",
            }
            return httpx.Response(
                200, json={"r_hash": r_hash, "payment_request": request_text, "add_index": "1"}
            )
        if request.method == "GET" and path.startswith("/v1/invoice/"):
            self.requests.append(request)
            invoice = self.invoices.get(path.removeprefix("/v1/invoice/"))
            if invoice is None:
                return httpx.Response(
                    404, json={"code": 5, "message": "unable to locate invoice", "details": []}
                )
            return httpx.Response(200, json=invoice)
        return super().handler(request)

    def settle(self, payment_hash: str, paid_msat: int | None = None) -> None:
        invoice = self.invoices[payment_hash]
        invoice["state"] = "SETTLED"
        invoice["amt_paid_msat"] = str(paid_msat or int(invoice["value"]) * 1000)


def _node(fake: FakeLndInvoices) -> LndRestBackend:
    return LndRestBackend(URL, MACAROON, 2_000, transport=httpx.MockTransport(fake.handler))


async def test_add_invoice_sends_value_memo_expiry_and_answers_its_hash() -> None:
    fake = FakeLndInvoices()
    node = _node(fake)
    invoice = await node.create_invoice(2_500, "Top-up", 900)
    (request,) = fake.requests
    assert request.headers["Grpc-Metadata-macaroon"] == MACAROON
    assert json.loads(request.content) == {"value": "2500", "memo": "Top-up", "expiry": "900"}
    decoded = bolt11.decode(invoice.bolt11)
    assert decoded.payment_hash == invoice.payment_hash
    assert decoded.amount_msat == 2_500_000
    assert invoice.payment_hash in fake.invoices
    await node.aclose()


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("OPEN", InvoiceState.OPEN),
        ("ACCEPTED", InvoiceState.OPEN),  # a held HTLC is not money received
        ("CANCELED", InvoiceState.CANCELED),
    ],
)
async def test_lookup_maps_lnd_states(state: str, expected: InvoiceState) -> None:
    fake = FakeLndInvoices()
    node = _node(fake)
    invoice = await node.create_invoice(100, "x", 600)
    fake.invoices[invoice.payment_hash]["state"] = state
    assert await node.invoice_status(invoice.payment_hash) == InvoiceStatus(expected)
    assert fake.requests[-1].url.path == f"/v1/invoice/{invoice.payment_hash}"
    await node.aclose()


async def test_a_settled_invoice_is_paid_with_the_amount_lnd_received() -> None:
    fake = FakeLndInvoices()
    node = _node(fake)
    invoice = await node.create_invoice(100, "x", 600)
    fake.settle(invoice.payment_hash, 100_500)
    assert await node.invoice_status(invoice.payment_hash) == InvoiceStatus(
        InvoiceState.PAID, 100_500
    )
    await node.aclose()


async def test_an_unknown_hash_is_not_found_and_another_hash_answered_is_unknown() -> None:
    fake = FakeLndInvoices()
    node = _node(fake)
    assert (await node.invoice_status("ab" * 32)).state == InvoiceState.NOT_FOUND
    invoice = await node.create_invoice(100, "x", 600)
    fake.invoices["cd" * 32] = fake.invoices[invoice.payment_hash]  # answers about another
    with pytest.raises(UnknownOutcome):
        await node.invoice_status("cd" * 32)
    await node.aclose()


async def test_a_refusal_makes_no_invoice_and_other_errors_are_unknown() -> None:
    fake = FakeLndInvoices(refuse_with=(400, {"code": 3, "message": "invoice too large"}))
    node = _node(fake)
    with pytest.raises(InvoiceRefused, match="invoice too large"):
        await node.create_invoice(100, "x", 600)
    fake.refuse_with = (500, {"code": 2, "message": "wallet locked"})
    with pytest.raises(UnknownOutcome):
        await node.create_invoice(100, "x", 600)
    await node.aclose()


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")], ids=["timeout", "down"]
)
async def test_no_answer_is_unknown_outcome_never_unpaid(error: httpx.TransportError) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise error

    node = LndRestBackend(URL, MACAROON, 2_000, transport=httpx.MockTransport(broken))
    with pytest.raises(UnknownOutcome):
        await node.create_invoice(100, "x", 600)
    with pytest.raises(UnknownOutcome):
        await node.invoice_status("ab" * 32)
    await node.aclose()


async def test_a_deposit_through_lnd_is_credited_once_when_lnd_settles_it(settings, clock):
    fake = FakeLndInvoices()
    rt = build_runtime(settings, clock=clock, node=_node(fake))
    try:
        await projects.seed_sandbox(rt)
        start = (await projects.balance(rt, PROJECT))["balance"]
        created = await deposits.create_deposit(
            rt, DepositRequest(PROJECT, 3_000, "via LND", 600, None)
        )
        row = created.row
        assert (await deposits.check(rt, row["id"], cause="test"))["status"] == "open"
        fake.settle(row["payment_hash"])
        for _ in range(3):
            assert (await deposits.check(rt, row["id"], cause="test"))["status"] == "completed"
        assert (await projects.balance(rt, PROJECT))["balance"] == start + 3_000
    finally:
        await rt.aclose()
