"""Outbound callbacks: one signed delivery per payout status change, retried until it lands.

    status change tx:  payout row change → callback row (pending, sequence n) → job  COMMIT
    deliver (job):     tx: attempt k 'started'                                       COMMIT
                       POST, signed, bounded in time; no transaction is open
                       tx: attempt k's outcome → delivered | retry at +delay | dead   COMMIT

At-least-once: a worker that dies after the POST and before the outcome is recorded leaves
its job lease to expire, and the next worker sends the same event (same id) again.
Receivers dedupe by event id and ignore an event whose sequence is below one they applied.

In sandbox, loopback URLs are delivered for real and any other URL is recorded as a
simulated delivery: nothing leaves the machine. In production every attempt re-checks
where the URL resolves (callback_urls) and connects only to the address it checked.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import json
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx
import structlog
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail import __version__, webhooks
from payrail.bootstrap import Runtime
from payrail.db.tables import callback_attempts, callbacks
from payrail.domain import errors
from payrail.jobs import queue
from payrail.services import callback_urls, pagination, webhook_secrets
from payrail.support import metrics
from payrail.support.clock import iso

log = structlog.get_logger("payrail.callbacks")
C = callbacks.c
A = callback_attempts.c

CALLBACK_JOB = "deliver_callback"
EVENT_NAME = "payout.status_changed"

# The retry schedule (the one place): after failed attempt n, wait RETRY_BASE_MS × 2^(n−1),
# capped at RETRY_CAP_MS, less up to RETRY_JITTER_PERCENT — 1 min, 2, 4, … ≈17 h: twelve
# attempts over about a day and a half. The jitter only shortens a wait, so gaps still grow.
ATTEMPTS_MAX = 12
RETRY_BASE_MS = 60_000
RETRY_CAP_MS = 86_400_000
RETRY_JITTER_PERCENT = 20
# The job gets slack beyond ATTEMPTS_MAX for unexpected errors (database briefly away) that
# the worker retries on its own schedule; ATTEMPTS_MAX alone decides when a callback dies.
JOB_ATTEMPTS_MAX = ATTEMPTS_MAX + 100
RESPONSE_BODY_MAX_BYTES = 4_096  # read at most this much of a receiver's answer
RESPONSE_EXCERPT_MAX_CHARS = 200  # kept in the attempt log when the answer is not 2xx
ERROR_MAX_CHARS = 500
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 200
LOG_LIMIT = 100


class Status(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Outcome(StrEnum):
    """One attempt's result, as the attempt log shows it."""

    STARTED = "started"  # no outcome recorded: the worker stopped mid-attempt
    DELIVERED = "delivered"
    SIMULATED = "simulated"  # sandbox, non-loopback URL: recorded, never sent
    GONE = "gone"  # 410: the receiver asked us to stop
    FAILED = "failed"


