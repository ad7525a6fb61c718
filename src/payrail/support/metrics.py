"""Prometheus metrics. Names follow Prometheus conventions; labels are bounded (no ids).

Counters and histograms live here, incremented where things happen. Gauges that describe
the database (open payouts, reserved sats, queue depth, dead deliveries, orders by status)
are computed at scrape time by services/ops_metrics.py, so they are right whichever
process answers the scrape.

Several server processes (`payrail serve --workers N`): set PROMETHEUS_MULTIPROC_DIR to an
empty directory before start (`payrail serve` does so itself for N > 1); every process then
writes its samples there and a scrape of any one process sums them all.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

API_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SETTLEMENT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)
LAG_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

# ---------------------------------------------------------------- payouts

PAYOUTS_CREATED = Counter(
    "payrail_payouts_created_total",
    "Payouts reserved by POST /payouts, by settlement path (inline | queue).",
    ["path"],
)
PAYOUTS_FINAL = Counter(
    "payrail_payouts_final_total",
    "Payouts that reached a final state, by public status, failure reason and settlement path.",
    ["status", "reason", "path"],
)
PAYOUT_API_SECONDS = Histogram(
    "payrail_payout_api_duration_seconds",
    "POST /api/v1/payouts latency as the caller sees it, by HTTP status code.",
    ["code"],
    buckets=API_BUCKETS_S,
)
SETTLEMENT_SECONDS = Histogram(
    "payrail_payout_settlement_duration_seconds",
    "Reserve → final state of a payout, by final public status.",
    ["status"],
    buckets=SETTLEMENT_BUCKETS_S,
)
FAILURE_REASONS = ("none", "timeout", "no_route", "refused", "failed", "expired", "sandbox")

# ---------------------------------------------------------------- the Lightning node

NODE_CALLS = Counter(
    "payrail_node_calls_total",
    "Calls to the Lightning node by operation (pay | status) and outcome: success, failure "
    "(definite, e.g. no route), timeout (the node gave up: definite), ambiguous (our call "
    "timed out or broke: unknown), in_flight, not_found.",
    ["operation", "outcome"],
)
NODE_CALL_SECONDS = Histogram(
    "payrail_node_call_duration_seconds",
    "Lightning node call latency, by operation.",
    ["operation"],
    buckets=API_BUCKETS_S,
)

# ---------------------------------------------------------------- jobs and callbacks

JOB_FAILURES = Counter(
    "payrail_job_failures_total",
    "Job runs that raised and were rescheduled (or went dead), by job kind.",
    ["kind"],
)
CALLBACK_DELIVERIES = Counter(
    "payrail_callback_deliveries_total",
    "Callback delivery attempts by outcome (delivered | simulated | failed | gone).",
    ["outcome"],
)
CALLBACKS_DEAD = Counter(
    "payrail_callbacks_dead_total", "Callback deliveries that gave up (dead, replayable)."
)
CALLBACKS_DEFERRED_HOST_BUSY = Counter(
    "payrail_callbacks_deferred_host_busy_total",
    "Callbacks claimed while their destination host had no free slot, given back for later.",
)
CALLBACK_LAG_SECONDS = Histogram(
    "payrail_callback_delivery_lag_seconds",
    "Status change → callback delivered.",
    buckets=LAG_BUCKETS_S,
)

# ---------------------------------------------------------------- pay-ins
# Incremented by services/order_events.py (webhooks) and services/orders.py (transitions).
# Orders by status is a scrape-time gauge: see ops_metrics.

WEBHOOK_EVENTS_RECEIVED = Counter(
    "payrail_webhook_events_received_total",
    "Provider webhook requests, by provider and result (accepted | duplicate | bad_signature).",
    ["provider", "result"],
)
WEBHOOK_EVENTS_APPLIED = Counter(
    "payrail_webhook_events_applied_total",
    "Provider events processed by the job, by outcome (applied | ignored | illegal_transition).",
    ["provider", "outcome"],
)
WEBHOOK_EVENTS_RETRIED = Counter(
    "payrail_webhook_events_retried_total",
    "Provider events rescheduled, by reason (order_not_ready | error).",
    ["provider", "reason"],
)
WEBHOOK_LAG_SECONDS = Histogram(
    "payrail_webhook_processing_lag_seconds",
    "Webhook received → event applied.",
    ["provider"],
    buckets=LAG_BUCKETS_S,
)
# ---------------------------------------------------------------- deposits (money in)

DEPOSIT_TRANSITIONS = Counter(
    "payrail_deposit_transitions_total",
    "Deposit status changes, by from status (none: created) and to status.",
    ["from_status", "to_status"],
)
DEPOSIT_CREDITED_SATS = Counter(
    "payrail_deposit_credited_sats_total",
    "Sats credited to projects by completed deposits (each deposit once).",
)

ORDER_TRANSITIONS = Counter(
    "payrail_order_transitions_total",
    "Order state transitions, by from and to status (the order state machine's names).",
    ["from_status", "to_status"],
)

# ---------------------------------------------------------------- HTTP, flags, database

HTTP_REQUESTS = Counter(
    "payrail_http_requests_total",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "payrail_http_request_duration_seconds",
    "HTTP request latency by route template and method.",
    ["route", "method"],
    buckets=API_BUCKETS_S,
)
FLAG_CHANGES = Counter(
    "payrail_flag_changes_total",
    "Feature flag changes, by flag and source (api | cli | guard).",
    ["flag", "source"],
)
DB_LOCK_TIMEOUTS = Counter(
    "payrail_db_lock_timeouts_total",
    "Database errors that were lock waits running out (PostgreSQL lock_timeout, SQLite busy).",
)
AUTH_FAILURES = Counter(
    "payrail_auth_failures_total",
    "Failed authentications (a wrong API key, a wrong dashboard sign-in), by surface "
    "(api | dashboard).",
    ["surface"],
)
AUTH_THROTTLED = Counter(
    "payrail_auth_throttled_total",
    "Requests refused with 429 AUTH_THROTTLED after too many failed authentications, by "
    "surface (api | dashboard) and what was over its limit (address | key_prefix).",
    ["surface", "by"],
)

# ---------------------------------------------------------------- reconciliation

RECONCILIATION_DISCREPANCIES = Gauge(
    "payrail_reconciliation_discrepancies",
    "Discrepancies found by the last reconciliation, by kind (alert when > 0).",
    ["kind"],
    multiprocess_mode="mostrecent",
)
RECONCILIATION_RUNS = Counter(
    "payrail_reconciliation_runs_total", "Reconciliation runs, by result.", ["result"]
)
RECONCILIATION_LAST_RUN = Gauge(
    "payrail_reconciliation_last_run_timestamp_seconds",
    "When reconciliation last finished.",
    multiprocess_mode="max",
)
# Background sweeps (services/sweeps.py): one process per deployment runs each.
SWEEP_SECONDS = Histogram(
    "payrail_sweep_seconds",
    "Wall time of one background sweep run, by sweep (reconcile | retention | rollup).",
    ["sweep"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SWEEP_ROWS = Gauge(
    "payrail_sweep_rows",
    "Rows the last run of a sweep read or deleted: O(changes), not O(history).",
    ["sweep"],
    multiprocess_mode="mostrecent",
)
SWEEP_RUNS = Counter(
    "payrail_sweep_runs_total", "Background sweep runs, by sweep and result.", ["sweep", "result"]
)
DISCREPANCY_KINDS = (
    "charged-not-paid",
    "paid-not-charged",
    "double-resolution",
    "double-payment",
    "orphaned-charge",
    "imbalance",
    "overdraft",
    "balance-mismatch",
    "state-ledger-mismatch",
    "sent-while-reserved",
    "completed-not-charged",
    "deposit-paid-not-credited",
    "deposit-credited-not-paid",
)


def observe_many(child: Any, values: Iterable[float]) -> None:
    """Histogram.observe of each value, as one write per bucket touched and one to the sum.

    child: a labelled histogram (`HIST.labels(...)`). Observed one by one, a batch's 1,000
    payouts cost 2,000 writes per histogram (each an mmap update with a pid check when
    several processes share the metrics); this is a handful. Same samples as observe():
    a value goes to the first bucket whose upper bound is >= it (tests/test_observability.py).
    """
    counts: Tally[int] = Tally()
    total = 0.0
    bounds = child._upper_bounds
    for value in values:
        total += value
        counts[bisect_left(bounds, value)] += 1
    if not counts:
        return
    child._sum.inc(total)
    for index, count in counts.items():
        child._buckets[index].inc(count)


def reason_label(failure_reason: str | None, status: str) -> str:
    """A bounded label for why a payout ended: never free text from a node or a request."""
    if status == "expired":
        return "expired"
    if failure_reason is None:
        return "none"
    if failure_reason.startswith("set by the sandbox"):
        return "sandbox"
    reason = failure_reason.removeprefix("node: ")
    return reason if reason in FAILURE_REASONS else "failed"


def process_registry() -> CollectorRegistry:
    """The counters and histograms to expose: this process's, or all processes' samples."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY
