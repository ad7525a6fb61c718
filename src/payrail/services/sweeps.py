"""Background sweeps, each run by one process per deployment (docs/operations.md).

A sweep runs in the process that holds its lease (background_leases: one row per sweep,
taken with one guarded UPDATE, so two processes never both take it). The holder renews the
lease while it runs and keeps it between runs, so the same process runs each sweep from one
run to the next (the reconciliation's memory of the node's answers stays useful); if it dies,
the lease runs out and another process takes the sweep over.

Every worker loop (inside `payrail serve` or `payrail worker`) runs `run_forever`; with N
server processes, each sweep still runs once per interval, not N times. Each run's wall time
and the rows it read or deleted are metrics (payrail_sweep_seconds, payrail_sweep_rows): a
sweep's cost is O(what changed since its last run), whatever the history.

- reconcile: the incremental reconciliation (services/reconcile.py), every
  PAYRAIL_RECONCILE_INTERVAL_S.
- retention: pruning (services/retention.py), every PAYRAIL_RETENTION_INTERVAL_S.
- rollup: the dashboard's payouts per project and hour (services/rollups.py), every minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import insert, or_, update

from payrail.bootstrap import Runtime
from payrail.db.tables import background_leases
from payrail.lightning.backend import NodeStatus
from payrail.services import reconcile, retention, rollups
from payrail.support import metrics
from payrail.support.clock import wait_or_stop

log = structlog.get_logger("payrail.sweeps")
L = background_leases.c
LEASE_MS_MIN = 30_000  # a lease outlives its holder's next run by at least this much
ROLLUP_INTERVAL_S = 60.0  # a closed hour reaches the dashboard's charts within a minute
# A process's first sweep waits this long after its start: nothing heavy while it starts
# serving (and a restart under load does not begin with a reconciliation).
START_DELAY_S = 15.0
# Between runs the loop sleeps until the next sweep is due, at least this long (no spinning).
TICK_S = 1.0


async def take_lease(rt: Runtime, name: str, lease_ms: int) -> bool:
    """Take (or renew) the named lease for this process; False if another process holds it."""
    now = rt.clock.now_ms()
    values = {"holder": rt.worker_id, "lease_until": now + lease_ms, "updated_at": now}
    async with rt.engine.begin() as conn:
        taken = await conn.execute(
            update(background_leases)
            .where(L.name == name, or_(L.holder == rt.worker_id, L.lease_until < now))
            .values(**values)
        )
        if taken.rowcount:
            return True
        exists = await conn.execute(
            background_leases.select().where(L.name == name).with_only_columns(L.name)
        )
        if exists.first() is not None:
            return False
    try:
        async with rt.engine.begin() as conn:
            await conn.execute(insert(background_leases).values(name=name, **values))
        return True
    except Exception:  # another process created the row first: it holds the lease
        return False


async def release_lease(rt: Runtime, name: str) -> None:
    """Give the lease back (a clean stop): another process may take the sweep at once."""
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(background_leases)
            .where(L.name == name, L.holder == rt.worker_id)
            .values(lease_until=0, updated_at=rt.clock.now_ms())
        )


@dataclass
class Sweep:
    name: str
    interval_s: float
    run: Callable[[], Awaitable[int]]  # one run; the rows it read or deleted
    due_at: float = 0.0  # time.monotonic() of its next run in this process

    @property
    def lease_ms(self) -> int:
        return max(int(self.interval_s * 2_000), LEASE_MS_MIN)


def sweeps_of(rt: Runtime, start_delay_s: float = 0.0) -> list[Sweep]:
    s = rt.settings
    node_answers: dict[str, NodeStatus] = {}

    async def reconcile_once() -> int:
        report = await reconcile.run_once(rt, node_answers)
        if report is None:
            raise RuntimeError("reconciliation failed")
        return report.payouts_checked + report.orders_checked

    async def prune_once() -> int:
        return (await retention.prune(rt)).rows

    async def roll_once() -> int:
        return await rollups.run(rt)

    found = [Sweep("rollup", ROLLUP_INTERVAL_S, roll_once)]
    if s.reconcile_interval_s:
        found.append(Sweep("reconcile", s.reconcile_interval_s, reconcile_once))
    if s.retention_interval_s:
        found.append(Sweep("retention", s.retention_interval_s, prune_once))
    for sweep in found:
        sweep.due_at = time.monotonic() + start_delay_s
    return found


async def run_due(rt: Runtime, sweeps: list[Sweep], stop: asyncio.Event | None = None) -> list[str]:
    """Run each due sweep whose lease this process holds or takes; the names of those run."""
    ran = []
    for sweep in sweeps:
        if stop is not None and stop.is_set():
            break
        if time.monotonic() < sweep.due_at:
            continue
        sweep.due_at = time.monotonic() + sweep.interval_s
        try:
            if not await take_lease(rt, sweep.name, sweep.lease_ms):
                continue
        except Exception as exc:
            log.warning("sweep_lease_failed", sweep=sweep.name, error=type(exc).__name__)
            continue
        await _run(rt, sweep)
        ran.append(sweep.name)
    return ran


async def _run(rt: Runtime, sweep: Sweep) -> None:
    """One run, its lease renewed meanwhile (a first full audit may outlast it)."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(sweep.lease_ms / 3_000)
            await take_lease(rt, sweep.name, sweep.lease_ms)

    renewing = asyncio.create_task(renew())
    started = time.perf_counter()
    try:
        rows = await sweep.run()
        result = "ok"
    except Exception as exc:
        rows, result = 0, "failed"
        log.warning("sweep_failed", sweep=sweep.name, error=type(exc).__name__)
    finally:
        renewing.cancel()
    seconds = time.perf_counter() - started
    metrics.SWEEP_SECONDS.labels(sweep=sweep.name).observe(seconds)
    metrics.SWEEP_ROWS.labels(sweep=sweep.name).set(rows)
    metrics.SWEEP_RUNS.labels(sweep=sweep.name, result=result).inc()
    log.info("sweep", sweep=sweep.name, result=result, rows=rows, ms=round(seconds * 1000, 1))


def next_wait_s(sweeps: list[Sweep], now: float) -> float:
    """Seconds until the first of the sweeps is due, at least TICK_S: each runs at its interval
    and the loop wakes only for that."""
    return max(TICK_S, min(sweep.due_at for sweep in sweeps) - now)


async def run_forever(rt: Runtime, stop: asyncio.Event) -> None:
    """The worker loop's sweeps: each due one, if this process holds its lease."""
    sweeps = sweeps_of(rt, START_DELAY_S)
    if not sweeps:
        return
    try:
        while not stop.is_set():
            await run_due(rt, sweeps, stop)
            await wait_or_stop(stop, next_wait_s(sweeps, time.monotonic()))
    finally:
        for sweep in sweeps:
            try:
                await release_lease(rt, sweep.name)
            except Exception as exc:
                log.warning("sweep_release_failed", sweep=sweep.name, error=type(exc).__name__)
