"""Account identities and codes. Per project one liability account; a few system accounts."""

from __future__ import annotations

from enum import IntEnum

CURRENCY_SATS = "sats"


class Code(IntEnum):
    PROJECT = 100  # a studio's funds (liability)
    FEES = 200  # payrail's 2% service fee revenue
    LIGHTNING_OUTBOUND = 300  # clearing: sats that left over Lightning
    FUNDING = 900  # the outside world that funds projects; may go negative


FEES = "sys:fees"
LIGHTNING_OUTBOUND = "sys:lightning_outbound"
FUNDING = "sys:funding"

SYSTEM_ACCOUNTS: dict[str, tuple[Code, bool]] = {
    FEES: (Code.FEES, False),
    LIGHTNING_OUTBOUND: (Code.LIGHTNING_OUTBOUND, False),
    FUNDING: (Code.FUNDING, True),
}


def project_account(project_id: str) -> str:
    return f"project:{project_id}"
