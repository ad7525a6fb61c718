"""Money rules. Integer sats only; the fee formula lives here and nowhere else."""

from __future__ import annotations

FEE_BPS = 200  # 2% service fee
AMOUNT_MIN_SATS = 1
AMOUNT_MAX_SATS = 100_000


def fee_sats(amount_sats: int, fee_bps: int = FEE_BPS) -> int:
    """ceil(amount × fee_bps / 10000) in integer arithmetic: 1 → 1, 1000 → 20, 100000 → 2000."""
    assert isinstance(amount_sats, int) and amount_sats >= 0
    return (amount_sats * fee_bps + 9_999) // 10_000


def total_cost_sats(amount_sats: int, fee_bps: int = FEE_BPS) -> int:
    return amount_sats + fee_sats(amount_sats, fee_bps)
