"""The dashboard's deposits list: the same filters, table and pages as payouts and orders."""

from __future__ import annotations

from typing import Any

from payrail.bootstrap import Runtime
from payrail.db.tables import deposits as deposits_table
from payrail.domain import errors
from payrail.domain.deposits import DepositStatus
from payrail.services import deposits
from payrail.services.dashboard import pages

STATUSES = [s.value for s in DepositStatus]


def parse_filter(scope: str | None, q: dict[str, str]) -> pages.ListFilter:
    status = (
        errors.parse_status(DepositStatus, q["status"], "deposit status")
        if q.get("status")
        else None
    )
    states = (status.value,) if status else ()
    return pages.ListFilter(scope, states, None, None, *pages._times(q))


async def page(
    rt: Runtime, f: pages.ListFilter, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    rows, next_cursor = await pages._page(rt, deposits_table, "status", f, cursor)
    return [deposits.view(r) for r in rows], next_cursor
