"""The audit trail of state transitions: payouts and orders, one row per change.

Payout events are written by the database itself: triggers on payouts (migration 0005) copy
every state change, with the cause the UPDATE set in payouts.state_cause, in the statement that
made it. Order events are written by the caller inside the transaction that makes the change.
Either way the history and the row can never disagree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.db.tables import order_events, payout_events
from payrail.support.clock import iso

CAUSE_MAX_CHARS = 120
HISTORY_MAX = 200  # a payout has a handful of transitions; the bound is a guard, not a page


def cause_text(cause: str) -> str:
    """A cause as stored: bounded, like every column."""
    return cause[:CAUSE_MAX_CHARS]


async def record_order_transition(
    conn: AsyncConnection,
    order_id: str,
    from_status: str | None,
    to_status: str,
    cause: str,
    at_ms: int,
) -> None:
    """For the orders saga: call it in the transaction of every guarded order UPDATE."""
    await conn.execute(
        insert(order_events).values(
            order_id=order_id,
            from_status=from_status,
            to_status=to_status,
            cause=cause_text(cause),
            at_ms=at_ms,
        )
    )


async def payout_history(conn: AsyncConnection, payout_id: str) -> list[dict[str, Any]]:
    E = payout_events.c
    rows = await conn.execute(
        select(payout_events)
        .where(E.payout_id == payout_id)
        .order_by(E.at_ms, E.id)
        .limit(HISTORY_MAX)
    )
    return [_event_view(r) for r in rows.mappings()]


async def order_history(conn: AsyncConnection, order_id: str) -> list[dict[str, Any]]:
    """For GET /orders/{id}: its transitions, oldest first."""
    E = order_events.c
    rows = await conn.execute(
        select(order_events)
        .where(E.order_id == order_id)
        .order_by(E.at_ms, E.id)
        .limit(HISTORY_MAX)
    )
    return [_event_view(r) for r in rows.mappings()]


def _event_view(row: Any) -> dict[str, Any]:
    return {
        "from": row["from_status"],
        "to": row["to_status"],
        "cause": row["cause"],
        "at": iso(row["at_ms"]),
    }
