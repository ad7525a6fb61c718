"""The LNbits adapter against a fake LNbits speaking its wallet API (no database, no LNbits):
the answers a real LNbits gives only when something goes wrong, which the real-LNbits tests
(tests/test_backend_contract.py, tests/test_lnbits_e2e.py) cannot provoke on demand.

The property throughout: FAILED only when nothing can be out; anything unclear is an
UnknownOutcome or IN_FLIGHT, asked again later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import bolt11
import httpx
import pytest
from lightning_kit import make_invoice

from payrail.lightning.backend import Destination, NodeStatus, PaymentResult, UnknownOutcome
from payrail.lightning.lnbits import LnbitsBackend

URL = "https://lnbits.test"
KEY = "admin-key-of-the-paying-wallet"


def _destination() -> Destination:
    invoice = make_invoice(1_000_000)
    return Destination.to_invoice(invoice, bolt11.decode(invoice).payment_hash)


@dataclass
class FakeLnbits:
    """Payments by hash; `send` decides the answer to POST /api/v1/payments."""

    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    send: list[httpx.Response] = field(default_factory=list)  # answers, in order
    record: list[str | None] = field(default_factory=list)  # status stored per send (None: none)
    track_status: int = 200
    posts: int = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["x-api-key"] == KEY
        if request.method == "GET" and request.url.path.startswith("/api/v1/payments/"):
            if self.track_status != 200:
                return httpx.Response(self.track_status, text="upstream error")
            payment = self.payments.get(request.url.path.rsplit("/", 1)[1])
            if payment is None:
                return httpx.Response(404, json={"detail": "Payment does not exist."})
            if payment["status"] == "success":
                return httpx.Response(200, json={"paid": True, "details": payment})
            return httpx.Response(
                200, json={"paid": False, "status": payment["status"], "details": payment}
            )
        if request.method == "POST" and request.url.path == "/api/v1/payments":
            body = json.loads(request.content)
            assert body["out"] is True
            payment_hash = bolt11.decode(body["bolt11"]).payment_hash
            stored = self.record[self.posts] if self.posts < len(self.record) else None
            answer = self.send[self.posts]
            self.posts += 1
            if stored is not None:
                self.payments[payment_hash] = {"payment_hash": payment_hash, "status": stored}
            return answer
        return httpx.Response(404, json={"detail": "Not Found"})


def _backend(fake: FakeLnbits) -> LnbitsBackend:
    return LnbitsBackend(URL, KEY, 2_000, transport=httpx.MockTransport(fake.handler))


def _paid(status: str) -> httpx.Response:
    return httpx.Response(201, json={"status": status})


async def test_success_is_sent_once_and_a_repeat_asks_instead_of_sending():
    fake = FakeLnbits(send=[_paid("success")], record=["success"])
    node, dest = _backend(fake), _destination()
    assert await node.pay("p1", dest, 1000) == PaymentResult(NodeStatus.SUCCEEDED)
    assert await node.pay("p1", dest, 1000) == PaymentResult(NodeStatus.SUCCEEDED)
    assert fake.posts == 1
    await node.aclose()


async def test_a_refusal_with_no_payment_made_is_a_definite_failure():
    refused = httpx.Response(520, json={"detail": "Insufficient balance.", "status": "failed"})
    fake = FakeLnbits(send=[refused], record=[None])
    node = _backend(fake)
    result = await node.pay("p2", _destination(), 1000)
    assert result == PaymentResult(NodeStatus.FAILED, "refused")
    assert fake.posts == 1  # a refusal is not resubmitted
    await node.aclose()


async def test_lnbits_failed_is_not_final_until_its_funding_source_confirms():
    # LNbits stored the payment as failed (its funding source call errored): unconfirmed.
    failed = httpx.Response(520, json={"detail": "Payment failed: connection", "status": "failed"})
    still_pending = httpx.Response(
        520, json={"detail": "Payment is still pending.", "status": "pending"}
    )
    fake = FakeLnbits(send=[failed, still_pending], record=["failed", None])
    node = _backend(fake)
    with pytest.raises(UnknownOutcome):
        await node.pay("p3", _destination(), 1000)
    assert fake.posts == 2  # the second POST asks LNbits to check with its node
    await node.aclose()


async def test_a_failure_the_node_confirms_is_final():
    failed = httpx.Response(520, json={"detail": "Payment failed: no route", "status": "failed"})
    confirmed = httpx.Response(
        520,
        json={"detail": "Payment is failed node, retrying is not possible.", "status": "failed"},
    )
    fake = FakeLnbits(send=[failed, confirmed], record=["failed", None])
    node, dest = _backend(fake), _destination()
    assert (await node.pay("p4", dest, 1000)).status == NodeStatus.FAILED
    await node.aclose()


async def test_a_failed_payment_the_node_actually_paid_is_a_success():
    failed = httpx.Response(520, json={"detail": "Payment failed: timeout", "status": "failed"})
    paid = httpx.Response(
        520,
        json={
            "detail": "Failed payment was already paid on the fundingsource.",
            "status": "success",
        },
    )
    fake = FakeLnbits(send=[failed, paid], record=["failed", None])
    node = _backend(fake)
    assert (await node.pay("p5", _destination(), 1000)).status == NodeStatus.SUCCEEDED
    await node.aclose()


@pytest.mark.parametrize("http_status", [500, 502, 503])
async def test_a_server_error_on_send_is_an_unknown_outcome(http_status):
    fake = FakeLnbits(send=[httpx.Response(http_status, text="bad gateway")], record=[None])
    node = _backend(fake)
    with pytest.raises(UnknownOutcome):
        await node.pay("p6", _destination(), 1000)
    await node.aclose()


async def test_pending_stays_in_flight_and_status_errors_are_unknown():
    fake = FakeLnbits(send=[_paid("pending")], record=["pending"])
    node, dest = _backend(fake), _destination()
    assert await node.pay("p7", dest, 1000) == PaymentResult(NodeStatus.IN_FLIGHT)
    assert await node.status("p7", dest) == PaymentResult(NodeStatus.IN_FLIGHT)
    fake.track_status = 500
    with pytest.raises(UnknownOutcome):
        await node.status("p7", dest)
    await node.aclose()


async def test_an_answer_about_another_hash_is_never_taken():
    fake = FakeLnbits(
        send=[httpx.Response(201, json={"status": "success", "payment_hash": "ab" * 32})]
    )
    node = _backend(fake)
    with pytest.raises(UnknownOutcome):
        await node.pay("p8", _destination(), 1000)
    await node.aclose()


async def test_only_invoices_are_paid_and_nothing_else_is_sent():
    fake = FakeLnbits()
    node = _backend(fake)
    result = await node.pay("p9", Destination.keysend("02" + "11" * 32), 1000)
    assert result == PaymentResult(NodeStatus.FAILED, "unknown_destination")
    assert fake.posts == 0
    await node.aclose()
