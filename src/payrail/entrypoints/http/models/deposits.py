"""The deposit routes' contract: create, read, list, check, LNbits' push, the sandbox payer."""

from __future__ import annotations

from pydantic import Field

from payrail.domain.deposits import (
    DEPOSIT_AMOUNT_MAX_SATS,
    DEPOSIT_AMOUNT_MIN_SATS,
    DESCRIPTION_MAX_CHARS,
    EXPIRES_IN_S_MAX,
    EXPIRES_IN_S_MIN,
)
from payrail.entrypoints.http.models import Body, Model


class DepositRequest(Body):
    amount: int = Field(
        ge=DEPOSIT_AMOUNT_MIN_SATS, le=DEPOSIT_AMOUNT_MAX_SATS, description="sats to receive"
    )
    description: str | None = Field(
        None, max_length=DESCRIPTION_MAX_CHARS, description="The invoice's memo."
    )
    expiresInS: int | None = Field(
        None,
        ge=EXPIRES_IN_S_MIN,
        le=EXPIRES_IN_S_MAX,
        description="The invoice's lifetime (default PAYRAIL_DEPOSIT_EXPIRY_S_DEFAULT, 3600).",
    )
    callbackUrl: str | None = Field(
        None, description="Signed deposit.completed / deposit.expired events go here."
    )


class Deposit(Model):
    id: str
    projectId: str
    amount: int = Field(description="sats; credited to the project once, when paid")
    status: str = Field(description="open → completed | expired (expired → completed: late)")
    invoice: str = Field(description="The BOLT11 invoice to pay.")
    paymentHash: str
    description: str | None
    expiresAt: str | None
    createdAt: str | None
    completedAt: str | None
    expiredAt: str | None
    late: bool = Field(description="Paid after it had expired, and credited.")
    callbackUrl: str | None


class DepositPage(Model):
    deposits: list[Deposit]
    count: int
    nextCursor: str | None
    hasMore: bool


class LnbitsPush(Body):
    """LNbits' invoice webhook: the paid Payment. Only payment_hash is read; the backend is
    then asked, and its answer decides."""

    payment_hash: str = Field(min_length=64, max_length=64)


class PushChecked(Model):
    paymentHash: str
    status: str = Field(description="The deposit's status after LNbits was asked.")
