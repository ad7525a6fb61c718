"""The durable job queue: a table in the same database as the state it drives.

A job is enqueued in the transaction that makes it necessary, so it can never be lost or
exist without its cause. Workers claim due jobs under a lease; a lease that runs out means
the holder died, and the job becomes claimable again.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payrail.db import bulk
from payrail.db.tables import insert_row, jobs
from payrail.domain import errors

J = jobs.c

ATTEMPTS_MAX_DEFAULT = 25
BACKOFF_BASE_MS = 250
BACKOFF_CAP_MS = 60_000
LAST_ERROR_MAX_CHARS = 2_000


def backoff_ms(
    attempt: int,
    rng: random.Random | None = None,
    *,
    base_ms: int = BACKOFF_BASE_MS,
    cap_ms: int = BACKOFF_CAP_MS,
) -> int:
    """Exponential backoff with full jitter on the upper half: the one retry schedule."""
    ceiling = min(cap_ms, base_ms * 2 ** max(0, attempt - 1))
    return ceiling // 2 + (rng or random).randint(0, ceiling // 2)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


async def enqueue(
    conn: AsyncConnection,
    kind: str,
    payload: dict[str, Any],
    now_ms: int,
    *,
    job_id: str | None = None,
    run_at_ms: int | None = None,
    max_attempts: int = ATTEMPTS_MAX_DEFAULT,
    leased_by: str | None = None,
    lease_ms: int = 0,
) -> str:
    """Insert a job in the caller's transaction. With leased_by, the caller runs it first."""
    job_id = job_id or str(uuid.uuid4())
    await enqueue_many(
        conn,
        kind,
        [(job_id, payload)],
        now_ms,
        run_at_ms=run_at_ms,
        max_attempts=max_attempts,
        leased_by=leased_by,
        lease_ms=lease_ms,
    )
    return job_id


async def enqueue_many(
    conn: AsyncConnection,
    kind: str,
    jobs_: list[tuple[str, dict[str, Any]]],
    now_ms: int,
    *,
    run_at_ms: int | None = None,
    max_attempts: int = ATTEMPTS_MAX_DEFAULT,
    leased_by: str | None = None,
    lease_ms: int = 0,
    skip_existing: bool = False,
) -> None:
    """Insert jobs (id, payload) of one kind in one statement, in the caller's transaction.
    skip_existing: a job whose id exists already is left as it is (not an error)."""
    rows = [
        job_row(
            job_id,
            kind,
            payload,
            now_ms,
            run_at_ms=run_at_ms,
            max_attempts=max_attempts,
            leased_by=leased_by,
            lease_ms=lease_ms,
        )
        for job_id, payload in jobs_
    ]
    if skip_existing:
        await conn.execute(_INSERT_JOB_IF_NEW[conn.dialect.name], rows)
    else:
        await bulk.insert_rows(conn, jobs, rows)


INSERT_JOB = insert_row(jobs)
_INSERT_JOB_IF_NEW = {
    "postgresql": insert_row(jobs, pg_insert).on_conflict_do_nothing(index_elements=["id"]),
    "sqlite": insert_row(jobs, sqlite_insert).on_conflict_do_nothing(index_elements=["id"]),
}


def job_row(
    job_id: str,
    kind: str,
    payload: dict[str, Any],
    now_ms: int,
    *,
    run_at_ms: int | None = None,
    max_attempts: int = ATTEMPTS_MAX_DEFAULT,
    leased_by: str | None = None,
    lease_ms: int = 0,
) -> dict[str, Any]:
    """A new job's row, as enqueue writes it (and the payout engine's storage)."""
    return dict(
        id=job_id,
        kind=kind,
        payload=json.dumps(payload),
        state="queued",
        run_at=run_at_ms if run_at_ms is not None else now_ms,
        attempts=1 if leased_by else 0,
        max_attempts=max_attempts,
        lease_until=now_ms + lease_ms if leased_by else None,
        locked_by=leased_by,
        last_error=None,
        created_at=now_ms,
        updated_at=now_ms,
    )


async def claim(
    engine: AsyncEngine,
    worker_id: str,
    now_ms: int,
    lease_ms: int,
    limit: int,
    kinds: Collection[str] | None = None,
    exclude_kinds: Collection[str] = (),
) -> list[Job]:
    """Claim up to `limit` due jobs (of `kinds`, if given, and none of `exclude_kinds`).

    PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: BEGIN IMMEDIATE.
    """
    due = (
        select(J.id)
        .where(
            J.state == "queued",
            J.run_at <= now_ms,
            or_(J.lease_until.is_(None), J.lease_until < now_ms),
        )
        .order_by(J.run_at)
        .limit(limit)
    )
    if kinds is not None:
        due = due.where(J.kind.in_(list(kinds)))
    if exclude_kinds:
        due = due.where(J.kind.not_in(list(exclude_kinds)))
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    async with engine.begin() as conn:
        ids = list((await conn.execute(due)).scalars())
        if not ids:
            return []
        rows = await conn.execute(
            update(jobs)
            .where(J.id.in_(ids))
            .values(
                lease_until=now_ms + lease_ms,
                locked_by=worker_id,
                attempts=J.attempts + 1,
                updated_at=now_ms,
            )
            .returning(J.id, J.kind, J.payload, J.attempts, J.max_attempts)
        )
        return [Job(r.id, r.kind, json.loads(r.payload), r.attempts, r.max_attempts) for r in rows]


