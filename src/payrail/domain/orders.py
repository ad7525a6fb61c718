"""Order (pay-in) rules with no I/O: request validation, the state machine, intent outcomes.

payment_pending → payment_processing → payment_submitted → payment_complete → fulfilled
                                ↘              ↘
                                 payment_failed  (may be paid again: → payment_processing)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from payrail.domain import errors

ORDER_AMOUNT_MIN = 1
ORDER_AMOUNT_MAX = 99_999_999  # Stripe's limit: eight digits in the minor unit
CUSTOMER_ID_MAX_CHARS = 255
METADATA_KEYS_MAX = 20
METADATA_KEY_MAX_CHARS = 40
METADATA_VALUE_MAX_CHARS = 500
# .fullmatch everywhere: with ^…$ and .match, $ also matches before a final "\n".
PAYMENT_METHOD_RE = re.compile(r"[A-Za-z0-9_]{3,255}")
ID_RE = re.compile(r"[A-Za-z0-9_\-.:]{1,255}")
PAY_KEY_MAX_CHARS = 200  # the provider key adds the order id; Stripe allows 255 in all

# ISO 4217 codes Stripe settles card payments in (lowercase, as Stripe writes them).
CURRENCIES = frozenset(
    (  # noqa: SIM905 (one line of codes reads better than 34)
        "aed aud bgn brl cad chf clp cny czk dkk eur gbp hkd huf idr ils inr isk jpy krw mxn myr "
        "nok nzd php pln ron sek sgd thb try twd usd zar"
    ).split()
)

# Of those, the ones whose minor unit is the unit itself (Stripe's zero-decimal currencies):
# 500 JPY is ¥500, while 1999 USD minor units are $19.99.
ZERO_DECIMAL_CURRENCIES = frozenset({"clp", "jpy", "krw"})


def format_amount(minor_units: int, currency: str) -> str:
    """An amount in the currency's minor unit as people read it: 1999 usd → "19.99 USD"."""
    code = currency.lower()
    if code in ZERO_DECIMAL_CURRENCIES:
        return f"{minor_units:,} {code.upper()}"
    sign = "-" if minor_units < 0 else ""
    whole, cents = divmod(abs(minor_units), 100)
    return f"{sign}{whole:,}.{cents:02d} {code.upper()}"


class OrderStatus(StrEnum):
    PENDING = "payment_pending"  # created, never paid
    PROCESSING = "payment_processing"  # idempotency key stored; the provider is being asked
    SUBMITTED = "payment_submitted"  # the provider has the intent; its outcome is awaited
    COMPLETE = "payment_complete"  # the provider charged it; ledger posted, fulfilment queued
    FAILED = "payment_failed"  # the provider refused it; it may be paid again
    FULFILLED = "fulfilled"


S = OrderStatus

# The one transition table. A charged order never leaves COMPLETE except to FULFILLED.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.PROCESSING}),
    S.PROCESSING: frozenset({S.SUBMITTED, S.FAILED}),
    # The provider's truth decides; a failed intent that later succeeds (a reordered pair of
    # events for one intent) still completes: the customer was charged.
    S.SUBMITTED: frozenset({S.COMPLETE, S.FAILED}),
    S.FAILED: frozenset({S.PROCESSING, S.COMPLETE}),
    S.COMPLETE: frozenset({S.FULFILLED}),
    S.FULFILLED: frozenset(),
}
PAYABLE = frozenset(s for s, nxt in TRANSITIONS.items() if S.PROCESSING in nxt)
CHARGED = frozenset({S.COMPLETE, S.FULFILLED})
# Where an order waits on the provider: the sweeper asks about these after a while.
AWAITING_PROVIDER = frozenset({S.PROCESSING, S.SUBMITTED})
FINAL = frozenset({S.FULFILLED, S.FAILED})  # FAILED is final until someone pays again


