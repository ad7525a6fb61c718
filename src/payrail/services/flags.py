"""Feature flags: stored in the database, read through a short cache, every change audited.

read      flag_cache (per process, FLAG_CACHE_TTL_MS) → feature_flags row → off if absent
change    tx: upsert feature_flags + flag_changes (who, when, old → new, why)  COMMIT
          then this process's cache entry is dropped: a rollback applies here at once,
          and in every other process within FLAG_CACHE_TTL_MS.
guards    evaluate_guards (periodic, and `payrail flags check`): a guard over its
          threshold turns the flag off like a manual change, audited as actor "guard".
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import structlog
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.tables import feature_flags, flag_changes, jobs, payout_events, payouts
from payrail.domain import errors
from payrail.domain.flags import KNOWN_FLAGS, Flag, Guards, check_name, parse_guards, parse_update
from payrail.domain.payouts import State
from payrail.support import metrics
from payrail.support.clock import iso, wait_or_stop

log = structlog.get_logger("payrail.flags")
F = feature_flags.c

FLAG_CACHE_TTL_MS = 5_000
HISTORY_LIMIT_DEFAULT = 20
HISTORY_LIMIT_MAX = 200
ACTOR_MAX_CHARS = 120
REASON_MAX_CHARS = 500


def _from_row(row: Any) -> Flag:
    return Flag(
        name=row["name"],
        enabled=bool(row["enabled"]),
        rollout_percent=int(row["rollout_percent"]),
        allow=tuple(json.loads(row["allow"])),
        guards=parse_guards(json.loads(row["guards"]), Guards()),
    )


async def _read(conn: AsyncConnection, name: str) -> Flag:
    row = (await conn.execute(select(feature_flags).where(F.name == name))).mappings().first()
    return Flag(name) if row is None else _from_row(row)


async def get_flag(rt: Runtime, name: str) -> Flag:
    """The flag, at most FLAG_CACHE_TTL_MS old. Unknown names are refused (404)."""
    check_name(name)
    now = rt.clock.now_ms()
    hit = rt.flag_cache.get(name)
    if hit is not None and now - hit[1] < FLAG_CACHE_TTL_MS:
        return hit[0]
    async with rt.engine.connect() as conn:
        flag = await _read(conn, name)
    rt.flag_cache[name] = (flag, now)
    return flag


async def is_on(rt: Runtime, name: str, project_id: str) -> bool:
    return (await get_flag(rt, name)).on_for(project_id)


async def path_for(rt: Runtime, name: str, project_id: str) -> str:
    """The path a project takes: the flag's new path when it is on for the project."""
    spec = KNOWN_FLAGS[name]
    try:
        on = await is_on(rt, name, project_id)
    except Exception as exc:  # a flag read must never fail a payment: take the old path
        log.warning("flag_read_failed", flag=name, error=type(exc).__name__)
        on = False
    return spec.new_path if on else spec.old_path


def _values(flag: Flag, now: int, actor: str) -> dict[str, Any]:
    return {
        "enabled": flag.enabled,
        "rollout_percent": flag.rollout_percent,
        "allow": json.dumps(list(flag.allow)),
        "guards": json.dumps(flag.guards.to_dict()),
        "updated_at": now,
        "updated_by": actor,
    }


async def _audit(
    conn: AsyncConnection,
    name: str,
    actor: str,
    now: int,
    old: Flag | None,
    new: Flag,
    reason: str | None,
) -> None:
    await conn.execute(
        insert(flag_changes).values(
            flag=name,
            actor=actor,
            at_ms=now,
            old=json.dumps(old.to_dict()) if old is not None else None,
            new=json.dumps(new.to_dict()),
            reason=reason[:REASON_MAX_CHARS] if reason else None,
        )
    )


def _source(actor: str) -> str:
    head = actor.split(":", 1)[0]
    return head if head in ("api", "cli", "guard") else "other"


async def update_flag(
    rt: Runtime, name: str, body: Any, actor: str, *, attempts_max: int = 3
) -> tuple[Flag, Flag]:
    """Apply a PUT body; returns (old, new). The change and its audit row commit together."""
    check_name(name)
    actor = actor[:ACTOR_MAX_CHARS]
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and not isinstance(reason, str):
        raise errors.ValidationError("reason must be a string.", field="reason")
    for attempt in range(attempts_max):
        now = rt.clock.now_ms()
        try:
            async with rt.engine.begin() as conn:
                row = (
                    (
                        await conn.execute(
                            select(feature_flags).where(F.name == name).with_for_update()
                        )
                    )
                    .mappings()
                    .first()
                )
                old = _from_row(row) if row is not None else None
                new = parse_update(old or Flag(name), body)
                if row is None:
                    await conn.execute(
                        insert(feature_flags).values(name=name, **_values(new, now, actor))
                    )
                else:
                    await conn.execute(
                        update(feature_flags)
                        .where(F.name == name)
                        .values(**_values(new, now, actor))
                    )
                await _audit(conn, name, actor, now, old, new, reason)
            break
        except IntegrityError:  # two first writes raced on the primary key: read again
            if attempt == attempts_max - 1:
                raise
    rt.flag_cache.pop(name, None)
    metrics.FLAG_CHANGES.labels(flag=name, source=_source(actor)).inc()
    log.info(
        "flag_changed",
        flag=name,
        actor=actor,
        enabled=new.enabled,
        rollout_percent=new.rollout_percent,
        allow_count=len(new.allow),
    )
    return old or Flag(name), new


