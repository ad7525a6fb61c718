"""The worker loop: claims due jobs under a lease, runs them with bounded concurrency,
and sweeps for payouts that must expire. Runs inside the server, or alone (`payrail worker`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from payrail import metrics
from payrail.jobs import queue
from payrail.services import callbacks, payouts
from payrail.services.runtime import Runtime, SimulatedCrash, wait_or_stop

log = structlog.get_logger("payrail.worker")

Handler = Callable[[Runtime, dict[str, Any]], Awaitable[None]]


async def _settle(rt: Runtime, payload: dict[str, Any]) -> None:
    await payouts.settle_payout(rt, payload["payoutId"], job_leased=True)


async def _deliver(rt: Runtime, payload: dict[str, Any]) -> None:
    await callbacks.deliver(rt, payload["callbackId"])


# These finish (or reschedule) their job row in their own transaction, with their outcome.
SELF_COMPLETING = frozenset({payouts.SETTLE_JOB, callbacks.CALLBACK_JOB})

HANDLERS: dict[str, Handler] = {
    payouts.SETTLE_JOB: _settle,
    callbacks.CALLBACK_JOB: _deliver,
}


async def _run_job(rt: Runtime, job: queue.Job) -> None:
    handler = HANDLERS.get(job.kind)
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        await handler(rt, job.payload)
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


async def run_once(rt: Runtime) -> int:
    """Claim and run one batch of due jobs, then expire what is due. Returns jobs run."""
    s = rt.settings
    jobs = await queue.claim(
        rt.engine, rt.worker_id, rt.clock.now_ms(), s.lease_ms, s.worker_batch_max
    )
    if jobs:
        limit = asyncio.Semaphore(s.worker_concurrency_max)

        async def bounded(job: queue.Job) -> None:
            async with limit:
                await _run_job(rt, job)

        await asyncio.gather(*(bounded(j) for j in jobs))
    await payouts.expire_due(rt)
    return len(jobs)


async def run_until_idle(rt: Runtime, rounds_max: int = 100) -> int:
    """Run batches until nothing is due (tests and `payrail recover`). Returns jobs run."""
    total = 0
    for _ in range(rounds_max):
        ran = await run_once(rt)
        total += ran
        if ran == 0:
            break
    return total


async def run_forever(rt: Runtime, stop: asyncio.Event) -> None:
    log.info("worker_started", worker_id=rt.worker_id)
    while not stop.is_set():
        try:
            ran = await run_once(rt)
        except Exception as exc:  # the database may be briefly unreachable: keep the loop alive
            log.warning("worker_round_failed", error=type(exc).__name__)
            ran = 0
        if ran == 0:
            await wait_or_stop(stop, rt.settings.worker_poll_ms / 1000)
