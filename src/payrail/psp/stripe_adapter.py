"""The production payment provider: the official `stripe` library's StripeClient.

The base URL is configurable, so the same code talks to Stripe in production and to the
built-in simulator (psp/simulator.py) in the sandbox and in tests. Nothing here is faked:
requests are form-encoded HTTP made by the library, errors are the library's.

The library's own network retries are off: a timeout is reported as ProviderUnreachable
(unknown outcome) and the saga decides when to ask again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import stripe

from payrail.psp.provider import Intent, InvalidEvent, ProviderRefused, ProviderUnreachable

WEBHOOK_TOLERANCE_S = 300  # Stripe's default: an older signature is a replay, refused
LIST_PAGE_MAX = 100  # Stripe's largest page

T = TypeVar("T")


class _HTTPXClient(stripe.HTTPXClient):
    """The library's httpx client; tests hand it a transport to the in-process simulator."""

    def __init__(self, timeout_s: float, transport: httpx.AsyncBaseTransport | None) -> None:
        super().__init__(timeout=timeout_s)
        if transport is not None:
            self._client_async = httpx.AsyncClient(transport=transport)

    def _get_request_args_kwargs(self, method, url, headers, post_data):  # type: ignore[no-untyped-def]
        # The library hands httpx its already-encoded form body as `data=`, which httpx
        # deprecates for raw content; `content=` sends the same bytes without the warning.
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        if isinstance(kwargs.get("data"), str | bytes):
            kwargs["content"] = kwargs.pop("data")
        return args, kwargs


def _intent(obj: Any) -> Intent:
    if isinstance(obj, stripe.StripeObject):
        obj = obj.to_dict()
    metadata = obj.get("metadata") or {}
    return Intent(
        id=obj["id"],
        status=obj["status"],
        amount=int(obj["amount"]),
        currency=obj["currency"],
        order_id=metadata.get("orderId"),
    )


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        api_key: str,
        api_base: str,
        webhook_secret: str,
        timeout_ms: int,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout_s = timeout_ms / 1000
        self._http = _HTTPXClient(self._timeout_s, transport)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=self._http,
            max_network_retries=0,
        )
        self._webhook_secret = webhook_secret

    async def aclose(self) -> None:
        await self._http.close_async()

    async def _call(self, call: Awaitable[T]) -> T:
        """One bounded request; no answer in time (or no connection) is an unknown outcome."""
        try:
            return await asyncio.wait_for(call, self._timeout_s)
        except (TimeoutError, stripe.APIConnectionError) as exc:
            raise ProviderUnreachable(f"Stripe did not answer: {type(exc).__name__}") from None
        except stripe.StripeError as exc:
            if exc.http_status == 409:  # the same key is still being processed: unknown yet
                raise ProviderUnreachable(
                    "Stripe: a request with this key is in progress"
                ) from None
            raise _refusal(exc) from None

    async def create_intent(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
    ) -> Intent:
        """Create and confirm a card payment intent. The same key always names one intent."""
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "confirm": True,
            "metadata": {"orderId": order_id},
        }
        created = self._client.v1.payment_intents.create_async(
            params, {"idempotency_key": idempotency_key}
        )
        return _intent(await self._call(created))

    async def retrieve_intent(self, intent_id: str) -> Intent | None:
        try:
            return _intent(
                await self._call(self._client.v1.payment_intents.retrieve_async(intent_id))
            )
        except ProviderRefused as refusal:
            if refusal.code == "resource_missing":
                return None
            raise

    async def list_intents(self, created_since_s: int, count_max: int) -> list[Intent]:
        """Intents created since a time, newest first, at most count_max (reconciliation)."""
        found: list[Intent] = []
        params: dict[str, Any] = {"created": {"gte": created_since_s}, "limit": LIST_PAGE_MAX}
        while len(found) < count_max:
            page = await self._call(self._client.v1.payment_intents.list_async(params))
            found.extend(_intent(obj) for obj in page.data)
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1]["id"]
        return found[:count_max]

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Stripe-Signature checked by the library (HMAC, 300 s tolerance), then the event.

        The library refuses only signatures older than the tolerance; one dated further in
        the future is refused here too, or a signature made ahead of time would stay valid.
        """
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature, self._webhook_secret, WEBHOOK_TOLERANCE_S
            )
            ahead_s = _signed_at_s(signature) - time.time()
            if ahead_s > WEBHOOK_TOLERANCE_S:
                raise InvalidEvent(
                    f"the signature is dated {ahead_s:.0f} s in the future, beyond the "
                    f"{WEBHOOK_TOLERANCE_S} s tolerance"
                )
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidEvent(str(exc).split("\n")[0]) from None
        except RecursionError:
            raise InvalidEvent("the payload is nested too deep to be an event") from None
        if not isinstance(event, dict):
            raise InvalidEvent("the payload is not an event object")
        return event


def _signed_at_s(signature: str | None) -> int:
    """The t= of a Stripe-Signature header the library has already verified."""
    for item in (signature or "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            return int(value)
    raise ValueError("the signature has no timestamp")


def _refusal(exc: stripe.StripeError) -> ProviderRefused:
    error = (exc.json_body or {}).get("error") or {}
    code = exc.code or error.get("type") or "api_error"
    message = error.get("message") or "Stripe refused the request."
    declined = isinstance(exc, stripe.CardError)
    intent = error.get("payment_intent")
    return ProviderRefused(
        code, message, declined=declined, intent=_intent(intent) if intent else None
    )