async def history(
    rt: Runtime, name: str, limit: int = HISTORY_LIMIT_DEFAULT
) -> list[dict[str, Any]]:
    """The flag's changes, newest first."""
    check_name(name)
    C = flag_changes.c
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(flag_changes)
            .where(C.flag == name)
            .order_by(C.at_ms.desc(), C.id.desc())
            .limit(min(limit, HISTORY_LIMIT_MAX))
        )
        return [
            {
                "actor": r["actor"],
                "at": iso(r["at_ms"]),
                "old": json.loads(r["old"]) if r["old"] else None,
                "new": json.loads(r["new"]),
                "reason": r["reason"],
            }
            for r in rows.mappings()
        ]


async def list_flags(rt: Runtime) -> list[Flag]:
    async with rt.engine.connect() as conn:
        return [await _read(conn, name) for name in sorted(KNOWN_FLAGS)]


# ---------------------------------------------------------------- rollback guards


async def success_rate(conn: AsyncConnection, path: str, since_ms: int) -> tuple[float | None, int]:
    """Completed ÷ (completed + failed) of payouts on `path` that ended since `since_ms`.

    Read from the audit trail (index on to_status, at_ms), not from payouts.updated_at:
    an index on a column every transition changes would cost the saga's UPDATEs.
    """
    E = payout_events.c
    final = (State.COMPLETED.value, State.FAILED.value)
    rows = await conn.execute(
        select(E.to_status, func.count())
        .select_from(payout_events.join(payouts, payouts.c.id == E.payout_id))
        .where(E.to_status.in_(final), E.at_ms >= since_ms, payouts.c.settle_path == path)
        .group_by(E.to_status)
    )
    counts = {state: int(n) for state, n in rows}
    total = sum(counts.values())
    if total == 0:
        return None, 0
    return counts.get(State.COMPLETED.value, 0) / total, total


async def _due_jobs(conn: AsyncConnection, now: int) -> int:
    J = jobs.c
    return int(
        await conn.scalar(select(func.count()).where(J.state == "queued", J.run_at <= now)) or 0
    )


async def _tripped(rt: Runtime, conn: AsyncConnection, flag: Flag, now: int) -> str | None:
    """The first guard over its threshold, described for the audit log; None if all hold."""
    g = flag.guards
    since = now - g.window_s * 1000
    if g.min_success_rate is not None:
        rate, samples = await success_rate(conn, KNOWN_FLAGS[flag.name].new_path, since)
        if rate is not None and samples >= g.min_samples and rate < g.min_success_rate:
            return (
                f"success_rate: {rate:.3f} < {g.min_success_rate} over {g.window_s} s "
                f"({samples} payouts on the new path)"
            )
    if g.max_queue_depth is not None:
        depth = await _due_jobs(conn, now)
        if depth > g.max_queue_depth:
            return f"queue_depth: {depth} due jobs > {g.max_queue_depth}"
    if g.max_lock_timeouts is not None:
        recent = sum(1 for at in rt.lock_timeouts_ms if at >= since)
        if recent > g.max_lock_timeouts:
            return f"lock_timeouts: {recent} in {g.window_s} s > {g.max_lock_timeouts}"
    return None


async def evaluate_guards(rt: Runtime) -> list[tuple[str, str]]:
    """Turn off every enabled flag whose guard tripped. Returns [(flag, why)] it turned off."""
    turned_off: list[tuple[str, str]] = []
    for name in sorted(KNOWN_FLAGS):
        now = rt.clock.now_ms()
        async with rt.engine.begin() as conn:
            flag = await _read(conn, name)
            if not flag.enabled or not flag.guards.any:
                continue
            why = await _tripped(rt, conn, flag, now)
            if why is None:
                continue
            # Guarded: of several processes that see the trip, one turns it off and audits.
            off = replace(flag, enabled=False)
            done = await conn.execute(
                update(feature_flags)
                .where(F.name == name, F.enabled.is_(True))
                .values(enabled=False, updated_at=now, updated_by="guard")
            )
            if done.rowcount != 1:
                continue
            await _audit(conn, name, "guard", now, flag, off, f"rolled back: {why}")
        rt.flag_cache.pop(name, None)
        metrics.FLAG_CHANGES.labels(flag=name, source="guard").inc()
        log.warning("flag_rolled_back", flag=name, reason=why)
        turned_off.append((name, why))
    return turned_off


async def run_guards_periodically(rt: Runtime, stop: asyncio.Event, interval_s: float) -> None:
    while not stop.is_set():
        try:
            await evaluate_guards(rt)
        except Exception as exc:
            log.warning("flag_guards_failed", error=type(exc).__name__)
        await wait_or_stop(stop, interval_s)
