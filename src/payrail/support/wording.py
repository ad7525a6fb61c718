"""How counts read in output meant for people: `1 payout`, `2 payouts`, `1 discrepancy`."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """The count and the noun, singular for exactly one."""
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        consonant_y = noun.endswith("y") and noun[-2:-1] not in "aeiou"
        many = noun[:-1] + "ies" if consonant_y else noun + "s"
    return f"{count:,} {many}"
