"""The payout routes' contract: the create body, the payout object, lists and history."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from payrail.domain.money import AMOUNT_MAX_SATS, AMOUNT_MIN_SATS
from payrail.domain.payouts import (
    CALLBACK_URL_MAX_CHARS,
    DESCRIPTION_MAX_CHARS,
    EXPIRES_IN_MAX_S,
    EXPIRES_IN_MIN_S,
    IDEMPOTENCY_KEY_MAX_CHARS,
    INTERNAL_ID_MAX_CHARS,
)
from payrail.entrypoints.http.models import Body, Model


class PayoutRequest(Body):
    """Exactly one destination: `gamertag` (through the recipient directory), `invoice`
    (BOLT11), or `lightningAddress` (name@domain, resolved by LUD-16/LUD-06; left out of the
    schema's properties so that generated requests never make payrail resolve a domain)."""

    gamertag: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    amount: int = Field(ge=AMOUNT_MIN_SATS, le=AMOUNT_MAX_SATS, description="sats")
    projectId: str
    idempotencyKey: str | None = Field(
        None,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_CHARS,
        description="Or the Idempotency-Key header; the same key and body replay the payout.",
    )
    callbackUrl: str | None = Field(None, max_length=CALLBACK_URL_MAX_CHARS)
    expiresIn: int | None = Field(None, ge=EXPIRES_IN_MIN_S, le=EXPIRES_IN_MAX_S)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    internalId: str | None = Field(None, max_length=INTERNAL_ID_MAX_CHARS)
    invoice: str | None = Field(None, description="BOLT11, for the exact amount; no gamertag")


PAYOUT_EXAMPLE: dict[str, Any] = {
    "gamertag": "player1",
    "amount": 1000,
    "projectId": "project_test_001",
    "internalId": "reward-42",
}


class Payout(Model):
    """A payout; `status` is pending, completed, expired or error."""

    id: str
    internalId: str | None
    gamertag: str
    amount: int = Field(description="sats")
    fee: int = Field(description="sats: ceil(amount × 2%)")
    totalCost: int = Field(description="amount + fee, sats")
    projectId: str
    idempotencyKey: str | None
    description: str | None
    callbackUrl: str | None
    status: str
    expiresIn: int
    expiresAt: str | None
    createdAt: str | None
    updatedAt: str | None
    settledAt: str | None
    failureReason: str | None


class PayoutPage(Model):
    payouts: list[Payout]
    count: int
    nextCursor: str | None
    hasMore: bool


class PayoutEvent(Model):
    """One state change: internal `from`/`to`, public `fromStatus`/`toStatus`, cause, time."""

    toStatus: str
    fromStatus: str | None


class PayoutHistory(Model):
    payoutId: str
    events: list[PayoutEvent]
    count: int


class StatusChange(Body):
    status: str = Field(description="pending, completed, expired or error")


class BatchItem(Body):
    """One payout of a batch: a single POST /payouts body without projectId."""

    gamertag: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    amount: int = Field(ge=AMOUNT_MIN_SATS, le=AMOUNT_MAX_SATS, description="sats")
    idempotencyKey: str | None = Field(None, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_CHARS)
    internalId: str | None = Field(None, max_length=INTERNAL_ID_MAX_CHARS)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    callbackUrl: str | None = Field(None, max_length=CALLBACK_URL_MAX_CHARS)


class BatchRequest(Body):
    """Up to 1,000 items, each its own payout (own id, fee, idempotency, rate limit)."""

    projectId: str
    items: list[dict[str, Any]] = Field(
        min_length=1, max_length=1000, description="BatchItem objects"
    )


class BatchItemAnswer(Model):
    """What a single POST /payouts would have answered for this item, with its status."""

    httpStatus: int
    success: bool
    message: str
    data: dict[str, Any]


class BatchAnswer(Model):
    projectId: str
    items: list[BatchItemAnswer]
    count: int


BATCH_EXAMPLE: dict[str, Any] = {
    "projectId": "project_test_001",
    "items": [{"gamertag": "winner1", "amount": 5000}, {"gamertag": "winner2", "amount": 2500}],
}
