"""Claim links (LNURL-withdraw, LUD-03) with no I/O: the request, the secret, the statuses.

A claim link is a payout reserved before it has a destination (docs/claim-links.md): the
payout engine reserves amount + fee when the link is made (every payout rule applies there,
once), and the payout waits, reserved and with no settle job, until a wallet claims the link
with an invoice. What the link's row stores is `StoredStatus`; what the API shows is
`public_status`, from that and the payout's state and approval.

A link may name its player (`playerId`: the rate limit and the daily player cap count by it)
and may be priced by a quote (`quoteId` instead of `amount`: the link pays exactly the
quote's sats; the quote is spent when the link is made). A link above the project's
`approvalAboveSats` is held by the engine like any payout: reserved, but no wallet can claim
it until an approver approves it (`awaiting_approval`); rejected, it is voided (`rejected`).
Approval comes before the claim, never after: a claimed link is paid within its send window,
so a player who claimed is never left waiting on a person with an invoice that expires.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from payrail.domain import errors, invoices
from payrail.domain.payouts import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    INTERNAL_ID_MAX_CHARS,
    QUOTE_ID_MAX_CHARS,
    QUOTED,
    PayoutRequest,
    State,
    optional_str,
    parse_amount,
    parse_description,
    parse_expires_in,
    parse_project_id,
)
from payrail.domain.recipients import parse_gamertag, parse_player_id

DESTINATION_KIND = "claim"  # payouts.destination_kind of a claim link's payout
EXPIRES_IN_DEFAULT_S = 86_400
EXPIRES_IN_MIN_S = 60
EXPIRES_IN_MAX_S = 30 * 86_400
# Once claimed, the payout has this long to be sent (its expiresAt moves to claim + this).
SEND_WINDOW_S = 300
DEFAULT_DESCRIPTION = "payrail reward"
SECRET_BYTES = 32  # 256 bits: the HMAC-SHA256 of the link id under PAYRAIL_CLAIM_LINK_KEY


class StoredStatus(StrEnum):
    """withdrawals.status: what the link itself records."""

    OPEN = "open"
    CLAIMED = "claimed"
    REVOKED = "revoked"


class Status(StrEnum):
    """The public status of a link."""

    OPEN = "open"  # reserved, waiting for a wallet
    AWAITING_APPROVAL = "awaiting_approval"  # reserved, held: no wallet may claim it yet
    REJECTED = "rejected"  # an approver rejected it before a claim; the reservation voided
    CLAIMED = "claimed"  # a wallet's invoice is being paid
    COMPLETED = "completed"  # paid; the project was charged amount + fee
    ERROR = "error"  # claimed, but the payment definitely failed; the reservation was voided
    EXPIRED = "expired"  # never claimed before expiresAt; the reservation was voided
    REVOKED = "revoked"  # revoked before a claim; the reservation was voided


# The stored transitions: a link is claimed or revoked once, from open only.
TRANSITIONS: dict[StoredStatus, frozenset[StoredStatus]] = {
    StoredStatus.OPEN: frozenset({StoredStatus.CLAIMED, StoredStatus.REVOKED}),
    StoredStatus.CLAIMED: frozenset(),
    StoredStatus.REVOKED: frozenset(),
}

STATUS_DESCRIPTIONS: dict[Status, str] = {
    Status.OPEN: "amount + fee are reserved; any wallet with the link may claim it once.",
    Status.AWAITING_APPROVAL: "amount + fee are reserved; the link can be claimed once an "
    "approver approves it.",
    Status.REJECTED: "An approver rejected it before a claim; the reservation was voided.",
    Status.CLAIMED: "A wallet's invoice was accepted; the payout is being sent.",
    Status.COMPLETED: "The wallet was paid; the project was charged amount + fee.",
    Status.ERROR: "Claimed, but the node definitely did not pay; the reservation was voided.",
    Status.EXPIRED: "Not claimed before expiresAt; the reservation was voided.",
    Status.REVOKED: "Revoked (DELETE) before a claim; the reservation was voided.",
}


def is_legal(current: StoredStatus, target: StoredStatus) -> bool:
    return target in TRANSITIONS[current]


# payouts.approval (services/approvals.py)
APPROVAL_REQUIRED, APPROVAL_APPROVED, APPROVAL_REJECTED = "required", "approved", "rejected"


def public_status(
    stored: str,
    payout_state: str,
    expires_at_ms: int,
    now_ms: int,
    approval: str | None = None,
) -> Status:
    """The link's status from its row and its payout's state and approval (one rule, every
    reader)."""
    state = State(payout_state)
    if StoredStatus(stored) == StoredStatus.REVOKED:
        return Status.REVOKED
    if StoredStatus(stored) == StoredStatus.OPEN:
        if state == State.RESERVED and expires_at_ms > now_ms:
            return Status.AWAITING_APPROVAL if approval == APPROVAL_REQUIRED else Status.OPEN
        if state == State.FAILED and approval == APPROVAL_REJECTED:
            return Status.REJECTED
        return Status.EXPIRED  # past expiresAt (voided by the expiry sweep, or about to be)
    if state == State.COMPLETED:
        return Status.COMPLETED
    if state in (State.FAILED, State.EXPIRED):
        return Status.ERROR
    return Status.CLAIMED


def parse_status(value: Any) -> Status:
    return errors.parse_status(Status, value)


# ---------------------------------------------------------------- the secret


def secret(key: str, link_id: str) -> str:
    """The link's secret (k1): HMAC-SHA256 of its id under the claim-link key, hex."""
    return hmac.new(key.encode(), link_id.encode(), hashlib.sha256).hexdigest()


