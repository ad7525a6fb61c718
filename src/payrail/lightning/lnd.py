"""LightningBackend over LND's REST API: invoices and keysend payments through routerrpc.

An invoice is paid with SendPaymentV2's `payment_request` and tracked by its payment hash,
which the payout row holds from before the first send. For keysend, one payout id maps to
one payment hash forever. The keysend preimage is derived, not
random: preimage = HMAC-SHA256(secret, payment_id), payment_hash = sha256(preimage). LND's
control tower refuses a second payment for a hash that is in flight or already paid, so a
resend after a crash can never pay twice.

LND does allow a *failed* hash to be paid again ("we allow retrying failed payments" in its
payment store). `pay` therefore asks TrackPaymentV2 first and returns whatever LND already
knows about the hash; it sends only when LND has never seen it. That keeps a FAILED answer
final, as the protocol requires.

Endpoints (JSON, `Grpc-Metadata-macaroon: <hex>` on every call):

- `POST /v2/router/send` (SendPaymentV2): body fields `dest`, `payment_hash` and the
  `dest_custom_records` value are protobuf `bytes`, so base64 in JSON; the keysend record
  (type 5482373484) carries the preimage. The reply is a stream of newline-delimited
  `{"result": Payment}` objects; a gRPC error arrives as `{"error": {"code": .., "message":
  ..}}` (with the HTTP status of that code when nothing was streamed yet).
- `GET /v2/router/track/{payment_hash}` (TrackPaymentV2): the hash as URL-safe base64. The
  first streamed update is the payment's current state; an unknown hash is gRPC NotFound
  ("payment isn't initiated", HTTP 404).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from payrail.lightning.backend import (
    Destination,
    DestinationKind,
    FailureReason,
    Invoice,
    InvoiceRefused,
    InvoiceState,
    InvoiceStatus,
    NodeStatus,
    PaymentResult,
    UnknownOutcome,
    is_payment_hash,
)

KEYSEND_RECORD_TYPE = 5482373484  # the TLV record type that carries a keysend preimage
PUBKEY_PATTERN = re.compile(r"\A0[23][0-9a-fA-F]{64}\Z")  # a compressed secp256k1 node key

# LND's own default; past it LND stops trying new routes and fails with
# FAILURE_REASON_TIMEOUT once no HTLC is left in flight.
PAYMENT_TIMEOUT_S_DEFAULT = 60

# The routing-fee cap sent with every payment, paid by the operator's node (payrail's
# ledger never charges it to the project). 1% covers typical multi-hop routes (a few
# hundred ppm plus a base fee per hop); the 10 sat floor keeps small rewards routable
# through hops with a 1 sat base fee, where 1% of the amount would round to nothing.
FEE_LIMIT_PPM_DEFAULT = 10_000
FEE_LIMIT_MIN_SATS_DEFAULT = 10

STREAM_UPDATES_MAX = 1_000  # a payment stream that sends more than this is not LND
LINE_BYTES_MAX = 4 * 1024 * 1024  # one Payment JSON with many HTLC attempts stays far below

_SECRET_LABEL = b"payrail/lnd/keysend-preimage-secret/v1"
_GRPC_ALREADY_EXISTS = 6
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_FOUND = 5
# SendPaymentV2's refusals for a hash LND already has (older LND sends them as code Unknown).
_ALREADY_KNOWN_MESSAGES = (
    "invoice is already paid",
    "payment is in transition",
    "payment already exists",
)
_NOT_INITIATED_MESSAGE = "payment isn't initiated"
_FAILURE_REASON_PREFIX = "FAILURE_REASON_"


def fee_limit_sats(
    amount_sats: int,
    fee_limit_ppm: int = FEE_LIMIT_PPM_DEFAULT,
    fee_limit_min_sats: int = FEE_LIMIT_MIN_SATS_DEFAULT,
) -> int:
    """The most routing fee one payment may cost: ppm of the amount, at least the floor."""
    return max(fee_limit_min_sats, amount_sats * fee_limit_ppm // 1_000_000)


class _LndError(Exception):
    """A gRPC status LND returned in place of (or at the end of) a stream."""

    def __init__(self, code: int | None, message: str, http_status: int) -> None:
        super().__init__(f"LND error (grpc code {code}, http {http_status}): {message}")
        self.code = code
        self.message = message
        self.http_status = http_status

    @property
    def already_known(self) -> bool:
        lowered = self.message.lower()
        return self.code == _GRPC_ALREADY_EXISTS or any(
            m in lowered for m in _ALREADY_KNOWN_MESSAGES
        )

    @property
    def not_initiated(self) -> bool:
        return self.code == _GRPC_NOT_FOUND or _NOT_INITIATED_MESSAGE in self.message.lower()


class LndRestBackend:
    """Invoice and keysend payouts through one LND node's REST proxy (routerrpc v2 endpoints).

    node_timeout_ms bounds each whole `pay` or `status` call, not only each socket read:
    past it the answer is IN_FLIGHT if LND confirmed it has the payment, else UnknownOutcome.

    The preimage secret defaults to one derived from the macaroon. Rotating the macaroon
    then changes every payout's payment hash, and a payout still unresolved at rotation
    could be paid a second time under its new hash: in production pass an explicit,
    never-rotated `preimage_secret`, or resolve every in-flight payout before rotating.
    """

    kinds = frozenset({DestinationKind.INVOICE, DestinationKind.KEYSEND})

    def __init__(
        self,
        lnd_url: str,
        macaroon_hex: str,
        node_timeout_ms: int,
        *,
        tls_cert_path: str | None = None,
        preimage_secret: bytes | None = None,
        payment_timeout_s: int = PAYMENT_TIMEOUT_S_DEFAULT,
        fee_limit_ppm: int = FEE_LIMIT_PPM_DEFAULT,
        fee_limit_min_sats: int = FEE_LIMIT_MIN_SATS_DEFAULT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not lnd_url:
            raise ValueError("LND REST URL is empty: set PAYRAIL_LND_URL (e.g. https://host:8080)")
        try:
            macaroon = bytes.fromhex(macaroon_hex)
        except ValueError:
            raise ValueError(
                "the LND macaroon must be hex (xxd -p -c 10000 admin.macaroon)"
            ) from None
        if not macaroon:
            raise ValueError("the LND macaroon is empty: set PAYRAIL_LND_MACAROON_HEX")
        if preimage_secret is not None and len(preimage_secret) < 32:
            raise ValueError("preimage_secret must be at least 32 random bytes")
        assert node_timeout_ms > 0, node_timeout_ms
        assert payment_timeout_s > 0, payment_timeout_s
        assert fee_limit_ppm >= 0 and fee_limit_min_sats >= 0, (fee_limit_ppm, fee_limit_min_sats)

        self._secret = preimage_secret or hmac.new(_SECRET_LABEL, macaroon, "sha256").digest()
        self._timeout_s = node_timeout_ms / 1000
        self._payment_timeout_s = payment_timeout_s
        self._fee_limit_ppm = fee_limit_ppm
        self._fee_limit_min_sats = fee_limit_min_sats
        verify: ssl.SSLContext | bool = True
        if tls_cert_path is not None:
            verify = ssl.create_default_context(cafile=tls_cert_path)
        self._client = httpx.AsyncClient(
            base_url=lnd_url.rstrip("/"),
            headers={"Grpc-Metadata-macaroon": macaroon_hex},
            timeout=httpx.Timeout(self._timeout_s),
            verify=verify,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ identity

    def preimage(self, payment_id: str) -> bytes:
        return hmac.new(self._secret, payment_id.encode("utf-8"), "sha256").digest()

    def payment_hash(self, payment_id: str) -> str:
        """The hex payment hash LND knows this payout by (for operators and reconciliation)."""
        return hashlib.sha256(self.preimage(payment_id)).hexdigest()

    # ------------------------------------------------------------------ protocol

    def hash_of(self, payment_id: str, destination: Destination) -> str:
        """The hash LND tracks this payment by: the invoice's, or the derived keysend one."""
        if destination.kind == DestinationKind.INVOICE:
            assert destination.payment_hash is not None
            return destination.payment_hash
        return self.payment_hash(payment_id)

    async def pay(
        self, payment_id: str, destination: Destination, amount_sats: int
    ) -> PaymentResult:
        """Send once per payment_id; a repeated call returns what LND has for its hash."""
        if destination.kind not in self.kinds or not (
            destination.kind == DestinationKind.INVOICE
            or PUBKEY_PATTERN.match(destination.node_pubkey or "")
        ):
            # Nothing is sent, so this is definite (a sandbox gamertag is no LND destination).
            return PaymentResult(NodeStatus.FAILED, "unknown_destination")
        if amount_sats <= 0:
            raise ValueError(f"amount_sats must be positive, got {amount_sats}")
        payment_hash = self.hash_of(payment_id, destination)
        sent = _Progress()
        try:
            async with asyncio.timeout(self._timeout_s):
                existing = await self._track(payment_hash)
                if existing.status != NodeStatus.NOT_FOUND:
                    return existing  # never resend: not even a FAILED hash (LND would retry it)
                body = self._send_body(payment_id, payment_hash, destination, amount_sats)
                return await self._send(payment_hash, body, sent)
        except TimeoutError:
            if sent.last is not None:
                return sent.last  # LND has the payment and has not finished it
            raise UnknownOutcome(
                f"LND did not answer within {self._timeout_s}s; ask status() later"
            ) from None

    async def status(self, payment_id: str, destination: Destination) -> PaymentResult:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._track(self.hash_of(payment_id, destination))
        except TimeoutError:
            raise UnknownOutcome(
                f"LND did not answer within {self._timeout_s}s; ask again later"
            ) from None

    def _send_body(
        self, payment_id: str, payment_hash: str, destination: Destination, amount_sats: int
    ) -> dict[str, Any]:
        common = {
            "timeout_seconds": self._payment_timeout_s,
            "fee_limit_sat": str(
                fee_limit_sats(amount_sats, self._fee_limit_ppm, self._fee_limit_min_sats)
            ),
            "no_inflight_updates": False,  # the first update confirms LND recorded it
        }
        if destination.kind == DestinationKind.INVOICE:
            # The amount is the invoice's own (checked equal to the payout before reserving).
            return {"payment_request": destination.invoice} | common
        assert destination.node_pubkey is not None
        return {
            "dest": _b64(bytes.fromhex(destination.node_pubkey)),
            "amt": str(amount_sats),
            "payment_hash": _b64(bytes.fromhex(payment_hash)),
            "dest_custom_records": {str(KEYSEND_RECORD_TYPE): _b64(self.preimage(payment_id))},
        } | common

    # ------------------------------------------------------------------ calls

    async def _track(self, payment_hash: str) -> PaymentResult:
        """The payment's current state: TrackPaymentV2's first update, then hang up."""
        path_hash = base64.urlsafe_b64encode(bytes.fromhex(payment_hash)).decode("ascii")
        try:
            stream = self._stream("GET", f"/v2/router/track/{path_hash}")
            async with contextlib.aclosing(stream) as updates:
                async for payment in updates:
                    return _result(payment, payment_hash)  # closing hangs up the stream
        except _LndError as exc:
            if exc.not_initiated:
                return PaymentResult(NodeStatus.NOT_FOUND)
            raise UnknownOutcome(f"{exc}; ask status() later") from None
        raise UnknownOutcome("LND closed the track stream without an update; ask again later")

    async def _send(
        self, payment_hash: str, body: dict[str, Any], sent: _Progress
    ) -> PaymentResult:
        try:
            async with contextlib.aclosing(
                self._stream("POST", "/v2/router/send", body)
            ) as updates:
                async for payment in updates:
                    result = _result(payment, payment_hash)
                    if result.status != NodeStatus.IN_FLIGHT:
                        return result
                    sent.last = result
        except _LndError as exc:
            if sent.last is not None:
                return sent.last  # the stream broke after LND recorded the payment
            return await self._after_refusal(payment_hash, exc)
        except UnknownOutcome:
            if sent.last is not None:
                return sent.last
            raise
        if sent.last is not None:
            return sent.last
        raise UnknownOutcome("LND closed the send stream without an update; ask status() later")

    async def _after_refusal(self, payment_hash: str, exc: _LndError) -> PaymentResult:
        """LND refused the send: answer with the payment it already has, if any."""
        existing = await self._track(payment_hash)
        if existing.status != NodeStatus.NOT_FOUND:
            return existing  # "already paid" / "in transition": a concurrent or earlier send
        if exc.code == _GRPC_INVALID_ARGUMENT and not exc.already_known:
            # Rejected before LND created a payment, and the same request is rejected again.
            return PaymentResult(NodeStatus.FAILED, FailureReason.REFUSED.value)
        raise UnknownOutcome(f"{exc}; ask status() later")

    async def _stream(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield each streamed Payment; raise _LndError for a gRPC error, UnknownOutcome else."""
        try:
            async with self._client.stream(method, path, json=body) as response:
                updates = 0
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    if len(line) > LINE_BYTES_MAX:
                        raise UnknownOutcome(f"LND sent a {len(line)} byte line on {path}")
                    message = _parse(line, response.status_code)
                    error = message.get("error")
                    if error is not None:
                        raise _error(error, response.status_code)
                    payment = message.get("result")
                    if not isinstance(payment, dict):
                        raise UnknownOutcome(f"LND sent an update without a result on {path}")
                    updates += 1
                    if updates > STREAM_UPDATES_MAX:
                        raise UnknownOutcome(f"LND sent over {STREAM_UPDATES_MAX} updates")
                    yield payment
                if response.status_code != 200:
                    raise UnknownOutcome(f"LND answered HTTP {response.status_code} on {path}")
        except httpx.TimeoutException as exc:
            raise UnknownOutcome(f"LND call timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise UnknownOutcome(f"LND connection failed ({type(exc).__name__})") from None

    # ------------------------------------------------------------------ receiving (deposits)
    # AddInvoice: `POST /v1/invoices {"value", "memo", "expiry"}` → `{"r_hash" (base64),
    # "payment_request"}`. LookupInvoice: `GET /v1/invoice/{r_hash_str}` (hex) → the Invoice,
    # `state` OPEN | ACCEPTED (a hold invoice's HTLC held, not settled) | SETTLED | CANCELED,
    # `amt_paid_msat`; an unknown hash is gRPC NotFound ("unable to locate invoice").

    async def create_invoice(
        self, amount_sats: int, memo: str, expiry_s: int, webhook_url: str | None = None
    ) -> Invoice:
        """webhook_url is not used: LND pushes over its own subscription stream, not HTTP."""
        body = {"value": str(amount_sats), "memo": memo, "expiry": str(expiry_s)}
        status, answer = await self._call_json("POST", "/v1/invoices", body)
        if status != 200:
            error = _error(answer.get("error", answer), status)
            if 400 <= status < 500:
                raise InvoiceRefused(f"LND refused the invoice: {error.message}")
            raise UnknownOutcome(f"{error}")
        try:
            payment_hash = base64.b64decode(str(answer["r_hash"])).hex()
        except (KeyError, ValueError):
            payment_hash = ""
        request = answer.get("payment_request")
        if not isinstance(request, str) or not is_payment_hash(payment_hash):
            raise UnknownOutcome("LND answered AddInvoice without an invoice and its hash")
        return Invoice(request, payment_hash)

    async def invoice_status(self, payment_hash: str) -> InvoiceStatus:
        status, answer = await self._call_json("GET", f"/v1/invoice/{payment_hash}")
        if status != 200:
            error = _error(answer.get("error", answer), status)
            if error.code == _GRPC_NOT_FOUND or "unable to locate invoice" in error.message:
                return InvoiceStatus(InvoiceState.NOT_FOUND)
            raise UnknownOutcome(f"{error}; ask again later")
        r_hash = answer.get("r_hash")
        if r_hash and base64.b64decode(str(r_hash)).hex() != payment_hash:
            raise UnknownOutcome("LND answered about a different payment hash")
        state = answer.get("state")
        if state == "SETTLED":
            try:
                paid = int(answer.get("amt_paid_msat") or 0)
            except ValueError:
                paid = 0
            return InvoiceStatus(InvoiceState.PAID, paid or None)
        if state == "CANCELED":
            return InvoiceStatus(InvoiceState.CANCELED)
        return InvoiceStatus(InvoiceState.OPEN)  # OPEN, or ACCEPTED: not settled yet

    async def _call_json(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One unary REST call within node_timeout_ms: (HTTP status, JSON object or {})."""
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.request(method, path, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise UnknownOutcome(f"LND did not answer {path} within {self._timeout_s}s") from None
        except httpx.TransportError as exc:
            raise UnknownOutcome(f"LND connection failed ({type(exc).__name__})") from None
        if len(response.content) > LINE_BYTES_MAX:
            raise UnknownOutcome(f"LND sent {len(response.content)} bytes on {path}")
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        return response.status_code, parsed if isinstance(parsed, dict) else {}


class _Progress:
    """The last IN_FLIGHT update a send stream gave, kept across a timeout."""

    last: PaymentResult | None = None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _parse(line: str, http_status: int) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise UnknownOutcome(f"LND sent non-JSON (HTTP {http_status}); ask again later") from None
    if not isinstance(message, dict):
        raise UnknownOutcome(f"LND sent unexpected JSON (HTTP {http_status})")
    return message


def _error(error: Any, http_status: int) -> _LndError:
    """grpc-gateway v2 sends {code, message}; v1 sent {grpc_code, http_code, message}."""
    if not isinstance(error, dict):
        return _LndError(None, str(error), http_status)
    code = error.get("code", error.get("grpc_code"))
    return _LndError(
        code if isinstance(code, int) else None, str(error.get("message")), http_status
    )


def _result(payment: dict[str, Any], payment_hash: str) -> PaymentResult:
    """Map an lnrpc.Payment; FAILED only when LND is done with every HTLC."""
    answered_hash = payment.get("payment_hash")
    if answered_hash and answered_hash != payment_hash:
        raise UnknownOutcome("LND answered about a different payment hash")
    status = payment.get("status")
    if status == "SUCCEEDED":
        return PaymentResult(NodeStatus.SUCCEEDED)
    if status == "FAILED":
        htlcs = payment.get("htlcs") or []
        if any(h.get("status") == "IN_FLIGHT" for h in htlcs if isinstance(h, dict)):
            return PaymentResult(NodeStatus.IN_FLIGHT)  # an HTLC may still settle
        return PaymentResult(NodeStatus.FAILED, _reason(payment.get("failure_reason")))
    # IN_FLIGHT, INITIATED (LND 0.18+), and the deprecated UNKNOWN: LND has it, not final.
    return PaymentResult(NodeStatus.IN_FLIGHT)


def _reason(failure_reason: Any) -> str:
    name = str(failure_reason or "FAILURE_REASON_NONE")
    reason = name.removeprefix(_FAILURE_REASON_PREFIX).lower()
    if reason == "none":
        return "failed"
    return reason  # timeout, no_route, error, incorrect_payment_details, ...
