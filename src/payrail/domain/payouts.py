"""Payout rules with no I/O: request validation (in docs/api.md's order), transitions, statuses."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from payrail.domain import errors, invoices
from payrail.domain.money import AMOUNT_MAX_SATS, AMOUNT_MIN_SATS
from payrail.domain.recipients import (
    parse_gamertag,
    parse_lightning_address,
    parse_player_id,
    rate_key,
)

DESCRIPTION_MAX_CHARS = 144
INTERNAL_ID_MAX_CHARS = 128
QUOTE_ID_MAX_CHARS = 64
QUOTED = 0  # amount_sats of a request priced by a quote, until it is priced
IDEMPOTENCY_KEY_MAX_CHARS = 255
CALLBACK_URL_MAX_CHARS = 2048
EXPIRES_IN_DEFAULT_S = 300
EXPIRES_IN_MIN_S = 10
EXPIRES_IN_MAX_S = 86_400
REQUIRED_FIELDS = ("gamertag", "amount", "projectId")
# Where the money goes: exactly one of these (gamertag through the project's directory).
DESTINATION_FIELDS = ("gamertag", "lightningAddress", "invoice")


class State(StrEnum):
    """Internal payout states. Finer than the public four; mapped by PUBLIC_STATUS."""

    RESERVED = "reserved"  # funds held, never sent to the node (the queue path, before a worker)
    IN_FLIGHT = "in_flight"  # send intent recorded; the node may have it
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


class Status(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"
    ERROR = "error"


PUBLIC_STATUS: dict[State, Status] = {
    State.RESERVED: Status.PENDING,
    State.IN_FLIGHT: Status.PENDING,
    State.COMPLETED: Status.COMPLETED,
    State.FAILED: Status.ERROR,
    State.EXPIRED: Status.EXPIRED,
}

STATUS_DESCRIPTIONS: dict[Status, str] = {
    Status.PENDING: "Funds are reserved and the payment is being sent or awaits the node's answer.",
    Status.COMPLETED: "The Lightning payment succeeded and the balance was charged.",
    Status.EXPIRED: "The payout was never sent before it expired; the reservation was released.",
    Status.ERROR: "The node definitely did not pay; the reservation was released.",
}

# The one transition table. A paid payout never leaves COMPLETED.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.RESERVED: frozenset({State.IN_FLIGHT, State.EXPIRED, State.FAILED}),
    State.IN_FLIGHT: frozenset({State.COMPLETED, State.FAILED}),
    State.COMPLETED: frozenset(),
    State.FAILED: frozenset(),
    State.EXPIRED: frozenset(),
}

FINAL_STATES = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

# Only the saga, once the node has answered NOT_FOUND for the payment id (it never had it) and
# expiresAt has passed, may expire an in-flight payout: never a sandbox or operator call,
# since without that answer an in-flight payout may have been paid.
NODE_CONFIRMED_UNSENT: dict[State, frozenset[State]] = {State.IN_FLIGHT: frozenset({State.EXPIRED})}


def states_for(status: Status) -> list[State]:
    return [s for s, pub in PUBLIC_STATUS.items() if pub == status]


def check_transition(current: State, target: State, *, node_confirmed_unsent: bool = False) -> None:
    allowed = TRANSITIONS[current]
    if node_confirmed_unsent:
        allowed = allowed | NODE_CONFIRMED_UNSENT.get(current, frozenset())
    if target not in allowed:
        raise errors.InvalidStatusTransition(
            f"A payout cannot move from {PUBLIC_STATUS[current]} ({current}) "
            f"to {PUBLIC_STATUS[target]} ({target}).",
            currentStatus=str(PUBLIC_STATUS[current]),
        )


class FailureCode(StrEnum):
    """Why a payout ended in error; decides the HTTP answer (504 vs 502) on create and replay."""

    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    REJECTED_BY_APPROVER = "REJECTED_BY_APPROVER"  # a held payout an approver rejected


@dataclass(frozen=True)
class PayoutRequest:
    project_id: str
    gamertag: str
    amount_sats: int
    description: str | None
    internal_id: str | None
    callback_url: str | None
    expires_in_s: int
    idempotency_key: str | None
    # "gamertag" (through the directory), "lightning_address" or "invoice"; for the last two
    # `destination` holds the address or the BOLT11 text and `gamertag` the rate-limit key.
    destination_kind: str = "gamertag"
    destination: str | None = None
    player_id: str | None = None  # the studio's stable player id (caps, rate limit)
    # A payout priced by a quote: amount_sats is QUOTED until services/quotes.py `price`
    # sets the quote's sats and expiry.
    quote_id: str | None = None
    quote_expires_at_ms: int | None = None

    def fingerprint(self) -> str:
        """Hash of everything but the key, so a reused key with another body is detected."""
        body: dict[str, Any] = {
            "projectId": self.project_id,
            "gamertag": self.gamertag,
            "amount": self.amount_sats,
            "description": self.description,
            "internalId": self.internal_id,
            "callbackUrl": self.callback_url,
            "expiresIn": self.expires_in_s,
        }
        if self.destination_kind != "gamertag":  # gamertag payouts keep their old fingerprint
            body |= {"destinationKind": self.destination_kind, "destination": self.destination}
        if self.player_id is not None:  # so do payouts without a playerId
            body["playerId"] = self.player_id
        if self.quote_id is not None:
            body["quoteId"] = self.quote_id
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optional_str(body: dict[str, Any], field: str, max_chars: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise errors.ValidationError(
            f"{field} must be a non-empty string of at most {max_chars} characters.", field=field
        )
    return value


# The fields every request that reserves a payout shares (payouts, batch items, claim links).


def parse_amount(amount: Any) -> int:
    if not _is_int(amount) or not AMOUNT_MIN_SATS <= amount <= AMOUNT_MAX_SATS:
        raise errors.InvalidAmount(
            f"amount must be an integer number of sats from {AMOUNT_MIN_SATS} "
            f"to {AMOUNT_MAX_SATS:,}.",
            minAmount=AMOUNT_MIN_SATS,
            maxAmount=AMOUNT_MAX_SATS,
        )
    return amount


def parse_description(body: dict[str, Any]) -> str | None:
    description = body.get("description")
    if description is None:
        return None
    if not isinstance(description, str):
        raise errors.ValidationError("description must be a string.", field="description")
    if len(description) > DESCRIPTION_MAX_CHARS:
        raise errors.DescriptionTooLong(
            f"description is {len(description)} characters; "
            f"the maximum is {DESCRIPTION_MAX_CHARS}.",
            maxLength=DESCRIPTION_MAX_CHARS,
        )
    return description


def parse_project_id(project_id: Any) -> str:
    if not isinstance(project_id, str) or len(project_id) > 64:
        raise errors.ValidationError("projectId must be a string.", field="projectId")
    return project_id


def parse_expires_in(
    body: dict[str, Any],
    field: str,
    bounds_s: tuple[int, int, int] = (EXPIRES_IN_MIN_S, EXPIRES_IN_DEFAULT_S, EXPIRES_IN_MAX_S),
) -> int:
    """Seconds until an unsent payout expires: `field` is expiresIn (payouts) or expiresInS
    (claim links, with their own bounds: minimum, default, maximum)."""
    least, default, most = bounds_s
    expires_in = body.get(field, default)
    if expires_in is None:
        expires_in = default
    if not _is_int(expires_in) or not least <= expires_in <= most:
        raise errors.ValidationError(
            f"{field} must be an integer number of seconds from {least} to {most}.",
            field=field,
        )
    return expires_in


def validate_callback_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > CALLBACK_URL_MAX_CHARS:
        raise errors.InvalidCallbackUrl("callbackUrl must be an http(s) URL.")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidCallbackUrl("callbackUrl must be an http(s) URL with a host.")
    return value


def parse_payout_request(
    body: Any,
    header_idempotency_key: str | None = None,
    *,
    callback_url_refusal: str | None = None,
) -> PayoutRequest:
    """Validate a create-payout body in the order of docs/api.md; raise the first error found.

    `callback_url_refusal` is the services layer's verdict on where callbackUrl resolves
    (production only: that needs DNS), reported here as check 4.
    """
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    given = [f for f in DESTINATION_FIELDS if body.get(f) not in (None, "")]
    missing = [f for f in REQUIRED_FIELDS if body.get(f) in (None, "")]
    if given:  # lightningAddress or invoice stands in for gamertag
        missing = [f for f in missing if f != "gamertag"]
    quote_id = optional_str(body, "quoteId", QUOTE_ID_MAX_CHARS)
    if quote_id is not None:  # the quote's sats stand in for amount (services/quotes.py)
        if body.get("amount") is not None:
            raise errors.ValidationError("Give amount or quoteId, not both.", field="quoteId")
        missing = [f for f in missing if f != "amount"]
    if missing:
        raise errors.ValidationError(
            "Missing required fields: gamertag, amount, projectId", missingFields=missing
        )
    amount = QUOTED if quote_id is not None else parse_amount(body["amount"])
    description = parse_description(body)
    callback_url = validate_callback_url(body.get("callbackUrl"))
    if callback_url is not None and callback_url_refusal is not None:
        raise errors.InvalidCallbackUrl(callback_url_refusal)
    if len(given) > 1:
        raise errors.ValidationError(
            "Give exactly one of gamertag, lightningAddress or invoice.", fields=given
        )
    kind, destination, gamertag = _destination(given[0], body[given[0]])
    project_id = parse_project_id(body["projectId"])
    expires_in = parse_expires_in(body, "expiresIn")
    key = body.get("idempotencyKey")
    if key is None:
        key = header_idempotency_key
    if key is not None and (
        not isinstance(key, str) or not key or len(key) > IDEMPOTENCY_KEY_MAX_CHARS
    ):
        raise errors.ValidationError(
            f"idempotencyKey must be a string of 1-{IDEMPOTENCY_KEY_MAX_CHARS} characters.",
            field="idempotencyKey",
        )
    return PayoutRequest(
        project_id=project_id,
        gamertag=gamertag,
        amount_sats=amount,
        description=description,
        internal_id=optional_str(body, "internalId", INTERNAL_ID_MAX_CHARS),
        callback_url=callback_url,
        expires_in_s=expires_in,
        idempotency_key=key,
        destination_kind=kind,
        destination=destination,
        player_id=parse_player_id(body.get("playerId")),
        quote_id=quote_id,
    )


def _destination(field: str, value: Any) -> tuple[str, str | None, str]:
    """(destination_kind, destination, gamertag column) of the one destination field given.

    Without a gamertag the column holds what the rate limit counts by: the address, or the
    invoice's payee node.
    """
    if field == "gamertag":
        return "gamertag", None, parse_gamertag(value)
    if field == "lightningAddress":
        address = parse_lightning_address(value)
        return "lightning_address", address, rate_key(address)
    try:
        invoice = invoices.decode(value)
    except ValueError as exc:
        raise errors.InvalidInvoice(f"invoice: {exc}.", field="invoice") from None
    return "invoice", invoice.bolt11, rate_key(invoice.payee or invoice.payment_hash)


def parse_status(value: Any) -> Status:
    return errors.parse_status(Status, value)
