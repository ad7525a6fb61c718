"""The payment provider port (docs/architecture.md): payment intents and webhook verification.

Two implementations speak it: `StripeProvider` (the official `stripe` library, in production
against Stripe and in the sandbox against the built-in simulator over HTTP) and, in tests,
anything that wraps it. The saga depends only on this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Intent:
    id: str
    status: str  # Stripe's payment intent status; domain.orders.intent_outcome maps it
    amount: int
    currency: str
    order_id: str | None  # metadata.orderId


class ProviderRefused(Exception):
    """The provider answered with an error: this request charged nothing.

    `intent` is the intent the refusal belongs to, when there is one (a declined card).
    """

    def __init__(
        self, code: str, message: str, *, declined: bool = False, intent: Intent | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.declined = declined
        self.intent = intent


class ProviderUnreachable(Exception):
    """No answer (timeout, connection refused or cut): the outcome is unknown.

    Never a failure: the request may have charged the card. Ask again with the same
    idempotency key, which by Stripe's rules returns what the first request did.
    """


class InvalidEvent(Exception):
    """A webhook whose signature does not verify, is too old, or is not an event."""


class PaymentProvider(Protocol):
    name: str

    async def create_intent(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
    ) -> Intent: ...

    async def retrieve_intent(self, intent_id: str) -> Intent | None: ...

    async def list_intents(self, created_since_s: int, count_max: int) -> list[Intent]: ...

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