def retry_delay_ms(attempt: int, rng: random.Random | None = None) -> int:
    """How long after failed attempt `attempt` (1-based) the next one runs."""
    assert attempt >= 1
    ceiling = min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** (attempt - 1))
    return ceiling - (rng or random).randint(0, ceiling * RETRY_JITTER_PERCENT // 100)


def job_id_for(callback_id: str) -> str:
    return f"callback:{callback_id}"


# ---------------------------------------------------------------- enqueue


async def on_status_change(
    conn: AsyncConnection, row: RowMapping, payout_view: dict[str, Any], now: int
) -> None:
    """In the caller's transaction: the event row and its delivery job, or neither."""
    if not row["callback_url"]:
        return
    # The caller holds the payout row (it just changed it), so the count is stable;
    # the unique (payout_id, sequence) index backs that up.
    previous = await conn.scalar(
        select(func.coalesce(func.max(C.sequence), 0)).where(C.payout_id == row["id"])
    )
    event, job = event_rows(row, payout_view, now, int(previous or 0) + 1)
    await conn.execute(insert(callbacks).values(**event))
    await conn.execute(queue.INSERT_JOB, job)


def event_rows(
    row: Any, payout_view: dict[str, Any], now: int, sequence: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The callbacks row of a payout's status change and its delivery job's row (the general
    path writes them in on_status_change, the hot path in its unit)."""
    event_id = str(uuid.uuid4())
    payload = {
        "id": event_id,
        "event": EVENT_NAME,
        "timestamp": iso(now),
        "sequence": sequence,
        "data": payout_view,
    }
    event = dict(
        id=event_id,
        project_id=row["project_id"],
        payout_id=row["id"],
        url=row["callback_url"],
        payload=json.dumps(payload, separators=(",", ":")),
        status=Status.PENDING.value,
        attempts=0,
        sequence=sequence,
        created_at=now,
        updated_at=now,
        next_attempt_at=now,
    )
    job = queue.job_row(
        job_id_for(event_id),
        CALLBACK_JOB,
        job_payload(event_id, row["callback_url"]),
        now,
        max_attempts=JOB_ATTEMPTS_MAX,
    )
    return event, job


# ---------------------------------------------------------------- deliver


def destination_host(url: str) -> str:
    """The host a callback goes to: the worker bounds concurrent deliveries per host."""
    return (urlsplit(url).hostname or "").lower()


def job_payload(callback_id: str, url: str) -> dict[str, str]:
    return {"callbackId": callback_id, "host": destination_host(url)}


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0


async def deliver(rt: Runtime, callback_id: str) -> None:
    """Run one attempt of a callback and schedule what follows. Finishes its own job row."""
    job_id = job_id_for(callback_id)
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        row = (await conn.execute(select(callbacks).where(C.id == callback_id))).mappings().first()
        if row is None or row["status"] != Status.PENDING:
            await queue.complete(conn, job_id, now)
            return
        if row["attempts"] >= ATTEMPTS_MAX:  # the last attempt's worker died mid-attempt
            await _give_up(
                conn, row, now, "all attempts used; the last one has no recorded outcome"
            )
            metrics.CALLBACKS_DEAD.inc()
            return
        attempt = row["attempts"] + 1
        claimed = await conn.execute(
            update(callbacks)
            .where(C.id == callback_id, C.status == Status.PENDING, C.attempts == row["attempts"])
            .values(attempts=attempt, sent_at=now, updated_at=now)
        )
        if claimed.rowcount != 1:
            return  # another worker took this attempt over; it owns the job now
        # The log numbers attempts across replays; `attempts` counts this round's.
        logged = await conn.scalar(
            select(func.coalesce(func.max(A.attempt), 0)).where(A.callback_id == callback_id)
        )
        log_no = int(logged or 0) + 1
        await conn.execute(
            insert(callback_attempts).values(
                callback_id=callback_id, attempt=log_no, outcome=Outcome.STARTED, started_at=now
            )
        )
        signing = await webhook_secrets.active_secrets(conn, row["project_id"], now)
    rt.crashpoint("callback_before_send")
    result = await _attempt(rt, row, signing, log_no)
    rt.crashpoint("callback_after_send")
    await _record(rt, row, attempt, log_no, result)


async def _attempt(rt: Runtime, row: RowMapping, signing: list[str], attempt: int) -> AttemptResult:
    url = row["url"]
    if rt.settings.sandbox and not is_loopback_url(url):
        return AttemptResult(Outcome.SIMULATED)
    if not signing:
        return AttemptResult(
            Outcome.FAILED,
            error="the project has no webhook secret; an admin can create one with "
            "POST /api/v1/projects/{id}/webhook-secret/rotate",
        )
    target: callback_urls.Target | None = None
    if not rt.settings.sandbox:
        try:
            target = await callback_urls.vet(
                url, callback_urls.AllowList.parse(rt.settings.callback_allow_hosts)
            )
        except callback_urls.UnsafeCallbackUrl as refused:
            return AttemptResult(Outcome.FAILED, error=f"refused, not sent: {refused}")
    body = row["payload"].encode()
    headers = {
        "content-type": "application/json",
        "user-agent": f"payrail/{__version__}",
        webhooks.EVENT_ID_HEADER: row["id"],
        webhooks.SIGNATURE_HEADER: webhooks.sign(signing, body, rt.clock.now_ms() // 1000),
        "payrail-delivery-attempt": str(attempt),
    }
    return await _post(url, body, headers, target, rt.settings.callback_timeout_ms)


def _pinned(
    url: str, target: callback_urls.Target | None, headers: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """Point the request at the vetted address, keeping the name for Host and TLS (SNI)."""
    if target is None or not target.addresses:
        return url, {}
    parts = urlsplit(url)
    ip = target.addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    headers["host"] = parts.netloc.rpartition("@")[2]
    netloc = f"{literal}:{target.port}"
    extensions: dict[str, Any] = {}
    if parts.scheme == "https":
        extensions["sni_hostname"] = target.host
    if parts.username is not None:
        credentials = f"{parts.username}:{parts.password or ''}"
        headers["authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), extensions


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every delivery, with httpx's default trust store (certifi).

    Each new client would otherwise build its own, loading the CA bundle: ~36 ms of CPU per
    callback, more than the payout it reports on.
    """
    return ssl.create_default_context(cafile=certifi.where())


async def _post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    target: callback_urls.Target | None,
    timeout_ms: int,
) -> AttemptResult:
    """One bounded POST: no redirects, no proxies from the environment, a capped body read."""
    url, extensions = _pinned(url, target, headers)
    timeout_s = timeout_ms / 1000
    started = time.monotonic()
    status_code: int | None = None
    excerpt = b""
    try:
        async with asyncio.timeout(timeout_s):
            async with (
                httpx.AsyncClient(
                    timeout=timeout_s, follow_redirects=False, trust_env=False, verify=_tls()
                ) as c,
                c.stream("POST", url, content=body, headers=headers, extensions=extensions) as r,
            ):
                status_code = r.status_code
                async for chunk in r.aiter_raw():
                    excerpt += chunk[: RESPONSE_BODY_MAX_BYTES - len(excerpt)]
                    if len(excerpt) >= RESPONSE_BODY_MAX_BYTES:
                        break
    except (TimeoutError, httpx.TimeoutException):
        return AttemptResult(
            Outcome.FAILED,
            status_code,
            f"no answer within {timeout_ms} ms",
            _elapsed_ms(started),
        )
    except httpx.HTTPError as exc:
        return AttemptResult(
            Outcome.FAILED,
            None,
            f"{type(exc).__name__}: could not reach the receiver",
            _elapsed_ms(started),
        )
    duration_ms = _elapsed_ms(started)
    assert status_code is not None
    if 200 <= status_code < 300:
        return AttemptResult(Outcome.DELIVERED, status_code, None, duration_ms)
    text = excerpt.decode(errors="replace")[:RESPONSE_EXCERPT_MAX_CHARS]
    if status_code == 410:
        return AttemptResult(
            Outcome.GONE, status_code, "receiver answered 410 Gone: not retried", duration_ms
        )
    what = "redirects are not followed" if 300 <= status_code < 400 else "not a 2xx"
    return AttemptResult(
        Outcome.FAILED,
        status_code,
        f"receiver answered {status_code} ({what}): {text}",
        duration_ms,
    )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _record(
    rt: Runtime, row: RowMapping, attempt: int, log_no: int, result: AttemptResult
) -> None:
    """Attempt outcome, callback status and the job's next step in one transaction."""
    now = rt.clock.now_ms()
    error = result.error[:ERROR_MAX_CHARS] if result.error else None
    job_id = job_id_for(row["id"])
    outcome_of_callback: str | None = None
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(callback_attempts)
            .where(A.callback_id == row["id"], A.attempt == log_no)
            .values(
                outcome=result.outcome,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                error=error,
            )
        )
        mine = and_(C.id == row["id"], C.status == Status.PENDING, C.attempts == attempt)
        values: dict[str, Any] = {
            "last_status_code": result.status_code,
            "last_error": error,
            "updated_at": now,
        }
        if result.outcome in (Outcome.DELIVERED, Outcome.SIMULATED):
            values |= {"status": Status.DELIVERED, "delivered_at": now, "next_attempt_at": None}
            if (await conn.execute(update(callbacks).where(mine).values(values))).rowcount:
                await queue.complete(conn, job_id, now)
                outcome_of_callback = Status.DELIVERED
        elif result.outcome == Outcome.GONE or attempt >= ATTEMPTS_MAX:
            values |= {"status": Status.DEAD, "next_attempt_at": None}
            if (await conn.execute(update(callbacks).where(mine).values(values))).rowcount:
                await queue.bury(conn, job_id, now, error or "dead")
                outcome_of_callback = Status.DEAD
        else:
            run_at = now + retry_delay_ms(attempt)
            values["next_attempt_at"] = run_at
            if (await conn.execute(update(callbacks).where(mine).values(values))).rowcount:
                await queue.reschedule(conn, job_id, run_at, now, error)
    metrics.CALLBACK_DELIVERIES.labels(outcome=result.outcome.value).inc()
    if outcome_of_callback == Status.DELIVERED:
        metrics.CALLBACK_LAG_SECONDS.observe(max(0, now - row["created_at"]) / 1000)
    elif outcome_of_callback == Status.DEAD:
        metrics.CALLBACKS_DEAD.inc()
    log.info(
        "callback_attempt",
        callback_id=row["id"],
        payout_id=row["payout_id"],
        attempt=attempt,
        outcome=result.outcome.value,
        status_code=result.status_code,
    )