def is_legal(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


class IntentOutcome(StrEnum):
    """What a payment intent's status means for its order."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PENDING = "pending"  # still moving at the provider: wait


# Stripe's payment intent statuses. An intent we create with confirm=true that needs the
# customer again (requires_payment_method, requires_action: no 3-D Secure page here) failed.
INTENT_OUTCOMES: dict[str, IntentOutcome] = {
    "succeeded": IntentOutcome.SUCCEEDED,
    "canceled": IntentOutcome.FAILED,
    "requires_payment_method": IntentOutcome.FAILED,
    "requires_action": IntentOutcome.FAILED,
    "requires_confirmation": IntentOutcome.FAILED,
    "processing": IntentOutcome.PENDING,
    "requires_capture": IntentOutcome.PENDING,
}
EVENT_OUTCOMES: dict[str, IntentOutcome] = {
    "payment_intent.succeeded": IntentOutcome.SUCCEEDED,
    "payment_intent.payment_failed": IntentOutcome.FAILED,
    "payment_intent.canceled": IntentOutcome.FAILED,
}


def intent_outcome(status: str) -> IntentOutcome:
    return INTENT_OUTCOMES.get(status, IntentOutcome.PENDING)


@dataclass(frozen=True)
class OrderRequest:
    project_id: str
    amount: int
    currency: str
    customer_id: str | None
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class PayRequest:
    payment_method: str
    idempotency_key: str

    def fingerprint(self) -> str:
        """What a replay with the same key must repeat exactly."""
        return hashlib.sha256(
            json.dumps({"paymentMethod": self.payment_method}).encode()
        ).hexdigest()


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    return body


def parse_amount(value: Any) -> int:
    """An integer in the currency's minor unit: never a float total × 100."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not ORDER_AMOUNT_MIN <= value <= ORDER_AMOUNT_MAX
    ):
        raise errors.InvalidAmount(
            f"amount must be an integer in the currency's minor unit (cents for usd) from "
            f"{ORDER_AMOUNT_MIN} to {ORDER_AMOUNT_MAX:,}.",
            minAmount=ORDER_AMOUNT_MIN,
            maxAmount=ORDER_AMOUNT_MAX,
        )
    return value


def parse_currency(value: Any) -> str:
    """A three-letter ISO 4217 code, either case; stored lowercase as Stripe writes it."""
    code = value.lower() if isinstance(value, str) else None
    if code not in CURRENCIES or not value.isalpha():  # type: ignore[union-attr]
        raise errors.InvalidCurrency(
            "currency must be a three-letter ISO 4217 code Stripe settles, e.g. usd or EUR.",
            supportedCurrencies=sorted(CURRENCIES),
        )
    return code


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > METADATA_KEYS_MAX
        or not all(
            isinstance(k, str)
            and 0 < len(k) <= METADATA_KEY_MAX_CHARS
            and isinstance(v, str)
            and len(v) <= METADATA_VALUE_MAX_CHARS
            for k, v in value.items()
        )
    ):
        raise errors.ValidationError(
            f"metadata must be an object of at most {METADATA_KEYS_MAX} string values, keys of "
            f"1-{METADATA_KEY_MAX_CHARS} characters, values of at most "
            f"{METADATA_VALUE_MAX_CHARS}.",
            field="metadata",
        )
    return dict(value)


def parse_order_request(body: Any, project_id: str) -> OrderRequest:
    body = _object(body)
    missing = [f for f in ("amount", "currency") if body.get(f) in (None, "")]
    if missing:
        raise errors.ValidationError(
            "Missing required fields: amount, currency", missingFields=missing
        )
    amount = parse_amount(body["amount"])
    currency = parse_currency(body["currency"])
    customer_id = body.get("customerId")
    if customer_id is not None and (
        not isinstance(customer_id, str) or not ID_RE.fullmatch(customer_id)
    ):
        raise errors.ValidationError(
            f"customerId must be 1-{CUSTOMER_ID_MAX_CHARS} letters, digits or '_-.:'.",
            field="customerId",
        )
    return OrderRequest(project_id, amount, currency, customer_id, _metadata(body.get("metadata")))


def parse_pay_request(body: Any, idempotency_key: str | None) -> PayRequest:
    body = _object(body)
    method = body.get("paymentMethod")
    if not isinstance(method, str) or not PAYMENT_METHOD_RE.fullmatch(method):
        raise errors.ValidationError(
            "paymentMethod must be a payment method id such as pm_card_visa.",
            field="paymentMethod",
        )
    if not idempotency_key or len(idempotency_key) > PAY_KEY_MAX_CHARS:
        raise errors.ValidationError(
            f"An Idempotency-Key header of 1-{PAY_KEY_MAX_CHARS} characters is required: "
            "a retry with the same key can never charge twice.",
            field="Idempotency-Key",
        )
    return PayRequest(method, idempotency_key)


def parse_status(value: Any) -> OrderStatus:
    return errors.parse_status(OrderStatus, value, "order status")
