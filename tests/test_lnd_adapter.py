"""The LND REST adapter against a fake LND speaking its REST dialect (no database, no node).

The fake keeps payments by hash like LND's control tower: it refuses a second send for a
hash that is in flight or paid (gRPC AlreadyExists, HTTP 409), answers TrackPaymentV2 for an
unknown hash with NotFound (HTTP 404), and streams newline-delimited {"result": Payment}
updates, split across chunks as a real socket may deliver them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import bolt11
import httpx
import pytest

from payrail.lightning.backend import Destination, NodeStatus, PaymentResult, UnknownOutcome
from payrail.lightning.lnd import KEYSEND_RECORD_TYPE, LndRestBackend

MACAROON = "0201036c6e6402f801030a10" + "ab" * 20
DEST = Destination.keysend("02" + "11" * 32)
URL = "https://lnd.test:8080"


def _chunks(lines: list[dict[str, Any]], hang: bool = False) -> AsyncIterator[bytes]:
    """LND's stream: one JSON object per line, cut mid-line to exercise reassembly."""

    async def gen() -> AsyncIterator[bytes]:
        for line in lines:
            raw = (json.dumps(line) + "\n").encode()
            half = len(raw) // 2
            yield raw[:half]
            await asyncio.sleep(0)
            yield raw[half:]
        if hang:  # a stream LND keeps open while the payment is unresolved
            await asyncio.Event().wait()

    return gen()