async def _give_up(conn: AsyncConnection, row: RowMapping, now: int, error: str) -> None:
    await conn.execute(
        update(callbacks)
        .where(C.id == row["id"], C.status == Status.PENDING)
        .values(status=Status.DEAD, last_error=error, next_attempt_at=None, updated_at=now)
    )
    await queue.bury(conn, job_id_for(row["id"]), now, error)


# ---------------------------------------------------------------- operators: list, replay, log


def view(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event": EVENT_NAME,
        "payoutId": row["payout_id"],
        "projectId": row["project_id"],
        "sequence": row["sequence"],
        "url": row["url"],
        "status": row["status"],
        "attempts": row["attempts"],
        "attemptsMax": ATTEMPTS_MAX,
        "lastStatusCode": row["last_status_code"],
        "lastError": row["last_error"],
        "createdAt": iso(row["created_at"]),
        "lastAttemptAt": iso(row["sent_at"]),
        "nextAttemptAt": iso(row["next_attempt_at"]),
        "deliveredAt": iso(row["delivered_at"]),
        "payload": json.loads(row["payload"]),
    }


def parse_status(value: str | None) -> Status | None:
    if value in (None, ""):
        return None
    return errors.parse_status(Status, value, "callback status")


async def list_callbacks(
    rt: Runtime,
    project_id: str | None,
    status: Status | None,
    limit: int = LIST_LIMIT_DEFAULT,
    cursor: str | None = None,
) -> tuple[list[RowMapping], str | None]:
    """Newest first, (created_at, id) cursor; project_id None means every project (admin)."""
    assert 1 <= limit <= LIST_LIMIT_MAX
    where = []
    if project_id is not None:
        where.append(C.project_id == project_id)
    if status is not None:
        where.append(C.status == status.value)
    return await pagination.newest_first(rt.engine, callbacks, limit, cursor, *where)


