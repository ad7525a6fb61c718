"""The sandbox's resets: the whole sandbox (admin key) or one project (its own key).

A sandbox is shared by a studio's team and its CI, like Stripe's test mode: one project's test
must not touch another's. So a project's reset touches that project alone:

- its failure-injection knobs are removed (the global knobs apply to it again);
- its balance is topped up to its first funding (the seeded project: 100,000 sats), by an
  ordinary funding transfer, when it is lower; never lowered.

It does not erase the project's payouts: the ledger is append-only and its accounts are
shared (fees, the node's outbound account, internal transfers between projects, the
reconciliation checkpoint's sums), so erasing one project's history would change what the
others' reconciliation sees. Erasing everything is the global reset, with the admin key.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from payrail.bootstrap import Runtime
from payrail.db.tables import transfers
from payrail.ledger import accounts as acct
from payrail.services import projects


async def reset_project(rt: Runtime, project_id: str) -> dict[str, Any]:
    """One project back to how it started, as far as it can be alone (module docstring)."""
    await projects.get_project(rt, project_id)  # 404 for an unknown project
    await rt.drain()  # this process's settlements finish first: the balance is then stable
    await rt.faults.clear(project_id)
    first_funding = await _first_funding(rt, project_id)
    before = (await projects.balance(rt, project_id))["balance"]
    added = 0
    if first_funding > before:
        funded = await projects.fund(
            rt, project_id, first_funding - before, f"sandbox-reset:{uuid.uuid4()}"
        )
        added = funded["addedAmount"]
    return {
        "projectId": project_id,
        "scope": "project",
        "failureInjection": "global",  # its own knobs were removed
        "previousBalance": before,
        "addedAmount": added,
        "balance": before + added,
    }


async def _first_funding(rt: Runtime, project_id: str) -> int:
    T = transfers.c
    async with rt.engine.connect() as conn:
        amount = await conn.scalar(
            select(T.amount)
            .where(
                T.debit_account_id == acct.FUNDING,
                T.credit_account_id == acct.project_account(project_id),
                T.kind == "single",
            )
            .order_by(T.created_at, T.id)
            .limit(1)
        )
    return int(amount or 0)
