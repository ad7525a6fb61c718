"""The data behind each dashboard page, as plain dicts for the templates.

Reads go through the existing services (payouts, orders, callbacks, flags, job queue); the
only queries of its own are the ones those have no use case for: a project's outcomes per time
bucket, its open payouts by age, and the lists' gamertag / customer / time filters (which
still page through services/pagination.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, case, func, select
from sqlalchemy.engine import RowMapping

from payrail.bootstrap import Runtime
from payrail.db.tables import orders, payouts, projects
from payrail.domain import errors
from payrail.domain.flags import KNOWN_FLAGS
from payrail.domain.orders import OrderStatus
from payrail.domain.payouts import FailureCode, State, Status, states_for
from payrail.domain.recipients import GAMERTAG_RE
from payrail.jobs import queue
from payrail.services import callbacks, flags, pagination, rollups
from payrail.services import orders as order_service
from payrail.services import payouts as payout_service
from payrail.services import projects as project_service
from payrail.support import svg
from payrail.support.clock import iso

P = payouts.c

# The alert thresholds of ops/prometheus/alerts.yml (a test keeps the two equal).
SUCCESS_RATE_MIN = 0.95  # PayrailPayoutSuccessRateLow
TIMEOUT_RATE_MAX = 0.02  # PayrailNodeTimeoutRateHigh

PROJECTS_LISTED_MAX = 100
OPEN_PAYOUTS_SHOWN_MAX = 50
LIST_PAGE_SIZE = 25
DEAD_SHOWN_MAX = 50
FLAG_HISTORY_SHOWN = 10
CUSTOMER_ID_MAX_CHARS = 255
OPEN_STATES = (State.RESERVED.value, State.IN_FLIGHT.value)


@dataclass(frozen=True)
class Window:
    label: str
    bucket_ms: int
    buckets: int
    unit: str  # what the chart's x axis counts back in
    unit_ms: int

    @property
    def span_ms(self) -> int:
        return self.bucket_ms * self.buckets


WINDOWS = {
    "1h": Window("last hour", 5 * 60_000, 12, "minutes", 60_000),
    "24h": Window("last 24 hours", 3_600_000, 24, "hours", 3_600_000),
    "7d": Window("last 7 days", 86_400_000, 7, "days", 86_400_000),
}
WINDOW_DEFAULT = "24h"
assert max(w.span_ms for w in WINDOWS.values()) <= rollups.HISTORY_MS, "charts within the rollup"

# The chart's four outcomes, in stacking order, with their colours.
OUTCOMES = (
    ("success", "#16a34a"),
    ("failed", "#dc2626"),
    ("timed out", "#f59e0b"),
    ("pending", "#64748b"),
)


def outcome_of(state: str, failure_code: str | None) -> str:
    """A payout's outcome on the chart: expired (never sent) counts as failed."""
    if state in OPEN_STATES:
        return "pending"
    if state == State.COMPLETED:
        return "success"
    if state == State.FAILED and failure_code == FailureCode.GATEWAY_TIMEOUT:
        return "timed out"
    return "failed"


def parse_window(raw: str | None) -> str:
    if raw in (None, ""):
        return WINDOW_DEFAULT
    if raw not in WINDOWS:
        raise errors.ValidationError(f"window must be one of {', '.join(WINDOWS)}.")
    return raw