async def get_callback(rt: Runtime, callback_id: str, project_id: str | None) -> RowMapping:
    """One delivery; project_id scopes it (None: any project, for the admin)."""
    async with rt.engine.connect() as conn:
        row = (await conn.execute(select(callbacks).where(C.id == callback_id))).mappings().first()
    if row is None or (project_id is not None and row["project_id"] != project_id):
        raise errors.CallbackNotFound(f"No callback with id {callback_id}.")
    return row


async def replay(rt: Runtime, callback_id: str, project_id: str | None) -> RowMapping:
    """A dead delivery gets a fresh set of attempts, starting now. The event id stays."""
    row = await get_callback(rt, callback_id, project_id)
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        revived = await conn.execute(
            update(callbacks)
            .where(C.id == callback_id, C.status == Status.DEAD)
            .values(
                status=Status.PENDING,
                attempts=0,
                last_error=None,
                next_attempt_at=now,
                updated_at=now,
            )
        )
        if revived.rowcount != 1:
            raise errors.CallbackNotDead(
                f"Callback {callback_id} is {row['status']}; only a dead one can be replayed.",
                status=row["status"],
            )
        if not await queue.replay(conn, job_id_for(callback_id), now):
            await queue.enqueue(
                conn,
                CALLBACK_JOB,
                job_payload(callback_id, row["url"]),
                now,
                job_id=job_id_for(callback_id),
                max_attempts=JOB_ATTEMPTS_MAX,
            )
    log.info("callback_replayed", callback_id=callback_id)
    return await get_callback(rt, callback_id, project_id)


async def delivery_log(
    rt: Runtime, project_id: str | None = None, limit: int = LOG_LIMIT
) -> list[dict[str, Any]]:
    """The sandbox log of GET /test/callbacks: the original API's fields plus each attempt."""
    query = select(callbacks).order_by(C.created_at.desc(), C.id.desc()).limit(limit)
    if project_id is not None:
        query = query.where(C.project_id == project_id)
    async with rt.engine.connect() as conn:
        rows = list((await conn.execute(query)).mappings())
        attempts: dict[str, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
        if rows:
            found = await conn.execute(
                select(callback_attempts)
                .where(A.callback_id.in_(list(attempts)))
                .order_by(A.callback_id, A.attempt)
            )
            for a in found.mappings():
                attempts[a["callback_id"]].append(
                    {
                        "attempt": a["attempt"],
                        "at": iso(a["started_at"]),
                        "outcome": a["outcome"],
                        "statusCode": a["status_code"],
                        "durationMs": a["duration_ms"],
                        "error": a["error"],
                    }
                )
    return [
        {
            "id": r["id"],
            "url": r["url"],
            "payload": json.loads(r["payload"]),
            "sentAt": iso(r["sent_at"]),
            "status": r["status"],
            "attempts": r["attempts"],
            "lastStatusCode": r["last_status_code"],
            "lastError": r["last_error"],
            "nextAttemptAt": iso(r["next_attempt_at"]),
            "deliveredAt": iso(r["delivered_at"]),
            "simulated": rt.settings.sandbox and not is_loopback_url(r["url"]),
            "attemptLog": attempts[r["id"]],
        }
        for r in rows
    ]
