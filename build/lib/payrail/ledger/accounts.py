"""Account identities and codes. Per project one liability account; a few system accounts.

The two system accounts every payout credits (fees, Lightning outbound) are split into
SYSTEM_SHARDS rows each, chosen by a stable hash of the payout id. Each is still an ordinary
ledger account, so double entry and every invariant hold unchanged (sums run over all rows);
what changes is that concurrent payouts of different projects no longer queue on one hot row
lock until COMMIT, which measured as the ceiling on throughput (README, "Benchmark").
"""

from __future__ import annotations

import zlib
from enum import IntEnum

CURRENCY_SATS = "sats"


class Code(IntEnum):
    PROJECT = 100  # a studio's funds (liability)
    FEES = 200  # payrail's 2% service fee revenue
    LIGHTNING_OUTBOUND = 300  # clearing: sats that left over Lightning
    PROVIDER_CLEARING = 400  # card pay-ins: what the provider collected for us, per currency
    MERCHANT_REVENUE = 500  # card pay-ins: a project's revenue, per currency
    FUNDING = 900  # the outside world that funds projects; may go negative


SYSTEM_SHARDS = 16
FEES_PREFIX = "sys:fees"
LIGHTNING_OUTBOUND_PREFIX = "sys:lightning_outbound"
FUNDING = "sys:funding"


def _shard(key: str) -> int:
    return zlib.crc32(key.encode()) % SYSTEM_SHARDS


def fees(payout_id: str) -> str:
    """The fee revenue account (shard) for this payout."""
    return f"{FEES_PREFIX}:{_shard(payout_id):02d}"


def lightning_outbound(payout_id: str) -> str:
    """The Lightning outbound clearing account (shard) for this payout."""
    return f"{LIGHTNING_OUTBOUND_PREFIX}:{_shard(payout_id):02d}"


SYSTEM_ACCOUNTS: dict[str, tuple[Code, bool]] = {
    FUNDING: (Code.FUNDING, True),
    **{f"{FEES_PREFIX}:{n:02d}": (Code.FEES, False) for n in range(SYSTEM_SHARDS)},
    **{
        f"{LIGHTNING_OUTBOUND_PREFIX}:{n:02d}": (Code.LIGHTNING_OUTBOUND, False)
        for n in range(SYSTEM_SHARDS)
    },
}


def project_account(project_id: str) -> str:
    return f"project:{project_id}"


# Card pay-ins. Each currency has its own pair of accounts, so no sum ever mixes currencies.
# The clearing account is the provider's side (external, may go negative, like FUNDING).
PROVIDER_CLEARING_PREFIX = "sys:provider_clearing"
MERCHANT_REVENUE_PREFIX = "revenue"


def provider_clearing(currency: str) -> str:
    return f"{PROVIDER_CLEARING_PREFIX}:{currency}"


def merchant_revenue(project_id: str, currency: str) -> str:
    return f"{MERCHANT_REVENUE_PREFIX}:{project_id}:{currency}"


def order_transfer_id(order_id: str) -> str:
    """The one ledger transfer of a completed order; its primary key refuses a second."""
    return f"order:{order_id}"