def _grpc_error(http_status: int, code: int, message: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": []}}
    return httpx.Response(http_status, content=_chunks([body]))


@dataclass
class FakeLnd:
    """Enough of LND's router REST endpoints; `outcome` decides how a new send ends."""

    outcome: tuple[str, str] = ("SUCCEEDED", "FAILURE_REASON_NONE")
    hang_after_first_update: bool = False
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    before_send: Callable[[FakeLnd, str], httpx.Response | None] | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "GET" and path.startswith("/v2/router/track/"):
            token = path.removeprefix("/v2/router/track/")
            return self._track(base64.urlsafe_b64decode(token).hex())
        if request.method == "POST" and path == "/v2/router/send":
            return self._send(json.loads(request.content))
        return httpx.Response(404, text="Not Found")

    def _track(self, payment_hash: str) -> httpx.Response:
        payment = self.payments.get(payment_hash)
        if payment is None:
            return _grpc_error(404, 5, "payment isn't initiated")
        final = payment["status"] in ("SUCCEEDED", "FAILED")
        return httpx.Response(200, content=_chunks([{"result": payment}], hang=not final))

    def _send(self, body: dict[str, Any]) -> httpx.Response:
        if "payment_request" in body:  # an invoice: LND pays its amount, tracks its hash
            invoice = bolt11.decode(body["payment_request"])
            payment_hash = invoice.payment_hash
            body = body | {"amt": str(invoice.amount_msat // 1000)}
        else:
            payment_hash = base64.b64decode(body["payment_hash"]).hex()
            preimage = base64.b64decode(body["dest_custom_records"][str(KEYSEND_RECORD_TYPE)])
            if hashlib.sha256(preimage).hexdigest() != payment_hash:
                return _grpc_error(400, 3, "preimage does not match payment hash")
        if self.before_send is not None and (early := self.before_send(self, payment_hash)):
            return early
        existing = self.payments.get(payment_hash)
        if existing is not None and existing["status"] == "SUCCEEDED":
            return _grpc_error(409, 6, "invoice is already paid")
        if existing is not None and existing["status"] != "FAILED":
            return _grpc_error(409, 6, "payment is in transition")
        status, reason = self.outcome
        initiated = _payment(payment_hash, "INITIATED", body["amt"])
        final = _payment(payment_hash, status, body["amt"], reason)
        self.payments[payment_hash] = final
        if self.hang_after_first_update:
            self.payments[payment_hash] = initiated
            return httpx.Response(200, content=_chunks([{"result": initiated}], hang=True))
        return httpx.Response(200, content=_chunks([{"result": initiated}, {"result": final}]))

    def sends(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]


def _payment(
    payment_hash: str, status: str, amt: str = "1000", reason: str = "FAILURE_REASON_NONE"
) -> dict[str, Any]:
    htlc_status = {"SUCCEEDED": "SUCCEEDED", "FAILED": "FAILED"}.get(status, "IN_FLIGHT")
    return {
        "payment_hash": payment_hash,
        "value_sat": amt,
        "status": status,
        "failure_reason": reason,
        "payment_preimage": "00" * 32,
        "htlcs": [{"attempt_id": "1", "status": htlc_status}],
    }


def _backend(fake: FakeLnd, **kwargs: Any) -> LndRestBackend:
    kwargs.setdefault("node_timeout_ms", 2_000)
    return LndRestBackend(
        URL,
        kwargs.pop("macaroon_hex", MACAROON),
        kwargs.pop("node_timeout_ms"),
        transport=httpx.MockTransport(fake.handler),
        **kwargs,
    )


async def test_success_sends_keysend_whose_preimage_hashes_to_the_payment_hash() -> None:
    fake = FakeLnd()
    node = _backend(fake)
    assert await node.pay("payout_1", DEST, 5_000) == PaymentResult(NodeStatus.SUCCEEDED)
    (send,) = fake.sends()
    body = json.loads(send.content)
    assert base64.b64decode(body["dest"]).hex() == DEST.node_pubkey
    assert body["amt"] == "5000"
    assert base64.b64decode(body["payment_hash"]).hex() == node.payment_hash("payout_1")
    preimage = base64.b64decode(body["dest_custom_records"][str(KEYSEND_RECORD_TYPE)])
    assert hashlib.sha256(preimage).hexdigest() == node.payment_hash("payout_1")
    assert body["timeout_seconds"] == 60
    assert body["fee_limit_sat"] == "50"  # 1% of 5000
    assert await node.status("payout_1", DEST) == PaymentResult(NodeStatus.SUCCEEDED)
    await node.aclose()


async def test_fee_limit_has_a_floor_so_small_rewards_can_route() -> None:
    fake = FakeLnd()
    node = _backend(fake)
    await node.pay("payout_small", DEST, 100)
    assert json.loads(fake.sends()[0].content)["fee_limit_sat"] == "10"
    await node.aclose()


async def test_every_call_carries_the_macaroon_header() -> None:
    fake = FakeLnd()
    node = _backend(fake)
    await node.pay("payout_1", DEST, 1_000)
    await node.status("payout_1", DEST)
    assert len(fake.requests) == 3  # track, send, track
    assert all(r.headers["Grpc-Metadata-macaroon"] == MACAROON for r in fake.requests)
    await node.aclose()


@pytest.mark.parametrize(
    ("lnd_reason", "expected"),
    [
        ("FAILURE_REASON_TIMEOUT", "timeout"),
        ("FAILURE_REASON_NO_ROUTE", "no_route"),
        ("FAILURE_REASON_INSUFFICIENT_BALANCE", "insufficient_balance"),
        ("FAILURE_REASON_INCORRECT_PAYMENT_DETAILS", "incorrect_payment_details"),
    ],
)
async def test_definite_failure_maps_lnd_reason_to_lower_case(
    lnd_reason: str, expected: str
) -> None:
    fake = FakeLnd(outcome=("FAILED", lnd_reason))
    node = _backend(fake)
    assert await node.pay("payout_f", DEST, 1_000) == PaymentResult(NodeStatus.FAILED, expected)
    assert await node.status("payout_f", DEST) == PaymentResult(NodeStatus.FAILED, expected)
    await node.aclose()


async def test_failed_payment_with_an_htlc_still_in_flight_is_not_final() -> None:
    fake = FakeLnd()
    node = _backend(fake)
    payment = _payment(node.payment_hash("payout_x"), "FAILED", reason="FAILURE_REASON_TIMEOUT")
    payment["htlcs"] = [{"attempt_id": "1", "status": "IN_FLIGHT"}]
    fake.payments[node.payment_hash("payout_x")] = payment
    assert (await node.status("payout_x", DEST)).status == NodeStatus.IN_FLIGHT
    await node.aclose()


async def test_unknown_hash_is_not_found() -> None:
    fake = FakeLnd()
    node = _backend(fake)
    assert await node.status("never_sent", DEST) == PaymentResult(NodeStatus.NOT_FOUND)
    await node.aclose()


async def test_status_of_an_unfinished_payment_answers_in_flight_without_waiting() -> None:
    fake = FakeLnd()
    node = _backend(fake, node_timeout_ms=60_000)
    fake.payments[node.payment_hash("payout_w")] = _payment(
        node.payment_hash("payout_w"), "IN_FLIGHT"
    )
    result = await asyncio.wait_for(node.status("payout_w", DEST), timeout=5)
    assert result == PaymentResult(NodeStatus.IN_FLIGHT)
    await node.aclose()


async def test_resend_of_a_paid_payout_returns_it_and_sends_nothing() -> None:
    fake = FakeLnd()
    node = _backend(fake)
    assert (await node.pay("payout_r", DEST, 1_000)).status == NodeStatus.SUCCEEDED
    restarted = _backend(fake)  # a new process after a crash: same hash, no memory
    assert await restarted.pay("payout_r", DEST, 1_000) == PaymentResult(NodeStatus.SUCCEEDED)
    assert len(fake.sends()) == 1
    await node.aclose()
    await restarted.aclose()


async def test_resend_of_a_failed_payout_is_not_retried_by_lnd() -> None:
    # LND would accept a new send for a failed hash; FAILED must stay final.
    fake = FakeLnd(outcome=("FAILED", "FAILURE_REASON_NO_ROUTE"))
    node = _backend(fake)
    await node.pay("payout_nf", DEST, 1_000)
    fake.outcome = ("SUCCEEDED", "FAILURE_REASON_NONE")
    assert await node.pay("payout_nf", DEST, 1_000) == PaymentResult(NodeStatus.FAILED, "no_route")
    assert len(fake.sends()) == 1
    await node.aclose()


async def test_already_paid_refusal_from_send_falls_back_to_the_existing_payment() -> None:
    # A concurrent sender records the payment between our track and our send.
    def paid_meanwhile(fake: FakeLnd, payment_hash: str) -> httpx.Response | None:
        fake.payments[payment_hash] = _payment(payment_hash, "SUCCEEDED")
        return None

    fake = FakeLnd(before_send=paid_meanwhile)
    node = _backend(fake)
    assert await node.pay("payout_c", DEST, 1_000) == PaymentResult(NodeStatus.SUCCEEDED)
    assert [r.method for r in fake.requests] == ["GET", "POST", "GET"]
    await node.aclose()


async def test_in_transition_refusal_from_send_answers_in_flight() -> None:
    def in_flight_meanwhile(fake: FakeLnd, payment_hash: str) -> httpx.Response | None:
        fake.payments[payment_hash] = _payment(payment_hash, "IN_FLIGHT")
        return None

    fake = FakeLnd(before_send=in_flight_meanwhile)
    node = _backend(fake)
    assert await node.pay("payout_t", DEST, 1_000) == PaymentResult(NodeStatus.IN_FLIGHT)
    await node.aclose()


async def test_invalid_argument_with_no_payment_created_is_a_definite_refusal() -> None:
    def reject(fake: FakeLnd, payment_hash: str) -> httpx.Response | None:
        return _grpc_error(400, 3, "destination does not support keysend")

    fake = FakeLnd(before_send=reject)
    node = _backend(fake)
    assert await node.pay("payout_i", DEST, 1_000) == PaymentResult(NodeStatus.FAILED, "refused")
    await node.aclose()


async def test_other_node_errors_are_unknown_not_failed() -> None:
    def syncing(fake: FakeLnd, payment_hash: str) -> httpx.Response | None:
        return _grpc_error(500, 2, "chain backend is still syncing")

    fake = FakeLnd(before_send=syncing)
    node = _backend(fake)
    with pytest.raises(UnknownOutcome):
        await node.pay("payout_s", DEST, 1_000)
    await node.aclose()


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
async def test_network_timeout_or_broken_connection_is_unknown_outcome(
    error: httpx.TransportError,
) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise error

    node = LndRestBackend(URL, MACAROON, 2_000, transport=httpx.MockTransport(broken))
    with pytest.raises(UnknownOutcome):
        await node.pay("payout_n", DEST, 1_000)
    with pytest.raises(UnknownOutcome):
        await node.status("payout_n", DEST)
    await node.aclose()


async def test_send_stream_past_the_deadline_after_lnd_recorded_it_is_in_flight() -> None:
    fake = FakeLnd(hang_after_first_update=True)
    node = _backend(fake, node_timeout_ms=300)
    assert await node.pay("payout_slow", DEST, 1_000) == PaymentResult(NodeStatus.IN_FLIGHT)
    await node.aclose()


async def test_silent_node_past_the_deadline_is_unknown_outcome() -> None:
    async def silent() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=silent())

    node = LndRestBackend(URL, MACAROON, 200, transport=httpx.MockTransport(handler))
    with pytest.raises(UnknownOutcome):
        await node.pay("payout_q", DEST, 1_000)
    await node.aclose()


@pytest.mark.parametrize(
    "destination",
    [
        Destination.sandbox("player1"),  # a gamertag: only the simulated node pays by name
        Destination.keysend("11" * 32),  # 64 hex: a hash, not a node key
        Destination.keysend("04" + "11" * 32),  # not a compressed key prefix
        Destination.keysend("02" + "zz" * 32),
    ],
    ids=["gamertag", "hash", "uncompressed", "not-hex"],
)
async def test_invalid_destination_fails_without_any_request(destination: Destination) -> None:
    fake = FakeLnd()
    node = _backend(fake)
    result = await node.pay("payout_d", destination, 1_000)
    assert result == PaymentResult(NodeStatus.FAILED, "unknown_destination")
    assert fake.requests == []
    await node.aclose()


async def test_same_payment_id_maps_to_the_same_hash_across_instances() -> None:
    fake = FakeLnd()
    a, b = _backend(fake), _backend(fake)
    assert a.payment_hash("payout_1") == b.payment_hash("payout_1")
    assert a.payment_hash("payout_1") != a.payment_hash("payout_2")
    other_node = _backend(fake, macaroon_hex="02" + "cd" * 30)
    assert other_node.payment_hash("payout_1") != a.payment_hash("payout_1")
    secret = b"s" * 32
    pinned = _backend(fake, preimage_secret=secret)
    pinned_rotated = _backend(fake, preimage_secret=secret, macaroon_hex="02" + "cd" * 30)
    assert pinned.payment_hash("payout_1") == pinned_rotated.payment_hash("payout_1")
    await a.pay("payout_1", DEST, 1_000)
    await b.pay("payout_1", DEST, 1_000)
    sent = {base64.b64decode(json.loads(r.content)["payment_hash"]).hex() for r in fake.sends()}
    assert sent == {a.payment_hash("payout_1")}
    for node in (a, b, other_node, pinned, pinned_rotated):
        await node.aclose()


def test_bad_settings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="hex"):
        LndRestBackend(URL, "not-hex", 1_000)
    with pytest.raises(ValueError, match="empty"):
        LndRestBackend(URL, "", 1_000)
    with pytest.raises(ValueError, match="32"):
        LndRestBackend(URL, MACAROON, 1_000, preimage_secret=b"short")
