"""Exchange rates with no I/O: the operator's fixed rate (PAYRAIL_FX_FIXED), parsed once.

A rate is a Decimal of US dollars per bitcoin, never a float: what is shown is what was set.
Sources other than the fixed one (an HTTP feed with a freshness bound) belong beside this one
and answer the same `Rate`; none is built yet (docs/zbd.md, "BTC/USD").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

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