async def next_run_at(engine: AsyncEngine, now_ms: int) -> int | None:
    """When the next queued job scheduled later than now is due (a retry, a deposit check),
    or None: one read of ix_jobs_due (state, run_at). The idle worker sleeps no longer."""
    async with engine.connect() as conn:
        return await conn.scalar(
            select(func.min(J.run_at)).where(J.state == "queued", J.run_at > now_ms)
        )


_COMPLETE = (
    update(jobs)
    .where(J.id == bindparam("b_id"))
    .values(state="done", lease_until=None, locked_by=None, updated_at=bindparam("b_now"))
)


async def complete(conn: AsyncConnection, job_id: str, now_ms: int) -> None:
    await conn.execute(_COMPLETE, {"b_id": job_id, "b_now": now_ms})


async def release(conn: AsyncConnection, job_id: str, run_at_ms: int, now_ms: int) -> None:
    """Give a claimed job back unrun: queued again at run_at, its claim not counted as an
    attempt (the worker had no room to run it, e.g. its destination host was busy)."""
    await conn.execute(
        update(jobs)
        .where(and_(J.id == job_id, J.state == "queued"))
        .values(
            run_at=run_at_ms,
            lease_until=None,
            locked_by=None,
            attempts=J.attempts - 1,
            updated_at=now_ms,
        )
    )


async def reschedule(
    conn: AsyncConnection, job_id: str, run_at_ms: int, now_ms: int, error: str | None = None
) -> str:
    """Release the lease and run again at run_at; past max_attempts the job goes dead."""
    row = (await conn.execute(select(J.attempts, J.max_attempts).where(J.id == job_id))).first()
    if row is None:
        return "missing"
    state = "dead" if row.attempts >= row.max_attempts else "queued"
    values: dict[str, Any] = {
        "state": state,
        "run_at": run_at_ms,
        "lease_until": None,
        "locked_by": None,
        "updated_at": now_ms,
    }
    if error is not None:
        values["last_error"] = error[:LAST_ERROR_MAX_CHARS]
    await conn.execute(update(jobs).where(and_(J.id == job_id, J.state == "queued")).values(values))
    return state


async def again(conn: AsyncConnection, job_id: str, run_at_ms: int, now_ms: int) -> None:
    """A job that ran and did its work, due again at run_at (a watch that polls until its
    subject is final, e.g. a deposit): queued, its lease released, its attempts back to 0,
    since running it again is its schedule, not a failure."""
    await conn.execute(
        update(jobs)
        .where(J.id == job_id, J.state == "queued")
        .values(
            run_at=run_at_ms,
            attempts=0,
            lease_until=None,
            locked_by=None,
            last_error=None,
            updated_at=now_ms,
        )
    )


async def bury(conn: AsyncConnection, job_id: str, now_ms: int, error: str) -> None:
    """Give up on a job now (its handler decided no retry can help); replay revives it."""
    await conn.execute(
        update(jobs)
        .where(J.id == job_id, J.state == "queued")
        .values(
            state="dead",
            lease_until=None,
            locked_by=None,
            last_error=error[:LAST_ERROR_MAX_CHARS],
            updated_at=now_ms,
        )
    )


async def replay(conn: AsyncConnection, job_id: str, now_ms: int) -> bool:
    """Give a dead job a fresh set of attempts."""
    result = await conn.execute(
        update(jobs)
        .where(J.id == job_id, J.state == "dead")
        .values(state="queued", attempts=0, run_at=now_ms, last_error=None, updated_at=now_ms)
    )
    return result.rowcount == 1


async def replay_dead(engine: AsyncEngine, job_id: str, now_ms: int) -> None:
    """Operators (API, CLI): a dead job runs again once its cause is fixed; a live one is 409."""
    async with engine.begin() as conn:
        if await replay(conn, job_id, now_ms):
            return
        state = await conn.scalar(select(J.state).where(J.id == job_id))
    if state is None:
        raise errors.JobNotFound(f"No job with id {job_id}.")
    raise errors.JobNotDead(f"Job {job_id} is {state}: only a dead job can be replayed.")


JOBS_LIST_MAX = 200


async def list_jobs(
    conn: AsyncConnection, state: str, kind: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Jobs in a state (operators: the dead ones), newest change first."""
    query = select(jobs).where(J.state == state).order_by(J.updated_at.desc(), J.id)
    if kind is not None:
        query = query.where(J.kind == kind)
    rows = await conn.execute(query.limit(min(limit, JOBS_LIST_MAX)))
    return [
        {
            "id": r["id"],
            "kind": r["kind"],
            "state": r["state"],
            "payload": json.loads(r["payload"]),
            "attempts": r["attempts"],
            "maxAttempts": r["max_attempts"],
            "lastError": r["last_error"],
            "runAt": r["run_at"],
            "updatedAt": r["updated_at"],
        }
        for r in rows.mappings()
    ]