def parse_time(raw: str | None, name: str) -> int | None:
    """A datetime-local field (taken as UTC) → epoch ms; empty is no bound."""
    if raw in (None, ""):
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise errors.ValidationError(
            f"{name} must be a date and time like 2026-12-03T09:30."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# ---------------------------------------------------------------- overview


async def project_ids(rt: Runtime, scope: str | None) -> list[str]:
    """The projects a page may offer: one for a project key, the first ones for the admin."""
    if scope is not None:
        return [scope]
    async with rt.engine.connect() as conn:
        found = await conn.execute(
            select(projects.c.id).order_by(projects.c.id).limit(PROJECTS_LISTED_MAX)
        )
        return [r.id for r in found]


async def overview(rt: Runtime, project_id: str, window_name: str) -> dict[str, Any]:
    """Balance, reserved, outcomes over time, rates against thresholds, open payouts by age."""
    window = WINDOWS[window_name]
    now = rt.clock.now_ms()
    first = (now // window.bucket_ms - window.buckets + 1) * window.bucket_ms
    balance = await project_service.balance(rt, project_id)
    timed_out = case((P.failure_code == FailureCode.GATEWAY_TIMEOUT.value, 1), else_=0)
    bucket = (P.created_at - first) // window.bucket_ms  # integer division on both databases
    counts = {name: [0] * window.buckets for name, _ in OUTCOMES}
    if window.bucket_ms % rollups.HOUR_MS == 0:
        # Hourly buckets or coarser: the rollup's rows (services/rollups.py), not every payout.
        found = await rollups.counts(rt, project_id, first, window.bucket_ms, window.buckets)
        for name, values in found.items():
            counts[name] = [a + b for a, b in zip(counts[name], values, strict=True)]
    async with rt.engine.connect() as conn:
        if window.bucket_ms % rollups.HOUR_MS:
            rows = await conn.execute(
                select(bucket.label("b"), P.state, timed_out.label("t"), func.count())
                .where(P.project_id == project_id, P.created_at >= first)
                .group_by(bucket, P.state, timed_out)
            )
            for b, state, t, n in rows:
                code = FailureCode.GATEWAY_TIMEOUT if t else None
                index = min(int(b), window.buckets - 1)
                counts[outcome_of(state, code)][index] += int(n)
        open_rows = (
            await conn.execute(
                select(P.id, P.gamertag, P.amount, P.fee, P.state, P.created_at)
                .where(P.project_id == project_id, P.state.in_(OPEN_STATES))
                .order_by(P.created_at, P.id)
                .limit(OPEN_PAYOUTS_SHOWN_MAX)
            )
        ).mappings()
        open_payouts = [
            {
                "id": r["id"],
                "gamertag": r["gamertag"],
                "totalCost": r["amount"] + r["fee"],
                "state": r["state"],
                "createdAt": iso(r["created_at"]),
                "age": age_text(now - r["created_at"]),
            }
            for r in open_rows
        ]
        open_count = await conn.scalar(
            select(func.count()).where(P.project_id == project_id, P.state.in_(OPEN_STATES))
        )
    totals = {name: sum(values) for name, values in counts.items()}
    final = totals["success"] + totals["failed"] + totals["timed out"]
    success_rate = totals["success"] / final if final else None
    timeout_rate = totals["timed out"] / final if final else None
    return {
        "projectId": project_id,
        "balance": balance["balance"],
        "reserved": balance["reserved"],
        "window": window_name,
        "windowLabel": window.label,
        "totals": totals,
        "payoutCount": sum(totals.values()),
        "successRate": success_rate,
        "successRateMin": SUCCESS_RATE_MIN,
        "successOk": success_rate is None or success_rate >= SUCCESS_RATE_MIN,
        "timeoutRate": timeout_rate,
        "timeoutRateMax": TIMEOUT_RATE_MAX,
        "timeoutOk": timeout_rate is None or timeout_rate <= TIMEOUT_RATE_MAX,
        "openCount": int(open_count or 0),
        "openPayouts": open_payouts,
        "chart": outcome_chart(counts, window),
    }


async def overview_row(rt: Runtime, project_id: str) -> dict[str, Any]:
    """One line of the admin's table of projects."""
    balance = await project_service.balance(rt, project_id)
    async with rt.engine.connect() as conn:
        open_count = await conn.scalar(
            select(func.count()).where(P.project_id == project_id, P.state.in_(OPEN_STATES))
        )
    return {
        "projectId": project_id,
        "balance": balance["balance"],
        "reserved": balance["reserved"],
        "openCount": int(open_count or 0),
    }


def outcome_chart(counts: dict[str, list[int]], window: Window) -> str:
    """Stacked columns of payouts per bucket by outcome, oldest bucket left (inline SVG)."""
    step = window.bucket_ms / window.unit_ms
    x = [(i - window.buckets + 1) * step for i in range(window.buckets)]
    stacked = [svg.Series(name, counts[name], color) for name, color in OUTCOMES]
    return svg.time_chart(
        f"Payouts by outcome, {window.label}",
        x,
        stacked=stacked,
        y_label="payouts",
        x_label=f"{window.unit} before now (the last column is the current one)",
        width=760,
        height=260,
    )


def age_text(ms: int) -> str:
    seconds = max(ms, 0) // 1000
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7_200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} d"


# ---------------------------------------------------------------- lists


@dataclass(frozen=True)
class ListFilter:
    """What the payouts and orders lists filter on: scope, status, one exact field, time."""

    project_id: str | None
    states: tuple[str, ...] = ()  # the stored states of the status asked for (none: any)
    field: str | None = None  # a column matched exactly: gamertag, customer_id
    value: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


def _times(q: dict[str, str]) -> tuple[int | None, int | None]:
    return parse_time(q.get("from"), "from"), parse_time(q.get("to"), "to")


def parse_payout_filter(scope: str | None, q: dict[str, str]) -> ListFilter:
    status = errors.parse_status(Status, q["status"], "payout status") if q.get("status") else None
    gamertag = q.get("gamertag") or None
    if gamertag is not None and not GAMERTAG_RE.fullmatch(gamertag):
        raise errors.ValidationError("gamertag has 1-64 letters, digits, '_', '.' or '-'.")
    states = tuple(s.value for s in states_for(status)) if status else ()
    return ListFilter(scope, states, "gamertag", gamertag, *_times(q))


def parse_order_filter(scope: str | None, q: dict[str, str]) -> ListFilter:
    status = (
        errors.parse_status(OrderStatus, q["status"], "order status") if q.get("status") else None
    )
    customer = q.get("customer") or None
    if customer is not None and len(customer) > CUSTOMER_ID_MAX_CHARS:
        raise errors.ValidationError(f"customer is at most {CUSTOMER_ID_MAX_CHARS} characters.")
    states = (status.value,) if status else ()
    return ListFilter(scope, states, "customer_id", customer, *_times(q))


async def _page(
    rt: Runtime, table: Table, state_column: str, f: ListFilter, cursor: str | None
) -> tuple[list[RowMapping], str | None]:
    """One page of payouts or orders, newest first, through the API's own pagination."""
    c = table.c
    where = []
    if f.project_id is not None:
        where.append(c.project_id == f.project_id)
    if f.states:
        where.append(c[state_column].in_(f.states))
    if f.field == "gamertag" and f.value is not None:
        # Any spelling, as the rate limit counts it: on lower(gamertag), which
        # ix_payouts_rate_key (one project) and ix_payouts_gamertag (all projects) index.
        where.append(func.lower(c.gamertag) == f.value.lower())
    elif f.field is not None and f.value is not None:
        where.append(c[f.field] == f.value)
    if f.since_ms is not None:
        where.append(c.created_at >= f.since_ms)
    if f.until_ms is not None:
        where.append(c.created_at < f.until_ms)
    return await pagination.newest_first(rt.engine, table, LIST_PAGE_SIZE, cursor, *where)


async def payout_page(
    rt: Runtime, f: ListFilter, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    rows, next_cursor = await _page(rt, payouts, "state", f, cursor)
    return [
        payout_service.view(r) | {"outcome": outcome_of(r["state"], r["failure_code"])}
        for r in rows
    ], next_cursor


async def payout_detail(rt: Runtime, payout_id: str, scope: str | None) -> dict[str, Any]:
    """A payout, its full history and its callbacks; another project's is a 404."""
    row = await payout_service.get_payout(rt, payout_id)
    if scope is not None and row["project_id"] != scope:
        raise errors.PayoutNotFound(f"No payout with id {payout_id}.")
    page, _ = await callbacks.list_callbacks(rt, row["project_id"], None, callbacks.LIST_LIMIT_MAX)
    return {
        "payout": payout_service.view(row)
        | {"outcome": outcome_of(row["state"], row["failure_code"])},
        "history": await payout_service.history(rt, payout_id),
        "callbacks": [callbacks.view(c) for c in page if c["payout_id"] == payout_id],
    }


async def order_page(
    rt: Runtime, f: ListFilter, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    rows, next_cursor = await _page(rt, orders, "status", f, cursor)
    return [order_service.view(r) for r in rows], next_cursor


async def order_detail(rt: Runtime, order_id: str, scope: str | None) -> dict[str, Any]:
    row = await order_service.get_order(rt, order_id, scope)
    return {"order": order_service.view(row), "history": await order_service.history(rt, order_id)}


# ---------------------------------------------------------------- dead letters, flags


async def dead_callbacks(rt: Runtime, scope: str | None) -> list[dict[str, Any]]:
    page, _ = await callbacks.list_callbacks(rt, scope, callbacks.Status.DEAD, DEAD_SHOWN_MAX)
    return [callbacks.view(r) for r in page]


async def dead_jobs(rt: Runtime) -> list[dict[str, Any]]:
    """Dead jobs but callback deliveries: those replay through their callback, which resets
    its attempts too (replaying the bare job would find the callback still dead)."""
    async with rt.engine.connect() as conn:
        found = await queue.list_jobs(conn, "dead", limit=queue.JOBS_LIST_MAX)
    return [
        j | {"updatedAt": iso(j["updatedAt"])} for j in found if j["kind"] != callbacks.CALLBACK_JOB
    ][:DEAD_SHOWN_MAX]


async def flag_rows(rt: Runtime, viewer_project: str | None, admin: bool) -> list[dict[str, Any]]:
    """Every known flag; the admin also sees allow lists, guards and the last changes."""
    shown = []
    for flag in await flags.list_flags(rt):
        row: dict[str, Any] = {
            "name": flag.name,
            "description": KNOWN_FLAGS[flag.name].description,
            "enabled": flag.enabled,
            "rolloutPercent": flag.rollout_percent,
        }
        if admin:
            row |= {
                "allow": list(flag.allow),
                "guards": {k: v for k, v in flag.guards.to_dict().items() if v is not None},
                "history": await flags.history(rt, flag.name, FLAG_HISTORY_SHOWN),
            }
        else:  # another project's id on an allow list is not this key's business
            row["onForYou"] = viewer_project is not None and flag.on_for(viewer_project)
        shown.append(row)
    return shown


def parse_flag_form(form: dict[str, str]) -> dict[str, Any]:
    """The change form → a flags.update_flag body. A reason is required: it is the audit."""
    raw = form.get("rolloutPercent", "").strip()
    try:
        rollout = int(raw)
    except ValueError:
        raise errors.ValidationError("Rollout must be a whole percentage from 0 to 100.") from None
    reason = form.get("reason", "").strip()
    if not reason:
        raise errors.ValidationError("Say why you change the flag: the reason goes in its log.")
    if len(reason) > flags.REASON_MAX_CHARS:
        raise errors.ValidationError(f"The reason is at most {flags.REASON_MAX_CHARS} characters.")
    # update_flag validates the range, as it does for the API.
    return {"enabled": form.get("enabled") == "on", "rolloutPercent": rollout, "reason": reason}
