"""Prometheus metrics. Names follow Prometheus conventions; labels are bounded (no ids)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILIATION_DISCREPANCIES = Gauge(
    "payrail_reconciliation_discrepancies",
    "Discrepancies found by the last reconciliation, by kind (alert when > 0).",
    ["kind"],
)
RECONCILIATION_RUNS = Counter(
    "payrail_reconciliation_runs_total", "Reconciliation runs, by result.", ["result"]
)
RECONCILIATION_LAST_RUN = Gauge(
    "payrail_reconciliation_last_run_timestamp_seconds", "When reconciliation last finished."
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
)
