"""Payouts per project, hour and outcome (payout_rollups), for the dashboard's 24-hour and
7-day charts: a chart reads a few rows per hour instead of every payout of its window.

Kept by a background sweep (services/sweeps.py), never in a payout's transaction:

- Hours are rolled up once they are over (their end older than LAG_MS, so every payout
  created in them has committed): one GROUP BY over the payouts created in them
  (ix_payouts_created), up to HOURS_PER_RUN_MAX hours per run, from the checkpoint's
  watermark (reconcile_checkpoints, name "rollup") on. The first run starts HISTORY_MS back
  at most (the charts reach no further), so a server started on a long history has every
  chart's hours rolled up after one run; later runs roll each hour up once it is over.
- A rolled-up hour that still had pending payouts (the checkpoint lists them) is rolled up
  again at every run until it has none: its payouts finish, and their outcome moves out of
  "pending". Between two runs such an hour may show a payout pending that has finished.

So every run costs the payouts of the new hour plus those of the hours with open payouts.
Reads (`counts`): the rolled-up hours from here, the hours after the watermark from the
payouts themselves (ix_payouts_list: at most a little over an hour of one project's).
"""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import case, delete, func, insert, select, update

from payrail.bootstrap import Runtime
from payrail.db.tables import payout_rollups, payouts, reconcile_checkpoints
from payrail.domain.payouts import FailureCode, State

HOUR_MS = 3_600_000
LAG_MS = 60_000  # as the reconciliation's watermark: a payout this old has committed
HOURS_PER_RUN_MAX = 24 * 7
# Rolled up by the first run: the longest chart's reach (7 days), which one run covers.
HISTORY_MS = HOURS_PER_RUN_MAX * HOUR_MS
CHECKPOINT = "rollup"
P = payouts.c
R = payout_rollups.c
C = reconcile_checkpoints.c
OPEN_STATES = (State.RESERVED.value, State.IN_FLIGHT.value)


def outcome_expression():  # noqa: ANN201 (a SQL expression)
    """The dashboard's outcome of a payout (services/dashboard/pages.py, outcome_of), in SQL."""
    return case(
        (P.state.in_(OPEN_STATES), "pending"),
        (P.state == State.COMPLETED.value, "success"),
        (
            (P.state == State.FAILED.value) & (P.failure_code == FailureCode.GATEWAY_TIMEOUT.value),
            "timed out",
        ),
        else_="failed",
    )


async def _checkpoint(conn) -> tuple[int | None, list[int]]:  # noqa: ANN001
    """The watermark (hours before it are rolled up) and the hours that had pending payouts."""
    row = (
        await conn.execute(select(C.watermark_ms, C.open_findings).where(C.name == CHECKPOINT))
    ).first()
    if row is None:
        return None, []
    return int(row.watermark_ms), [int(h) for h in json.loads(row.open_findings)]


async def run(rt: Runtime) -> int:
    """One sweep run; the payouts it counted."""
    now = rt.clock.now_ms()
    closed_until = (now - LAG_MS) // HOUR_MS * HOUR_MS  # the end of the last hour that is over
    async with rt.engine.begin() as conn:
        watermark, dirty = await _checkpoint(conn)
        if watermark is None:
            oldest = (await conn.execute(select(func.min(P.created_at)))).scalar()
            first = closed_until - HISTORY_MS
            watermark = (
                max(oldest // HOUR_MS * HOUR_MS, first) if oldest is not None else closed_until
            )
        until = min(closed_until, watermark + HOURS_PER_RUN_MAX * HOUR_MS)
        counted = 0
        pending: set[int] = set()
        for hour in dirty:  # hours with pending payouts last time: their outcomes move
            if hour < watermark:
                counted += await _roll(conn, hour, hour + HOUR_MS, pending)
        if until > watermark:
            counted += await _roll(conn, watermark, until, pending)
        values = {
            "watermark_ms": max(until, watermark),
            "balances": "{}",
            "open_findings": json.dumps(sorted(pending)),
            "verified_at": now,
            "rows_checked": counted,
        }
        changed = await conn.execute(
            update(reconcile_checkpoints).where(C.name == CHECKPOINT).values(**values)
        )
        if changed.rowcount == 0:
            await conn.execute(insert(reconcile_checkpoints).values(name=CHECKPOINT, **values))
    return counted


async def _roll(conn, since_ms: int, until_ms: int, pending: set[int]) -> int:  # noqa: ANN001
    """The rollup rows of the hours in [since_ms, until_ms), from the payouts created then."""
    hour = P.created_at - P.created_at % HOUR_MS
    outcome = outcome_expression()
    rows = (
        await conn.execute(
            select(P.project_id, hour.label("hour"), outcome.label("outcome"), func.count())
            .where(P.created_at >= since_ms, P.created_at < until_ms)
            .group_by(P.project_id, hour, outcome)
        )
    ).all()
    await conn.execute(delete(payout_rollups).where(R.hour_ms >= since_ms, R.hour_ms < until_ms))
    if rows:
        await conn.execute(
            insert(payout_rollups),
            [
                {"project_id": p, "hour_ms": int(h), "outcome": o, "payouts": int(n)}
                for p, h, o, n in rows
            ],
        )
    pending.update(int(h) for _, h, o, n in rows if o == "pending" and n)
    return sum(int(n) for *_, n in rows)


async def counts(
    rt: Runtime, project_id: str, since_ms: int, bucket_ms: int, buckets: int
) -> dict[str, list[int]]:
    """Payouts per outcome per bucket (bucket_ms a multiple of an hour) from since_ms on."""
    out: dict[str, list[int]] = defaultdict(lambda: [0] * buckets)

    def add(hour_ms: int, outcome: str, n: int) -> None:
        index = min(max((hour_ms - since_ms) // bucket_ms, 0), buckets - 1)
        out[outcome][int(index)] += n

    async with rt.engine.connect() as conn:
        watermark = max((await _checkpoint(conn))[0] or since_ms, since_ms)
        for hour_ms, outcome, n in await conn.execute(
            select(R.hour_ms, R.outcome, R.payouts).where(
                R.project_id == project_id, R.hour_ms >= since_ms, R.hour_ms < watermark
            )
        ):
            add(int(hour_ms), str(outcome), int(n))
        hour = P.created_at - P.created_at % HOUR_MS
        outcome = outcome_expression()
        for hour_ms, outcome_, n in await conn.execute(
            select(hour, outcome, func.count())
            .where(P.project_id == project_id, P.created_at >= watermark)
            .group_by(hour, outcome)
        ):
            add(int(hour_ms), str(outcome_), int(n))
    return dict(out)
