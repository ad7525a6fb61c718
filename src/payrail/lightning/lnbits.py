"""LightningBackend over LNbits' wallet API: pay BOLT11 invoices, track them by payment hash.

LNbits runs on LND, Core Lightning, Phoenixd and others, so this one adapter reaches most
deployments. Endpoints (header `X-Api-Key: <the paying wallet's admin key>`):

- `POST /api/v1/payments {"out": true, "bolt11": …}` pays; the answer is the Payment with its
  `status` (success | pending | failed). A refusal is HTTP 520 `{"detail", "status"}`
  (e.g. "Insufficient balance.", status failed), or a 4xx for a bad request.
- `GET /api/v1/payments/{payment_hash}` is the payment of *this wallet* for that hash:
  `{"paid": true}`, `{"paid": false, "status": "failed"}`, else pending; 404 if it has none.

Exactly once: a payout is paid with the one invoice on its row, so its hash never changes.
`pay` asks LNbits about the hash first and sends only when LNbits has no payment for it;
LNbits itself refuses a second payment of a hash it has pending or paid. A connection error
or timeout is an UnknownOutcome, asked again until LNbits answers, never a failure: LNbits
may have sent the payment before our connection broke.

LNbits marks a payment failed when its funding source's pay call errors, a connection error
included, though the payment may be out. So a "failed" from LNbits is not final here until
LNbits confirms it with its funding source: the same invoice is submitted again, which makes
LNbits ask the node (`check_payment_status`); "Payment is failed node, retrying is not
possible." is the node's definite answer. Anything else is asked again later.
"""

from __future__ import annotations

import asyncio
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

ANSWER_BYTES_MAX = 256 * 1024  # a Payment object is a few KB
LNBITS_REFUSED = 520  # LNbits' HTTP status for PaymentError / InvoiceError
NODE_CONFIRMED_FAILED = "failed node"  # in "Payment is failed node, retrying is not possible."


