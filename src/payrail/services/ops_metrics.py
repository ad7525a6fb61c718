"""Scrape-time gauges computed from the database, and the /metrics exposition.

The database holds the truth that several processes share (open payouts, the job queue,
dead deliveries, flags), so these gauges are read from it on each scrape instead of being
kept in one process's memory. Each is a small GROUP BY over an indexed column, bounded by
a timeout; a scrape whose queries fail still answers, with payrail_scrape_db_ok 0.

Other modules add their own with `register_db_gauge`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.tables import (
    callbacks,
    feature_flags,
    jobs,
    orders,
    payouts,
    worker_heartbeats,
)
from payrail.domain.orders import OrderStatus
from payrail.domain.payouts import State
from payrail.support import metrics

log = structlog.get_logger("payrail.support.metrics")

SCRAPE_DB_TIMEOUT_S = 3.0
WORKER_ALIVE_MS = 30_000  # a worker whose last heartbeat is older than this is presumed dead

Samples = Iterable[tuple[tuple[str, ...], float]]
Query = Callable[[AsyncConnection, int], Awaitable[Samples]]


@dataclass(frozen=True)
class DbGauge:
    name: str
    documentation: str
    labels: tuple[str, ...]
    query: Query  # (conn, now_ms) → [(label values, value)]


DB_GAUGES: list[DbGauge] = []


def register_db_gauge(
    name: str, documentation: str, labels: tuple[str, ...] = ()
) -> Callable[[Query], Query]:
    """Decorator: compute a gauge from the database at scrape time. Labels must be bounded."""

    def add(query: Query) -> Query:
        assert all(g.name != name for g in DB_GAUGES), f"gauge {name} registered twice"
        DB_GAUGES.append(DbGauge(name, documentation, labels, query))
        return query

    return add


# ---------------------------------------------------------------- payouts

OPEN_STATES = (State.RESERVED.value, State.IN_FLIGHT.value)


async def _open_payouts(conn: AsyncConnection) -> dict[str, tuple[int, int]]:
    P = payouts.c
    rows = await conn.execute(
        select(P.state, func.count(), func.coalesce(func.sum(P.amount + P.fee), 0))
        .where(P.state.in_(OPEN_STATES))
        .group_by(P.state)
    )
    found = {state: (int(n), int(sats)) for state, n, sats in rows}
    return {state: found.get(state, (0, 0)) for state in OPEN_STATES}


@register_db_gauge("payrail_payouts_open", "Payouts not yet final, by internal state.", ("state",))
async def _payouts_open(conn: AsyncConnection, now_ms: int) -> Samples:
    return [((state,), float(n)) for state, (n, _) in (await _open_payouts(conn)).items()]


@register_db_gauge(
    "payrail_payouts_reserved_sats",
    "Sats held by payouts not yet final (amount + fee), by internal state.",
    ("state",),
)
async def _reserved_sats(conn: AsyncConnection, now_ms: int) -> Samples:
    return [((state,), float(s)) for state, (_, s) in (await _open_payouts(conn)).items()]


# ---------------------------------------------------------------- the job queue


async def _job_rows(conn: AsyncConnection, now_ms: int) -> list[tuple[str, str, int, int, int]]:
    J = jobs.c
    due = func.sum(case((J.run_at <= now_ms, 1), else_=0))
    rows = await conn.execute(
        select(J.kind, J.state, func.count(), func.min(J.run_at), func.coalesce(due, 0))
        .where(J.state.in_(("queued", "dead")))
        .group_by(J.kind, J.state)
    )
    return [(k, s, int(n), int(oldest), int(d)) for k, s, n, oldest, d in rows]


@register_db_gauge(
    "payrail_jobs_queued",
    "Jobs waiting or running (not done, not dead), by kind; includes retries scheduled later.",
    ("kind",),
)
async def _jobs_queued(conn: AsyncConnection, now_ms: int) -> Samples:
    return [((k,), float(n)) for k, s, n, _, _ in await _job_rows(conn, now_ms) if s == "queued"]


@register_db_gauge(
    "payrail_jobs_due", "Jobs whose run time has come (the backlog), by kind.", ("kind",)
)
async def _jobs_due(conn: AsyncConnection, now_ms: int) -> Samples:
    return [((k,), float(d)) for k, s, _, _, d in await _job_rows(conn, now_ms) if s == "queued"]


@register_db_gauge(
    "payrail_jobs_oldest_due_age_seconds",
    "How long the oldest due job has waited past its run time, by kind (0: none due).",
    ("kind",),
)
async def _jobs_age(conn: AsyncConnection, now_ms: int) -> Samples:
    return [
        ((k,), max(0.0, (now_ms - oldest) / 1000))
        for k, s, _, oldest, _ in await _job_rows(conn, now_ms)
        if s == "queued"
    ]


@register_db_gauge(
    "payrail_jobs_dead", "Jobs that used all attempts (replayable), by kind.", ("kind",)
)
async def _jobs_dead(conn: AsyncConnection, now_ms: int) -> Samples:
    return [((k,), float(n)) for k, s, n, _, _ in await _job_rows(conn, now_ms) if s == "dead"]


# ---------------------------------------------------------------- callbacks, flags, workers


@register_db_gauge(
    "payrail_callbacks",
    "Callback deliveries not delivered, by status (pending | dead).",
    ("status",),
)
async def _callbacks(conn: AsyncConnection, now_ms: int) -> Samples:
    C = callbacks.c
    rows = await conn.execute(
        select(C.status, func.count()).where(C.status.in_(("pending", "dead"))).group_by(C.status)
    )
    found = {status: int(n) for status, n in rows}
    return [((s,), float(found.get(s, 0))) for s in ("pending", "dead")]


@register_db_gauge(
    "payrail_callback_oldest_pending_age_seconds",
    "Age of the oldest callback not yet delivered (0: none pending).",
)
async def _callback_age(conn: AsyncConnection, now_ms: int) -> Samples:
    C = callbacks.c
    oldest = await conn.scalar(select(func.min(C.created_at)).where(C.status == "pending"))
    return [((), max(0.0, (now_ms - oldest) / 1000) if oldest is not None else 0.0)]


@register_db_gauge(
    "payrail_flag_rollout_percent",
    "Share of projects on a flag's new path (0 when the flag is off), by flag.",
    ("flag",),
)
async def _flags(conn: AsyncConnection, now_ms: int) -> Samples:
    F = feature_flags.c
    rows = await conn.execute(select(F.name, F.enabled, F.rollout_percent))
    return [((name,), float(pct if enabled else 0)) for name, enabled, pct in rows]


@register_db_gauge(
    "payrail_workers_alive", "Workers whose heartbeat is recent (any process, any host)."
)
async def _workers(conn: AsyncConnection, now_ms: int) -> Samples:
    W = worker_heartbeats.c
    n = await conn.scalar(select(func.count()).where(W.beat_at >= now_ms - WORKER_ALIVE_MS))
    return [((), float(n or 0))]


# ---------------------------------------------------------------- orders (pay-ins)


@register_db_gauge(
    "payrail_orders", "Orders by status (the order state machine's names).", ("status",)
)
async def _orders(conn: AsyncConnection, now_ms: int) -> Samples:
    """Every status, 0 included, so an alert on one never sees a series vanish."""
    rows = await conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
    found = {str(status): int(n) for status, n in rows}
    return [((s.value,), float(found.get(s.value, 0))) for s in OrderStatus]


# ---------------------------------------------------------------- exposition


class _Static(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families


async def db_families(rt: Runtime) -> list[GaugeMetricFamily]:
    now_ms = rt.clock.now_ms()
    families: list[GaugeMetricFamily] = []

    async def read() -> None:
        async with rt.engine.connect() as conn:
            for gauge in DB_GAUGES:
                family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)
                for labels, value in await gauge.query(conn, now_ms):
                    family.add_metric(list(labels), value)
                families.append(family)

    ok = 1.0
    try:
        await asyncio.wait_for(read(), SCRAPE_DB_TIMEOUT_S)
    except Exception as exc:  # a scrape must answer even when the database does not
        log.warning("metrics_db_read_failed", error=type(exc).__name__)
        families.clear()
        ok = 0.0
    up = GaugeMetricFamily("payrail_scrape_db_ok", "1 if the scrape-time database read worked.")
    up.add_metric([], ok)
    families.append(up)
    return families


async def render(rt: Runtime) -> bytes:
    """The whole exposition: process (or multiprocess) samples, then database gauges."""
    scraped = CollectorRegistry()
    scraped.register(_Static(await db_families(rt)))
    return generate_latest(metrics.process_registry()) + generate_latest(scraped)
