"""The worker loop: claims due jobs under a lease, runs them with bounded concurrency,
and sweeps for payouts that must expire. Runs inside the server, or alone (`payrail worker`).

Jobs run in lanes that never wait on each other: callbacks in their own lane, bounded in
total and per destination host; deposit checks in theirs; every other kind (settlements,
Stripe events) in the other.
The loop does not wait for a batch to finish: it claims again as soon as a lane has room, so
a callback receiver that hangs until the timeout holds up only its own host's slots.

Polling (issue 30: an idle server costs next to nothing). A round that finds work is followed
at once by another; after a round that finds none the loop sleeps PAYRAIL_WORKER_POLL_MS, then
twice that after the next empty round, and so on up to PAYRAIL_WORKER_IDLE_POLL_MAX_MS (2 s),
never past the run_at of the next job scheduled for later (a retry, a deposit check). Work made
in this process wakes it at once (`Runtime.work_ready`: set after a request that wrote, a
spawned task, or one of its own jobs finishes), though never more often than once per
PAYRAIL_WORKER_POLL_MS, so a busy server polls as it always did. What nothing in the process
is told of, a lease that ran out (its holder died) or a job another process enqueued for no
worker of its own, is seen within PAYRAIL_WORKER_IDLE_POLL_MAX_MS of becoming due.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from payrail.bootstrap import Runtime, SimulatedCrash
from payrail.db.tables import worker_heartbeats
from payrail.jobs import queue
from payrail.services import (
    batches,
    callbacks,
    deposits,
    faults,
    order_events,
    payouts,
    sweeps,
    withdrawals,
)
from payrail.support import metrics
from payrail.support.clock import wait_or_stop

log = structlog.get_logger("payrail.worker")

HEARTBEAT_INTERVAL_MS = 5_000  # /ready presumes a worker dead after 30 s without a beat
HEARTBEAT_KEPT_MS = 86_400_000  # rows of workers gone longer than this are deleted
# At a stop, a background sweep still running (a reconciliation, a pruning batch) gets this long
# to finish, then is cancelled: both only read, or delete in transactions of their own.
SWEEP_STOP_MS = 2_000

Handler = Callable[[Runtime, queue.Job], Awaitable[None]]


async def _settle(rt: Runtime, job: queue.Job) -> None:
    await payouts.settle_payout(rt, job.payload["payoutId"], job_leased=True)


async def _deliver(rt: Runtime, job: queue.Job) -> None:
    await callbacks.deliver(rt, job.payload["callbackId"])


# These finish (or reschedule) their job row in their own transaction, with their outcome.
SELF_COMPLETING = frozenset(
    {
        payouts.SETTLE_JOB,
        batches.SETTLE_GROUP_JOB,
        callbacks.CALLBACK_JOB,
        order_events.EVENT_JOB,
        order_events.FULFIL_JOB,
        deposits.WATCH_JOB,
    }
)

HANDLERS: dict[str, Handler] = {
    payouts.SETTLE_JOB: _settle,
    batches.SETTLE_GROUP_JOB: batches.recover_group,
    callbacks.CALLBACK_JOB: _deliver,
    order_events.EVENT_JOB: order_events.process_event,
    order_events.FULFIL_JOB: order_events.fulfil,
    deposits.WATCH_JOB: deposits.watch,
}


async def _run_job(rt: Runtime, job: queue.Job) -> None:
    handler = HANDLERS.get(job.kind)
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        if rt.settings.sandbox:  # this job's task: its payout's project's knobs apply
            faults.ACTING_PROJECT.set(
                await faults.project_of_job(rt.engine, rt.faults, job.payload)
            )
        await handler(rt, job)
        if job.kind not in SELF_COMPLETING:
            async with rt.engine.begin() as conn:
                await queue.complete(conn, job.id, rt.clock.now_ms())
    except (SimulatedCrash, asyncio.CancelledError):
        raise
    except Exception as exc:
        metrics.JOB_FAILURES.labels(kind=job.kind if job.kind in HANDLERS else "unknown").inc()
        rt.note_error(exc)
        now = rt.clock.now_ms()
        async with rt.engine.begin() as conn:
            state = await queue.reschedule(
                conn,
                job.id,
                now + queue.backoff_ms(job.attempts),
                now,
                f"{type(exc).__name__}: {exc}",
            )
        log.warning(
            "job_failed", job_id=job.id, kind=job.kind, state=state, error=type(exc).__name__
        )


HOST_BUSY_DEFER_MS = 1_000  # a callback whose host has no free slot is claimed again later


@dataclass
class Lane:
    """Job kinds sharing one bounded pool of running tasks."""

    name: str
    kinds: frozenset[str] | None  # None: every kind no other lane takes
    capacity: int
    running: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.capacity - len(self.running)


class Dispatcher:
    """Claims jobs per lane, up to each lane's free capacity, and runs them as tasks.

    Callbacks are also bounded per destination host: a claimed callback whose host is at its
    limit is given back (queue.release) and claimed again after HOST_BUSY_DEFER_MS.
    """

    def __init__(self, rt: Runtime) -> None:
        s = rt.settings
        self.rt = rt
        self.callbacks = Lane(
            "callbacks", frozenset({callbacks.CALLBACK_JOB}), s.callback_concurrency_max
        )
        self.others = Lane("others", None, s.worker_concurrency_max)
        # Deposit checks in their own lane: its capacity is the per-run limit of backend
        # checks, and many open deposits never delay a payout's settlement.
        self.deposits = Lane("deposits", frozenset({deposits.WATCH_JOB}), s.deposit_checks_max)
        self.lanes = (self.others, self.callbacks, self.deposits)
        self.host_max = s.callback_host_concurrency_max
        self.hosts: Counter[str] = Counter()

    async def fill(self) -> int:
        """Claim and start what the lanes have room for; returns the jobs started."""
        started = 0
        taken = sorted(k for lane in self.lanes for k in (lane.kinds or ()))
        for lane in self.lanes:
            if lane.free <= 0:
                continue
            s = self.rt.settings
            jobs = await queue.claim(
                self.rt.engine,
                self.rt.worker_id,
                self.rt.clock.now_ms(),
                s.lease_ms,
                min(lane.free, s.worker_batch_max),
                kinds=lane.kinds,
                exclude_kinds=() if lane.kinds is not None else taken,
            )
            for job in jobs:
                started += await self._start(lane, job)
        return started

    async def _start(self, lane: Lane, job: queue.Job) -> int:
        host = str(job.payload.get("host", "")) if lane is self.callbacks else ""
        if host and self.hosts[host] >= self.host_max:
            now = self.rt.clock.now_ms()
            async with self.rt.engine.begin() as conn:
                await queue.release(conn, job.id, now + HOST_BUSY_DEFER_MS, now)
            metrics.CALLBACKS_DEFERRED_HOST_BUSY.inc()
            return 0
        self.hosts[host] += 1
        task = asyncio.create_task(_run_job(self.rt, job))
        lane.running.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            lane.running.discard(finished)
            self.hosts[host] -= 1
            if self.hosts[host] <= 0:
                del self.hosts[host]
            self.rt.work_ready.set()  # its lane has room again, and it may have made work

        task.add_done_callback(done)
        return 1

    @property
    def running(self) -> set[asyncio.Task[None]]:
        return self.callbacks.running | self.others.running | self.deposits.running

    async def drain(self) -> None:
        """Wait for every running job (each is bounded by its own timeout)."""
        while self.running:
            done = await asyncio.gather(*self.running, return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, SimulatedCrash):
                    raise outcome


async def _sweep(rt: Runtime) -> int:
    await payouts.expire_due(rt)  # claim links past expiresAt too: their payouts are reserved
    await withdrawals.sweep(rt)
    return await order_events.sweep_due(rt)


async def run_once(rt: Runtime) -> int:
    """Claim and run one batch of due jobs, then expire payouts and sweep orders that are due.
    Returns jobs run plus orders checked (work that may have made more jobs due)."""
    dispatcher = Dispatcher(rt)
    started = await dispatcher.fill()
    await dispatcher.drain()
    return started + await _sweep(rt)


async def run_until_idle(rt: Runtime, rounds_max: int = 100) -> int:
    """Run batches until nothing is due (tests and `payrail recover`). Returns jobs run."""
    total = 0
    for _ in range(rounds_max):
        ran = await run_once(rt)
        total += ran
        if ran == 0:
            break
    return total


async def heartbeat(rt: Runtime) -> None:
    """Record that this worker is alive (read by /ready and the payrail_workers_alive gauge)."""
    now = rt.clock.now_ms()
    dialect_insert = pg_insert if rt.engine.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(worker_heartbeats).values(worker_id=rt.worker_id, beat_at=now)
    async with rt.engine.begin() as conn:
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["worker_id"], set_={"beat_at": now})
        )
        await conn.execute(
            delete(worker_heartbeats).where(worker_heartbeats.c.beat_at < now - HEARTBEAT_KEPT_MS)
        )


async def _farewell(rt: Runtime) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(
            delete(worker_heartbeats).where(worker_heartbeats.c.worker_id == rt.worker_id)
        )


def idle_wait_ms(
    empty_rounds: int, poll_ms: int, poll_max_ms: int, next_due_in_ms: int | None
) -> int:
    """How long the loop sleeps after `empty_rounds` (>= 1) rounds in a row found nothing:
    poll_ms doubled per empty round, at most max(poll_ms, poll_max_ms), and no later than the
    next job scheduled (next_due_in_ms from now; None: none is)."""
    ceiling = max(poll_ms, poll_max_ms)
    wait = min(ceiling, poll_ms << min(max(empty_rounds - 1, 0), 16))
    if next_due_in_ms is not None:
        wait = min(wait, max(next_due_in_ms, 1))
    return wait


async def _idle_wait(rt: Runtime, stop: asyncio.Event, empty_rounds: int, round_at: float) -> bool:
    """The sleep after an empty round; True if work made in this process cut it short."""
    s = rt.settings
    try:
        now = rt.clock.now_ms()
        next_due = await queue.next_run_at(rt.engine, now)
        next_due_in = None if next_due is None else next_due - now
    except Exception:  # the round's own failure is logged; sleep the backoff alone
        next_due_in = None
    wait_ms = idle_wait_ms(empty_rounds, s.worker_poll_ms, s.worker_idle_poll_max_ms, next_due_in)
    woken = await rt.work_ready.wait(stop, wait_ms / 1000)
    if woken:  # at most one round per worker_poll_ms however often it is woken (a busy server)
        since_s = time.monotonic() - round_at
        if since_s < s.worker_poll_ms / 1000:
            await wait_or_stop(stop, s.worker_poll_ms / 1000 - since_s)
    return woken


async def run_forever(rt: Runtime, stop: asyncio.Event) -> None:
    log.info("worker_started", worker_id=rt.worker_id)
    # The sweeps (reconciliation, pruning) run in every worker loop, each under its lease:
    # once per deployment however many processes run this loop (services/sweeps.py).
    background = asyncio.create_task(sweeps.run_forever(rt, stop))
    last_beat_ms: int | None = None
    dispatcher = Dispatcher(rt)
    empty_rounds = 0
    while not stop.is_set():
        round_at = time.monotonic()
        try:
            now = rt.clock.now_ms()
            if last_beat_ms is None or now - last_beat_ms >= HEARTBEAT_INTERVAL_MS:
                await heartbeat(rt)
                last_beat_ms = now
            ran = await dispatcher.fill() + await _sweep(rt)
        except Exception as exc:  # the database may be briefly unreachable: keep the loop alive
            log.warning("worker_round_failed", error=type(exc).__name__)
            ran = 0
        if ran:
            empty_rounds = 0
            continue
        empty_rounds += 1
        if await _idle_wait(rt, stop, empty_rounds, round_at):
            empty_rounds = 0
    try:
        await dispatcher.drain()  # jobs already started finish (each within its own timeout)
    except Exception as exc:
        log.warning("worker_drain_failed", error=type(exc).__name__)
    try:
        await asyncio.wait_for(background, SWEEP_STOP_MS / 1000)
    except (TimeoutError, asyncio.CancelledError):
        log.warning("sweep_cancelled_at_stop")
    except Exception as exc:
        log.warning("sweeps_failed", error=type(exc).__name__)
    try:
        await _farewell(rt)
    except Exception as exc:
        log.warning("worker_farewell_failed", error=type(exc).__name__)
