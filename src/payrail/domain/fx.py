"""Exchange rates with no I/O: the operator's fixed rate (PAYRAIL_FX_FIXED), parsed once.

A rate is a Decimal of US dollars per bitcoin, never a float: what is shown is what was set.
The sources (the fixed rate, an HTTP JSON feed with a freshness bound) are in
services/quotes.py and answer the same `Rate`; pricing a fiat amount in sats is here
(`parse_fiat`, `sats_for`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from payrail.domain import errors
from payrail.domain.money import AMOUNT_MAX_SATS, AMOUNT_MIN_SATS

FX_FIXED_SANDBOX = "100000"  # the sandbox's US dollars per bitcoin: a round, obviously fake rate
FX_FIXED_MAX_CHARS = 32


@dataclass(frozen=True)
class Rate:
    usd_per_btc: Decimal
    source: str  # "fixed" (PAYRAIL_FX_FIXED)
    at_ms: int  # when the rate was read


def parse_fixed(text: str) -> Decimal | None:
    """PAYRAIL_FX_FIXED: a positive decimal number of US dollars per bitcoin ("" = no rate).

    Raises ValueError with the reason for anything else (a typo must stop the server, not
    quote a wrong price)."""
    text = text.strip()
    if not text:
        return None
    if len(text) > FX_FIXED_MAX_CHARS:
        raise ValueError(f"at most {FX_FIXED_MAX_CHARS} characters")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{text!r} is not a positive number of US dollars per bitcoin")
    return value


def fixed_rate(text: str, now_ms: int) -> Rate | None:
    value = parse_fixed(text)
    return None if value is None else Rate(value, "fixed", now_ms)


def plain(value: Decimal) -> str:
    """A Decimal as plain digits ("16825", "16825.5"), never in exponent form."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


SATS_PER_BTC = 100_000_000
# The currencies a quote may be in, with their minor-unit digits (ISO 4217).
CURRENCIES = {"USD": 2}
FIAT_AMOUNT_MAX_CHARS = 16
_FIAT_RE = re.compile(r"[0-9]+(\.[0-9]+)?")  # plain digits: no sign, exponent or spaces


def parse_fiat(currency: Any, amount: Any) -> tuple[str, Decimal]:
    """A quote's currency and amount: "USD" and a decimal string with at most the
    currency's minor-unit digits ("0.10"); never a JSON number (no float on the way)."""
    if not isinstance(currency, str) or currency.upper() not in CURRENCIES:
        raise errors.InvalidCurrency(
            f"currency must be one of {', '.join(CURRENCIES)} (ISO 4217).",
            field="currency",
            supported=sorted(CURRENCIES),
        )
    code = currency.upper()
    digits = CURRENCIES[code]
    text = amount.strip() if isinstance(amount, str) else None
    value = None
    if text and len(text) <= FIAT_AMOUNT_MAX_CHARS and _FIAT_RE.fullmatch(text):
        try:
            value = Decimal(text)
        except InvalidOperation:
            value = None
    if value is None or not value.is_finite() or value <= 0 or _decimals(value) > digits:
        raise errors.ValidationError(
            f"amount must be a positive decimal string in {code} with at most {digits} "
            'decimals, like "0.10".',
            field="amount",
        )
    return code, value


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def fiat_text(amount: Decimal, code: str) -> str:
    """The amount with the currency's minor-unit digits: "0.10"."""
    return f"{amount:.{CURRENCIES[code]}f}"


def sats_for(amount: Decimal, usd_per_btc: Decimal) -> int:
    """The sats worth `amount` dollars at the rate, to the nearest sat (half up); exact
    decimal arithmetic."""
    assert amount > 0 and usd_per_btc > 0
    with localcontext() as ctx:
        ctx.prec = 60
        sats = (amount * SATS_PER_BTC / usd_per_btc).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(sats)


def check_quote_sats(sats: int, amount: Decimal, code: str) -> None:
    if not AMOUNT_MIN_SATS <= sats <= AMOUNT_MAX_SATS:
        raise errors.InvalidAmount(
            f"{plain(amount)} {code} is {sats} sats at this rate; a payout is "
            f"{AMOUNT_MIN_SATS} to {AMOUNT_MAX_SATS:,} sats.",
            minAmount=AMOUNT_MIN_SATS,
            maxAmount=AMOUNT_MAX_SATS,
            sats=sats,
        )


def parse_rate(value: Any) -> Decimal:
    """A rate from a source's JSON (a Decimal-parsed number or a decimal string)."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise ValueError("not a number")
    try:
        rate = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"{value!r} is not a positive rate")
    return rate
