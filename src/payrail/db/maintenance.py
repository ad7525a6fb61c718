"""Planner statistics and dead rows of payrail's own tables when the server's autovacuum is off.

PostgreSQL's autovacuum ANALYZEs and VACUUMs each table as it changes. Without it a table is
never analyzed: the plans PostgreSQL caches (PL/pgSQL's, asyncpg's prepared statements) are
made from what the tables looked like when they were new, and kept however large they grow.
Measured on a new database with autovacuum off: the idempotency-key check of a reservation
scanned a project's every payout through the wrong index, and the hot path's lookups read
4,244 buffers per call after 11,000 payouts; PostgreSQL's CPU per payout was 2.7 ms at 50
connections where it is 1.1 once the tables were analyzed.

So when autovacuum is off (`PAYRAIL_DB_MAINTENANCE=auto`, the default) or always (`on`), the
server does autovacuum's job for its own tables, with autovacuum's default thresholds: a table
is analyzed once more than 50 + 10 % of its rows changed since its last analysis, and
vacuumed once it holds more than 50 + 20 % dead rows. An ANALYZE invalidates the plans cached
on its table, so each is made again with what the table holds now.

A large table (REPEAT_ROWS_MIN rows or more, where an ANALYZE reads its full 30,000-row sample)
is analyzed, or vacuumed, again at most once per REPEAT_INTERVAL_S, autovacuum's naptime. A
young table grows by 10 % every second or two under load, and analyzing each of them that
often took 7 % of the machine in `payrail bench`'s batch run; its plans stopped changing long
before. A small table, or one never analyzed, is not held back: those are the plans that change.

One process at a time does it (an advisory lock); the check itself is one read of
pg_stat_user_tables. `off`: never.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.db.engine import is_sqlite
from payrail.support.clock import wait_or_stop

log = structlog.get_logger("payrail.db.maintenance")

CHECK_INTERVAL_S = 5.0
LOCK_KEY = 0x70617972  # pg_try_advisory_lock: one process maintains at a time
# autovacuum's defaults (autovacuum_analyze_threshold/scale_factor, vacuum_threshold/scale_factor)
ANALYZE_BASE, ANALYZE_SCALE = 50, 0.1
VACUUM_BASE, VACUUM_SCALE = 50, 0.2
REPEAT_ROWS_MIN = 30_000  # ANALYZE's sample at default_statistics_target 100
REPEAT_INTERVAL_S = 60.0  # autovacuum_naptime's default

# Seconds since the table's last ANALYZE and last VACUUM (by anyone), NULL if never.
DUE_SQL = text(
    "SELECT s.relname, s.n_mod_since_analyze, s.n_dead_tup, greatest(c.reltuples, 0),"
    " extract(epoch FROM now() - greatest(s.last_analyze, s.last_autoanalyze))::float8,"
    " extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8"
    " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
    " WHERE s.schemaname = current_schema()"
)

Figures = tuple[str, int, int, float, float | None, float | None]


@dataclass(frozen=True)
class Due:
    table: str
    analyze: bool
    vacuum: bool


def due(rows: list[Figures]) -> list[Due]:
    """The tables past autovacuum's thresholds, from (name, changed, dead, rows, seconds since
    the last analyze, seconds since the last vacuum) figures."""
    found = []
    for table, changed, dead, count, since_analyze, since_vacuum in rows:
        analyze = changed > ANALYZE_BASE + ANALYZE_SCALE * count and _may_repeat(
            count, since_analyze
        )
        vacuum = dead > VACUUM_BASE + VACUUM_SCALE * count and _may_repeat(count, since_vacuum)
        if analyze or vacuum:
            found.append(Due(table, analyze, vacuum))
    return found


def _may_repeat(count: float, since_s: float | None) -> bool:
    """A large table's work runs at most once per REPEAT_INTERVAL_S; a small one's any time."""
    return count < REPEAT_ROWS_MIN or since_s is None or since_s >= REPEAT_INTERVAL_S


async def needed(engine: AsyncEngine, mode: str) -> bool:
    """Whether this server maintains its tables itself (PostgreSQL only)."""
    if mode == "off" or is_sqlite(engine):
        return False
    if mode == "on":
        return True
    async with engine.connect() as conn:
        return (await conn.execute(text("SHOW autovacuum"))).scalar() == "off"


async def run_once(engine: AsyncEngine) -> list[Due]:
    """Analyze/vacuum what is due, if no other process is at it; what was done."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # VACUUM's need
        got = (await conn.execute(text(f"SELECT pg_try_advisory_lock({LOCK_KEY})"))).scalar()
        if not got:
            return []
        try:
            # The pool's sessions cap statements at 30 s; a VACUUM of a large table takes
            # longer and would be cancelled at every round. RESET in `finally` restores the cap
            # before the connection goes back to the pool.
            await conn.execute(text("SET statement_timeout = 0"))
            work = due([tuple(r) for r in (await conn.execute(DUE_SQL)).all()])  # type: ignore[misc]
            for item in work:
                name = conn.dialect.identifier_preparer.quote(item.table)
                if item.vacuum:
                    verb = "VACUUM (ANALYZE)" if item.analyze else "VACUUM"
                else:
                    verb = "ANALYZE"
                await conn.execute(text(f"{verb} {name}"))
            return work
        finally:
            await conn.execute(text("RESET statement_timeout"))
            await conn.execute(text(f"SELECT pg_advisory_unlock({LOCK_KEY})"))


async def run_periodically(engine: AsyncEngine, mode: str, stop: asyncio.Event) -> None:
    """The server's loop: every few seconds, what autovacuum would have done by now."""
    try:
        if not await needed(engine, mode):
            return
    except Exception as exc:
        log.warning("db_maintenance_unavailable", error=type(exc).__name__)
        return
    log.info("db_maintenance_on", reason="autovacuum is off" if mode == "auto" else "asked")
    while not stop.is_set():
        try:
            for item in await run_once(engine):
                log.info(
                    "db_maintenance", table=item.table, analyze=item.analyze, vacuum=item.vacuum
                )
        except Exception as exc:
            log.warning("db_maintenance_failed", error=type(exc).__name__)
        await wait_or_stop(stop, CHECK_INTERVAL_S)
