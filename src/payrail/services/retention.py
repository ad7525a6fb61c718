"""Pruning of the rows that only grow and are never read once old (docs/operations.md,
"Retention"): done jobs, delivered callbacks with their attempt log, and batch idempotency
records past their replay window. Payouts, their events and the ledger's transfers are kept.

Each table is pruned in batches of PRUNE_BATCH_ROWS rows, one short transaction each, on an
index (ix_jobs_done, ix_callbacks_status, ix_payout_batches_created), so a run holds no lock
for long and costs what it deletes. A retention of 0 days keeps that table's rows forever.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import delete, select, tuple_

from payrail.bootstrap import Runtime
from payrail.db.tables import callback_attempts, callbacks, jobs, payout_batches

PRUNE_BATCH_ROWS = 1_000
PRUNE_BATCHES_PER_RUN_MAX = 100  # a run deletes at most 100,000 rows per table; the next goes on
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Pruned:
    jobs: int = 0
    callbacks: int = 0
    batch_keys: int = 0

    @property
    def rows(self) -> int:
        return self.jobs + self.callbacks + self.batch_keys


async def prune(rt: Runtime, batch_rows: int = PRUNE_BATCH_ROWS) -> Pruned:
    """One run: what is past each table's retention, oldest first, in bounded batches."""
    s = rt.settings
    now = rt.clock.now_ms()
    J, C, B = jobs.c, callbacks.c, payout_batches.c
    done_jobs = await _batches(
        rt,
        s.retention_jobs_days,
        now,
        lambda cutoff: (
            select(J.id)
            .where(J.state == "done", J.updated_at < cutoff)
            .order_by(J.updated_at)
            .limit(batch_rows)
        ),
        lambda ids: [delete(jobs).where(J.id.in_(ids))],
        batch_rows=batch_rows,
    )
    delivered = await _batches(
        rt,
        s.retention_callbacks_days,
        now,
        lambda cutoff: (
            select(C.id)
            .where(C.status == "delivered", C.created_at < cutoff)
            .order_by(C.created_at)
            .limit(batch_rows)
        ),
        lambda ids: [
            delete(callback_attempts).where(callback_attempts.c.callback_id.in_(ids)),
            delete(callbacks).where(C.id.in_(ids)),
        ],
        batch_rows=batch_rows,
    )
    batch_keys = await _batches(
        rt,
        s.retention_batch_keys_days,
        now,
        lambda cutoff: (
            select(B.project_id, B.idempotency_key)
            .where(B.created_at < cutoff)
            .order_by(B.created_at)
            .limit(batch_rows)
        ),
        lambda keys: [
            delete(payout_batches).where(tuple_(B.project_id, B.idempotency_key).in_(keys))
        ],
        whole_rows=True,
        batch_rows=batch_rows,
    )
    return Pruned(done_jobs, delivered, batch_keys)


async def _batches(
    rt: Runtime,
    days: int,
    now_ms: int,
    select_batch,  # noqa: ANN001 (cutoff -> SELECT of a batch's keys)
    deletes,  # noqa: ANN001 (keys -> the DELETE statements of that batch)
    *,
    whole_rows: bool = False,
    batch_rows: int = PRUNE_BATCH_ROWS,
) -> int:
    if days <= 0:
        return 0
    cutoff = now_ms - days * DAY_MS
    total = 0
    for _ in range(PRUNE_BATCHES_PER_RUN_MAX):
        async with rt.engine.begin() as conn:
            found = (await conn.execute(select_batch(cutoff))).all()
            keys = [tuple(r) for r in found] if whole_rows else [r[0] for r in found]
            if not keys:
                break
            for statement in deletes(keys):
                await conn.execute(statement)
        total += len(keys)
        if len(keys) < batch_rows:
            break
        await asyncio.sleep(0)
    return total
