"""What one payout costs the database: statements, commits and rows, counted, not timed.

`payrail bench` prints these next to its throughput figures (and `payrail bench --costs-only`
prints only these). Throughput on a shared 2-core machine is noisy; these counts are not, so
they show what each change to the hot path bought:

- statements: every statement payrail sends (SQLAlchemy's cursor-execute event, plus each call
  of the payout engine's storage, db/payout_store: one statement each), BEGIN and COMMIT excluded;
- commits, rows inserted, rows updated: PostgreSQL's own pg_stat_database deltas for the bench
  database (read once every backend has closed, so the counters are flushed).

The payouts run in-process, one at a time, through the service layer with the simulated node
answering at once: the hot path alone, without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

PAYOUTS_MEASURED = 200
BATCH_ITEMS = 200
PROJECT_ID = "bench_costs"
FUND_SATS = 10_000_000
AMOUNT_SATS = 100
STATS_FLUSH_WAIT_S = 1.5  # backends flush their statistics when they exit; give them time
STAT_QUERY = (
    "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database WHERE datname = $1"
)


@dataclass
class Costs:
    what: str
    payouts: int
    statements_per_payout: float
    commits_per_payout: float
    rows_inserted_per_payout: float
    rows_updated_per_payout: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _count_statements(engine: AsyncEngine) -> Iterator[list[int]]:
    counter = [0]

    def count(*_: Any) -> None:
        counter[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def pg_stats(database_url: str) -> tuple[int, int, int]:
    url = make_url(database_url)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database="postgres",
    )
    try:
        row = await conn.fetchrow(STAT_QUERY, url.database)
    finally:
        await conn.close()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


async def _measure(
    database_url: str, what: str, payouts: int, work: Callable[[Any], Awaitable[None]]
) -> Costs:
    """Run `work(rt)` on a fresh runtime; the counts are divided by `payouts`."""
    from payrail.bootstrap import build_runtime
    from payrail.config import Settings
    from payrail.services import projects

    settings = Settings(database_url=database_url, mode="sandbox", run_worker=False, sim_seed=1)
    rt = build_runtime(settings)
    try:
        await projects.create_project(rt, PROJECT_ID + what, PROJECT_ID + what)
        await projects.fund(rt, PROJECT_ID + what, FUND_SATS)
        await _close_connections(rt)
        await asyncio.sleep(STATS_FLUSH_WAIT_S)
        before = await pg_stats(database_url)
        hot_calls_before = _hot_calls(rt)
        with _count_statements(rt.engine) as statements:
            await work(rt)
            await rt.drain()
        statements[0] += _hot_calls(rt) - hot_calls_before
        await _close_connections(rt)
        await asyncio.sleep(STATS_FLUSH_WAIT_S)
        after = await pg_stats(database_url)
    finally:
        await rt.aclose()
    commits, inserted, updated = (a - b for a, b in zip(after, before, strict=True))
    return Costs(
        what=what,
        payouts=payouts,
        statements_per_payout=round(statements[0] / payouts, 2),
        commits_per_payout=round(commits / payouts, 2),
        rows_inserted_per_payout=round(inserted / payouts, 2),
        rows_updated_per_payout=round(updated / payouts, 2),
    )


def _hot_calls(rt: Any) -> int:
    return rt.payout_store.calls


async def _close_connections(rt: Any) -> None:
    """Every backend closed, so that PostgreSQL has flushed its statistics of them."""
    await rt.engine.dispose()
    await rt.payout_store.aclose()


def _request(project_id: str, i: int) -> Any:
    from payrail.domain.payouts import parse_payout_request

    return parse_payout_request(
        {"gamertag": f"g{i}", "amount": AMOUNT_SATS, "projectId": project_id},
        f"costs-{project_id}-{i}",
    )


async def single_costs(database_url: str, payouts: int = PAYOUTS_MEASURED) -> Costs:
    from payrail.services import payouts as service

    async def work(rt: Any) -> None:
        for i in range(payouts):
            outcome = await service.create_payout(rt, _request(PROJECT_ID + "single", i))
            assert outcome.payout["state"] == "completed", outcome.payout["state"]

    return await _measure(database_url, "single", payouts, work)


async def batch_costs(database_url: str, items: int = BATCH_ITEMS) -> Costs:
    from payrail.services import batches

    async def work(rt: Any) -> None:
        project_id = PROJECT_ID + "batch"
        answer = await batches.create_batch(
            rt, project_id, "costs-batch", [_request(project_id, i) for i in range(items)]
        )
        assert all(item.payout is not None for item in answer.items)

    return await _measure(database_url, "batch", items, work)


async def all_costs(database_url: str) -> list[Costs]:
    return [await single_costs(database_url), await batch_costs(database_url)]
