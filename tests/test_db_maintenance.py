"""The server keeps PostgreSQL's statistics itself when autovacuum is off (db/maintenance.py),
and the hot path's lookups stay per-item index lookups whatever the statistics say."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from payrail.db import maintenance
from payrail.db.engine import make_engine
from payrail.db.payout_store.postgres import LOAD_SQL, PostgresPayoutStore
from payrail.domain import payout_engine


def test_due_follows_autovacuum_thresholds() -> None:
    rows = [
        ("quiet", 50, 50, 0.0, None, None),  # at the thresholds: not yet
        ("grown", 51, 0, 0.0, None, None),  # a new table past 50 changes: analyze
        ("big", 1_049, 0, 10_000.0, 1.0, 1.0),  # under 50 + 10 %
        ("big_changed", 1_051, 0, 10_000.0, 1.0, 1.0),  # small enough to analyze at once
        ("churned", 0, 2_051, 10_000.0, 1.0, 1.0),  # dead rows past 50 + 20 %
        ("both", 2_000, 3_000, 10_000.0, 0.0, 0.0),
    ]
    assert maintenance.due(rows) == [
        maintenance.Due("grown", analyze=True, vacuum=False),
        maintenance.Due("big_changed", analyze=True, vacuum=False),
        maintenance.Due("churned", analyze=False, vacuum=True),
        maintenance.Due("both", analyze=True, vacuum=True),
    ]


def test_a_large_table_is_analyzed_again_at_most_once_a_naptime() -> None:
    large = float(maintenance.REPEAT_ROWS_MIN)
    wait = maintenance.REPEAT_INTERVAL_S
    rows = [
        ("never_analyzed", 10_000, 0, large, None, None),  # the first time is never held back
        ("analyzed_lately", 10_000, 0, large, wait - 1, None),
        ("analyzed_a_while_ago", 10_000, 0, large, wait, None),
        ("vacuumed_lately", 0, 10_000, large, None, wait - 1),
        ("vacuumed_a_while_ago", 0, 10_000, large, None, wait + 1),
        ("small_analyzed_lately", 4_000, 0, large - 1, 0.0, None),
    ]
    assert maintenance.due(rows) == [
        maintenance.Due("never_analyzed", analyze=True, vacuum=False),
        maintenance.Due("analyzed_a_while_ago", analyze=True, vacuum=False),
        maintenance.Due("vacuumed_a_while_ago", analyze=False, vacuum=True),
        maintenance.Due("small_analyzed_lately", analyze=True, vacuum=False),
    ]


async def test_needed_only_on_postgresql_and_by_mode(pg_url: str, tmp_path) -> None:
    sqlite = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    pg = make_engine(pg_url)
    try:
        assert not await maintenance.needed(sqlite, "on")
        assert await maintenance.needed(pg, "on")
        assert not await maintenance.needed(pg, "off")
        conn = await asyncpg.connect(pg_url)
        try:
            autovacuum = await conn.fetchval("SHOW autovacuum")
        finally:
            await conn.close()
        assert await maintenance.needed(pg, "auto") == (autovacuum == "off")
    finally:
        await sqlite.dispose()
        await pg.dispose()


async def _counts(conn: asyncpg.Connection, table: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT analyze_count, vacuum_count FROM pg_stat_user_tables WHERE relname = $1", table
    )
    return row["analyze_count"], row["vacuum_count"]


async def test_run_once_analyzes_and_vacuums_what_changed(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1)  # one pooled session, checked after each run
    conn = await asyncpg.connect(pg_url)
    table = "maintenance_probe"
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(f"CREATE TABLE {table} (id int primary key)")
        await conn.execute(f"INSERT INTO {table} SELECT generate_series(1, 500)")
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")  # the flush happens after a transaction
        assert await _counts(conn, table) == (0, 0)

        done = await maintenance.run_once(engine)
        assert maintenance.Due(table, analyze=True, vacuum=False) in done
        assert await _counts(conn, table) == (1, 0)
        assert (
            await conn.fetchval(f"SELECT reltuples FROM pg_class WHERE relname = '{table}'") == 500
        )
        assert table not in [d.table for d in await maintenance.run_once(engine)]

        await conn.execute(f"DELETE FROM {table} WHERE id > 100")  # 400 dead rows
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
        done = await maintenance.run_once(engine)
        assert maintenance.Due(table, analyze=True, vacuum=True) in done
        assert await _counts(conn, table) == (2, 1)
        # Maintenance lifts the pool's statement cap for itself only.
        async with engine.connect() as pooled:
            assert (await pooled.execute(text("SHOW statement_timeout"))).scalar() == "30s"
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
        await engine.dispose()


async def test_run_once_leaves_the_work_to_the_process_that_holds_it(pg_url: str) -> None:
    engine = make_engine(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await other.execute(f"SELECT pg_advisory_lock({maintenance.LOCK_KEY})")
        await other.execute("CREATE TABLE IF NOT EXISTS maintenance_held (id int)")
        await other.execute("INSERT INTO maintenance_held SELECT generate_series(1, 100)")
        await other.execute("SELECT pg_stat_force_next_flush()")
        await other.execute("SELECT 1")
        assert await maintenance.run_once(engine) == []
        await other.execute(f"SELECT pg_advisory_unlock({maintenance.LOCK_KEY})")
        assert "maintenance_held" in [d.table for d in await maintenance.run_once(engine)]
    finally:
        await other.execute("DROP TABLE IF EXISTS maintenance_held")
        await other.close()
        await engine.dispose()


@pytest.mark.parametrize("planner", ["enable_nestloop", "enable_hashjoin"])
async def test_engine_reads_stay_per_item_whatever_the_planner_prefers(
    pg_url: str, planner: str
) -> None:
    """Each LATERAL read of the payout engine's load must stay a per-item index scan: with
    nested loops priced out the plan must still be one (a flattened join would hash a whole
    index, a cost that grows with history)."""
    store = PostgresPayoutStore(pg_url, {})
    item = payout_engine.Item("p", "r", "R", 10, 1, 1_000_000, "k", "h" * 64, "i")
    limits = payout_engine.Limits(10, payout_engine.Policy(3, 600, 600))
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"SET {planner} = off")
        await conn.execute("SET enable_seqscan = off")
        params = store._load_params([item], limits)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {LOAD_SQL}", *params))
        assert "Hash Join" not in plan and "Merge Join" not in plan, plan
        assert "Seq Scan on payouts" not in plan, plan
        # keys, recent (per recipient), recent_p (per player), failed, hashes, ids, and the
        # daily caps' sums: spent (projects), spent_r and spent_p (two each: the project's
        # limits row, then the payouts)
        assert plan.count("Nested Loop") == 11, plan
    finally:
        await conn.close()


async def test_engine_sessions_plan_generically_without_jit(pg_url: str) -> None:
    """The payout store's own pool: generic plans (no planning per call), no seq scans, no
    JIT."""
    from payrail.db.engine import pg_server_settings

    hot = PostgresPayoutStore(pg_url, pg_server_settings())
    try:
        pool = await hot._connections()
        async with pool.acquire() as conn:
            shown = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("plan_cache_mode", "jit", "enable_seqscan")
            }
        assert shown == {
            "plan_cache_mode": "force_generic_plan",
            "jit": "off",
            "enable_seqscan": "off",
        }
    finally:
        await hot.aclose()
