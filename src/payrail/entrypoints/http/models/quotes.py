"""The quotes route's contract: a fiat amount priced in sats until it expires."""

from __future__ import annotations

from pydantic import Field

from payrail.domain.fx import CURRENCIES, FIAT_AMOUNT_MAX_CHARS
from payrail.entrypoints.http.models import Body, Model


class QuoteRequest(Body):
    projectId: str
    currency: str = Field(description=f"ISO 4217; supported: {', '.join(CURRENCIES)}")
    amount: str = Field(
        max_length=FIAT_AMOUNT_MAX_CHARS,
        pattern=r"^[0-9]+(\.[0-9]+)?$",
        description='A decimal string with at most the currency\'s minor-unit digits: "0.10"',
    )


class Quote(Model):
    """Pay exactly `sats` with a payout's or batch item's `quoteId`, once, before expiresAt."""

    id: str
    projectId: str
    sats: int = Field(description="amount at rate, to the nearest sat")
    rate: str = Field(description="US dollars per bitcoin, a decimal string")
    currency: str
    amount: str
    source: str = Field(description="fixed (PAYRAIL_FX_FIXED) or http")
    createdAt: str
    expiresAt: str