class LnbitsBackend:
    """Invoices only (LNbits' wallet API has no keysend)."""

    kinds = frozenset({DestinationKind.INVOICE})

    def __init__(
        self,
        url: str,
        admin_key: str,
        node_timeout_ms: int,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url:
            raise ValueError("LNbits URL is empty: set PAYRAIL_LNBITS_URL (e.g. https://host)")
        if not admin_key:
            raise ValueError("the LNbits admin key is empty: set PAYRAIL_LNBITS_ADMIN_KEY")
        assert node_timeout_ms > 0, node_timeout_ms
        self._timeout_s = node_timeout_ms / 1000
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"X-Api-Key": admin_key, "accept": "application/json"},
            timeout=httpx.Timeout(self._timeout_s),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def pay(
        self, payment_id: str, destination: Destination, amount_sats: int
    ) -> PaymentResult:
        """Send the invoice unless LNbits already has a payment for its hash."""
        if destination.kind != DestinationKind.INVOICE:
            return PaymentResult(NodeStatus.FAILED, "unknown_destination")  # nothing sent
        assert destination.payment_hash is not None and destination.invoice is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                existing = await self._track(destination.payment_hash)
                if existing.status == NodeStatus.NOT_FOUND:
                    existing = await self._send(destination.invoice, destination.payment_hash)
                return await self._confirmed(existing, destination)
        except TimeoutError:
            raise UnknownOutcome(
                f"LNbits did not answer within {self._timeout_s}s; ask status() later"
            ) from None

    async def status(self, payment_id: str, destination: Destination) -> PaymentResult:
        if destination.kind != DestinationKind.INVOICE or destination.payment_hash is None:
            return PaymentResult(NodeStatus.NOT_FOUND)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._confirmed(
                    await self._track(destination.payment_hash), destination
                )
        except TimeoutError:
            raise UnknownOutcome(
                f"LNbits did not answer within {self._timeout_s}s; ask again later"
            ) from None

    async def _confirmed(self, result: PaymentResult, destination: Destination) -> PaymentResult:
        """A FAILED answer stands only once LNbits' funding source confirms it (see above)."""
        if result.status != NodeStatus.FAILED or result.failure_reason == FailureReason.REFUSED:
            return result  # refused with no payment made for the hash: nothing can be out
        assert destination.invoice is not None
        status, body = await self._call(
            "POST", "/api/v1/payments", {"out": True, "bolt11": destination.invoice}
        )
        if status == LNBITS_REFUSED and NODE_CONFIRMED_FAILED in str(body.get("detail", "")):
            return result
        if 200 <= status < 300:  # LNbits' node had it pending or paid: LNbits tracks it again
            return _from_status(
                body.get("status"), body.get("payment_hash"), destination.payment_hash
            )
        if status == LNBITS_REFUSED and body.get("status") == "success":
            return PaymentResult(NodeStatus.SUCCEEDED)  # "Failed payment was already paid …"
        raise UnknownOutcome("LNbits reports a failure its funding source has not confirmed")

    async def _send(self, invoice: str, payment_hash: str) -> PaymentResult:
        status, body = await self._call(
            "POST", "/api/v1/payments", {"out": True, "bolt11": invoice}
        )
        if 200 <= status < 300:
            return _from_status(body.get("status"), body.get("payment_hash"), payment_hash)
        if status == LNBITS_REFUSED or 400 <= status < 500:
            # A refusal (no payment made) or "Payment failed: …" (made, marked failed).
            # Refused: ask what LNbits now holds for the hash before calling it definite.
            existing = await self._track(payment_hash)
            if existing.status != NodeStatus.NOT_FOUND:
                return existing
            said = body.get("status")
            if said == "success":  # "Payment already paid." for a hash we do not see: ask later
                raise UnknownOutcome("LNbits says the payment is already paid; ask status() later")
            if said == "pending":
                return PaymentResult(NodeStatus.IN_FLIGHT)
            # No payment exists for the hash and LNbits refused: nothing was sent.
            return PaymentResult(NodeStatus.FAILED, FailureReason.REFUSED.value)
        raise UnknownOutcome(f"LNbits answered HTTP {status} to the payment; ask status() later")

    async def _track(self, payment_hash: str) -> PaymentResult:
        status, body = await self._call("GET", f"/api/v1/payments/{payment_hash}")
        if status == 404:
            return PaymentResult(NodeStatus.NOT_FOUND)
        if status != 200:
            raise UnknownOutcome(f"LNbits answered HTTP {status} about {payment_hash[:12]}…")
        details = body.get("details")
        if isinstance(details, dict) and details.get("payment_hash") not in (None, payment_hash):
            raise UnknownOutcome("LNbits answered about a different payment hash")
        if body.get("paid") is True:
            return PaymentResult(NodeStatus.SUCCEEDED)
        if body.get("status") == "failed":
            return PaymentResult(NodeStatus.FAILED, "failed")
        return PaymentResult(NodeStatus.IN_FLIGHT)

    # ------------------------------------------------------------ receiving (deposits)
    # `POST /api/v1/payments {"out": false, "amount", "memo", "expiry", "webhook"?}` makes an
    # invoice of this wallet; `GET /api/v1/payments/{hash}` with this wallet's key answers
    # `details` only for this wallet's own payment of that hash, so an incoming one is
    # recognised by its details (positive amount), never by `paid` alone: a hash this wallet
    # only paid out (a payout) is no deposit.

    async def create_invoice(
        self, amount_sats: int, memo: str, expiry_s: int, webhook_url: str | None = None
    ) -> Invoice:
        body: dict[str, Any] = {
            "out": False,
            "unit": "sat",
            "amount": amount_sats,
            "memo": memo,
            "expiry": expiry_s,
        }
        if webhook_url:
            body["webhook"] = webhook_url
        try:
            async with asyncio.timeout(self._timeout_s):
                status, answer = await self._call("POST", "/api/v1/payments", body)
        except TimeoutError:
            raise UnknownOutcome(f"LNbits did not answer within {self._timeout_s}s") from None
        if status == LNBITS_REFUSED or 400 <= status < 500:
            raise InvoiceRefused(f"LNbits refused the invoice: {answer.get('detail', status)}")
        if not 200 <= status < 300:
            raise UnknownOutcome(f"LNbits answered HTTP {status} to the invoice")
        bolt11 = answer.get("bolt11") or answer.get("payment_request")
        payment_hash = answer.get("payment_hash")
        if not isinstance(bolt11, str) or not is_payment_hash(payment_hash):
            raise UnknownOutcome("LNbits answered without an invoice and its payment hash")
        return Invoice(bolt11, payment_hash)

    async def invoice_status(self, payment_hash: str) -> InvoiceStatus:
        try:
            async with asyncio.timeout(self._timeout_s):
                status, body = await self._call("GET", f"/api/v1/payments/{payment_hash}")
        except TimeoutError:
            raise UnknownOutcome(f"LNbits did not answer within {self._timeout_s}s") from None
        if status == 404:
            return InvoiceStatus(InvoiceState.NOT_FOUND)
        if status != 200:
            raise UnknownOutcome(f"LNbits answered HTTP {status} about {payment_hash[:12]}…")
        details = body.get("details")
        if not isinstance(details, dict):
            return InvoiceStatus(InvoiceState.NOT_FOUND)  # another wallet's payment
        if details.get("payment_hash") != payment_hash:
            raise UnknownOutcome("LNbits answered about a different payment hash")
        amount = details.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return InvoiceStatus(InvoiceState.NOT_FOUND)  # this wallet's outgoing payment
        if body.get("paid") is True:
            return InvoiceStatus(InvoiceState.PAID, amount)
        if body.get("status") == "failed":
            return InvoiceStatus(InvoiceState.CANCELED)
        return InvoiceStatus(InvoiceState.OPEN)

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request; (HTTP status, JSON object or {}). No answer: UnknownOutcome."""
        try:
            async with self._client.stream(method, path, json=body) as response:
                raw = b""
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > ANSWER_BYTES_MAX:
                        raise UnknownOutcome(f"LNbits sent over {ANSWER_BYTES_MAX} bytes")
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise UnknownOutcome(f"LNbits call timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise UnknownOutcome(f"LNbits connection failed ({type(exc).__name__})") from None
        try:
            parsed = httpx.Response(status, content=raw).json()
        except ValueError:
            parsed = None
        return status, parsed if isinstance(parsed, dict) else {}


def _from_status(status: Any, answered_hash: Any, payment_hash: str) -> PaymentResult:
    if answered_hash not in (None, payment_hash):
        raise UnknownOutcome("LNbits answered about a different payment hash")
    if status == "success":
        return PaymentResult(NodeStatus.SUCCEEDED)
    if status == "failed":
        return PaymentResult(NodeStatus.FAILED, "failed")
    return PaymentResult(NodeStatus.IN_FLIGHT)