def secret_hash(value: str) -> str:
    """What is stored of a secret: its SHA-256."""
    return hashlib.sha256(value.encode()).hexdigest()


def secret_matches(given: Any, stored_hash: str) -> bool:
    """Constant-time comparison of a presented k1 with the stored hash."""
    if not isinstance(given, str) or len(given) != 2 * SECRET_BYTES:
        return False
    return hmac.compare_digest(secret_hash(given), stored_hash)


# ---------------------------------------------------------------- the request


def parse_request(
    body: Any, header_idempotency_key: str | None, link_id: str
) -> tuple[PayoutRequest, int]:
    """The payout request a link reserves through the engine, and its expiry in seconds.

    `link_id` is the new link's id: without a gamertag, the link is its own recipient for the
    rate limit (there is no one else to count by until a wallet claims it)."""
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    missing = [f for f in ("projectId", "amount") if body.get(f) in (None, "")]
    quote_id = optional_str(body, "quoteId", QUOTE_ID_MAX_CHARS)
    if quote_id is not None:  # the quote's sats stand in for amount (services/quotes.py)
        if body.get("amount") is not None:
            raise errors.ValidationError("Give amount or quoteId, not both.", field="quoteId")
        missing = [f for f in missing if f != "amount"]
    if missing:
        raise errors.ValidationError(
            "Missing required fields: projectId, amount (or quoteId)", missingFields=missing
        )
    amount = QUOTED if quote_id is not None else parse_amount(body["amount"])
    project_id = parse_project_id(body["projectId"])
    description = parse_description(body)
    gamertag = body.get("gamertag")
    gamertag = None if gamertag is None else parse_gamertag(gamertag)
    expires_in = parse_expires_in(
        body, "expiresInS", (EXPIRES_IN_MIN_S, EXPIRES_IN_DEFAULT_S, EXPIRES_IN_MAX_S)
    )
    internal_id = optional_str(body, "internalId", INTERNAL_ID_MAX_CHARS)
    key = header_idempotency_key
    if key is not None and (not key or len(key) > IDEMPOTENCY_KEY_MAX_CHARS):
        raise errors.ValidationError(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} characters.",
            field="Idempotency-Key",
        )
    req = ClaimRequest(
        project_id=project_id,
        # The rate limit and the recipient guard count by the gamertag when one is given.
        gamertag=gamertag if gamertag is not None else f"claim:{link_id}",
        amount_sats=amount,
        description=description,
        internal_id=internal_id,
        callback_url=None,
        expires_in_s=expires_in,
        idempotency_key=key,
        destination_kind=DESTINATION_KIND,
        destination=None,
        player_id=parse_player_id(body.get("playerId")),
        quote_id=quote_id,
        link_gamertag=gamertag,
    )
    return req, expires_in


@dataclass(frozen=True)
class ClaimRequest(PayoutRequest):
    """A link's payout request; its fingerprint leaves out the new link's id (a retry with
    the same Idempotency-Key has another one) and says it is a link."""

    link_gamertag: str | None = None

    def fingerprint(self) -> str:
        body = {
            "kind": DESTINATION_KIND,
            "projectId": self.project_id,
            "gamertag": self.link_gamertag,
            "amount": self.amount_sats,
            "description": self.description,
            "internalId": self.internal_id,
            "expiresInS": self.expires_in_s,
        }
        if self.player_id is not None:  # links without them keep their old fingerprint
            body["playerId"] = self.player_id
        if self.quote_id is not None:
            body["quoteId"] = self.quote_id
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def invoice_refusal(
    invoice: invoices.Invoice, *, amount_sats: int, network: str, now_ms: int
) -> str | None:
    """Why a claim's invoice must not be paid: the payout's own invoice rules (exactly the
    link's amount, the network, not about to expire)."""
    return invoices.refusal(invoice, amount_sats=amount_sats, network=network, now_ms=now_ms)


def withdraw_bounds_msat(amount_sats: int) -> tuple[int, int]:
    """LUD-03 minWithdrawable / maxWithdrawable: exactly the link's amount."""
    return amount_sats * 1000, amount_sats * 1000
