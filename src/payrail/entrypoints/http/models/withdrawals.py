"""The claim-link routes' contract: create, read, list, revoke (docs/claim-links.md)."""

from __future__ import annotations

from pydantic import Field

from payrail.domain.claims import EXPIRES_IN_DEFAULT_S, EXPIRES_IN_MAX_S, EXPIRES_IN_MIN_S
from payrail.domain.money import AMOUNT_MAX_SATS, AMOUNT_MIN_SATS
from payrail.domain.payouts import DESCRIPTION_MAX_CHARS, INTERNAL_ID_MAX_CHARS
from payrail.domain.payouts import QUOTE_ID_MAX_CHARS as QUOTE_ID_MAX
from payrail.domain.recipients import PLAYER_ID_MAX_CHARS
from payrail.entrypoints.http.models import Body, Model


class WithdrawalRequest(Body):
    projectId: str = Field(max_length=64)
    amount: int | None = Field(
        None,
        ge=AMOUNT_MIN_SATS,
        le=AMOUNT_MAX_SATS,
        description="sats the claiming wallet receives (required unless quoteId is given)",
    )
    quoteId: str | None = Field(
        None,
        max_length=QUOTE_ID_MAX,
        description="Instead of amount: the link pays exactly this quote's sats (POST "
        "/quotes). The quote is spent when the link is made: used → 409 QUOTE_USED, "
        "expired → 409 QUOTE_EXPIRED, nothing reserved.",
    )
    playerId: str | None = Field(
        None,
        max_length=PLAYER_ID_MAX_CHARS,
        description="The studio's stable player id: the rate limit and perPlayerDailyMaxSats "
        "count by it (docs/controls.md).",
    )
    gamertag: str | None = Field(
        None,
        description="Who the link is for: the rate limit and the recipient guard count by it "
        "(without one, the link is its own recipient).",
    )
    description: str | None = Field(
        None, max_length=DESCRIPTION_MAX_CHARS, description="The wallet's defaultDescription."
    )
    expiresInS: int | None = Field(
        None,
        ge=EXPIRES_IN_MIN_S,
        le=EXPIRES_IN_MAX_S,
        description=f"The link's lifetime (default {EXPIRES_IN_DEFAULT_S}).",
    )
    internalId: str | None = Field(None, max_length=INTERNAL_ID_MAX_CHARS)


class Withdrawal(Model):
    id: str
    projectId: str
    status: str = Field(
        description="open → claimed → completed | error; open → expired | revoked; held "
        "above approvalAboveSats: awaiting_approval → open (approved) | rejected | expired | "
        "revoked"
    )
    amount: int = Field(description="sats the wallet receives")
    fee: int = Field(description="sats; reserved with the amount, charged once paid")
    totalCost: int = Field(description="amount + fee: reserved at creation")
    gamertag: str | None
    description: str | None
    internalId: str | None
    playerId: str | None = Field(None, description="The player the link counts for")
    approval: str | None = Field(
        None,
        description="null (no approval step), required (awaiting_approval: no wallet can "
        "claim it yet), approved or rejected",
    )
    decidedBy: str | None = Field(None, description="Who approved or rejected it")
    lnurl: str = Field(description="LUD-01: the bech32 LNURL of the withdraw URL (upper case)")
    url: str = Field(description="The claim page (the QR code of the lnurl)")
    expiresAt: str | None
    createdAt: str | None
    claimedAt: str | None
    revokedAt: str | None
    payoutId: str | None = Field(
        description="The payout paying the claim, once claimed; while held, the payout to "
        "approve or reject (POST /payouts/{id}/approve | reject)"
    )
    paymentHash: str | None = Field(description="The claiming invoice's, once claimed")


class WithdrawalPage(Model):
    withdrawals: list[Withdrawal]
    count: int
    nextCursor: str | None
    hasMore: bool


class SandboxInvoice(Model):
    invoice: str = Field(description="BOLT11, for exactly amount, signed by a throwaway key")
    paymentHash: str
    amount: int
