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
    QUOTE_ID_MAX_CHARS,
)
from payrail.domain.recipients import LIGHTNING_ADDRESS_MAX_CHARS, PLAYER_ID_MAX_CHARS
from payrail.entrypoints.http.models import EXTRA_SCHEMAS, Body, Model

PLAYER_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control character (domain/payouts.py)

GAMERTAG_PATTERN = r"^[A-Za-z0-9_.\-]+$"
# LUD-16 as payrail parses it (domain/recipients.py): the name a-z0-9-_.+ (any case: it is
# lowercased), a host name, a port only for private networks (PAYRAIL_LNURL_INSECURE_HOSTS).
LIGHTNING_ADDRESS_PATTERN = (
    r"^\s*[A-Za-z0-9\-_.+]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?"
    r"(?::[0-9]{1,5})?\s*$"
)
# The one field naming where a payout goes: exactly one of these (docs/lightning.md).
DESTINATION_SCHEMAS: dict[str, dict[str, Any]] = {
    "gamertag": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": GAMERTAG_PATTERN,
        "description": "A recipient of the project's directory (any case); in the sandbox "
        "the simulated node pays any gamertag by name.",
    },
    "lightningAddress": {
        "type": "string",
        "maxLength": LIGHTNING_ADDRESS_MAX_CHARS,
        "pattern": LIGHTNING_ADDRESS_PATTERN,
        "description": "name@domain, resolved by LUD-16 then LUD-06 before anything is "
        "reserved; in the sandbox, an address on example.com (or a .test domain) is paid by "
        "the simulated node with no lookup.",
    },
    "invoice": {
        "type": "string",
        "minLength": 1,
        "description": "A BOLT11 invoice for exactly `amount` sats, on the server's network.",
    },
}


class PayoutFields(Body):
    """The fields of a payout besides its destination."""

    amount: int | None = Field(
        None, ge=AMOUNT_MIN_SATS, le=AMOUNT_MAX_SATS, description="sats (or quoteId)"
    )
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
    playerId: str | None = Field(
        None,
        min_length=1,
        max_length=PLAYER_ID_MAX_CHARS,
        pattern=PLAYER_ID_PATTERN,
        description="The studio's stable player id: the rate limit and the daily player cap "
        "count per playerId when given, else per recipient.",
    )
    quoteId: str | None = Field(
        None,
        min_length=1,
        max_length=QUOTE_ID_MAX_CHARS,
        description="Instead of amount: pay exactly the sats of this quote (POST /quotes), "
        "once, before its expiresAt.",
    )


def with_one_destination(fields: type[Body], title: str, description: str) -> dict[str, Any]:
    """`fields` plus exactly one destination: a `oneOf` of one variant per destination field,
    each requiring its own field and refusing the others (the API's 400 for two)."""
    schema = fields.model_json_schema()
    schema["title"] = title
    schema["description"] = description
    variants = []
    for name, field_schema in DESTINATION_SCHEMAS.items():
        others = [other for other in DESTINATION_SCHEMAS if other != name]
        variants.append(
            {
                "title": f"{title} to a {name}",
                "type": "object",
                "properties": {name: field_schema},
                "required": [name],
                "not": {"anyOf": [{"required": [other]} for other in others]},
            }
        )
    schema["oneOf"] = variants
    return schema


PayoutRequest = with_one_destination(
    PayoutFields,
    "PayoutRequest",
    "A payout: its amount, project and exactly one destination (gamertag, "
    "lightningAddress or invoice).",
)


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
    playerId: str | None = Field(None, description="The studio's stable player id, if given")


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


class BatchItemFields(Body):
    """One payout of a batch besides its destination: a POST /payouts body without projectId."""

    amount: int | None = Field(
        None, ge=AMOUNT_MIN_SATS, le=AMOUNT_MAX_SATS, description="sats (or quoteId)"
    )
    idempotencyKey: str | None = Field(
        None,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_CHARS,
        description="Default: `<batch key>#<index>`.",
    )
    internalId: str | None = Field(None, max_length=INTERNAL_ID_MAX_CHARS)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    callbackUrl: str | None = Field(None, max_length=CALLBACK_URL_MAX_CHARS)
    expiresIn: int | None = Field(None, ge=EXPIRES_IN_MIN_S, le=EXPIRES_IN_MAX_S)
    playerId: str | None = Field(
        None,
        min_length=1,
        max_length=PLAYER_ID_MAX_CHARS,
        pattern=PLAYER_ID_PATTERN,
        description="The studio's stable player id: the rate limit and the daily player cap "
        "count per playerId when given, else per recipient.",
    )
    quoteId: str | None = Field(
        None,
        min_length=1,
        max_length=QUOTE_ID_MAX_CHARS,
        description="Instead of amount: pay exactly the sats of this quote (POST /quotes), "
        "once, before its expiresAt.",
    )


BatchItem = with_one_destination(
    BatchItemFields,
    "BatchItem",
    "One payout of a batch: amount and exactly one destination; each item is checked as a "
    "single POST /payouts is, and a refused item is answered in its place.",
)


class BatchRequest(Body):
    """Up to 1,000 items, each its own payout (own id, fee, idempotency, rate limit)."""

    projectId: str
    items: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=1000,
        description="BatchItem objects (components/schemas/BatchItem); a malformed item is "
        "answered in its place, the others are paid.",
    )


EXTRA_SCHEMAS["BatchItem"] = BatchItem


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
