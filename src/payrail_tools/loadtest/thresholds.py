"""k6-style thresholds: `p95<500`, `payout_success_rate>0.7`, `balance_rollback_failures==0`.

A threshold is `METRIC OP NUMBER[ms|s]`. Latency metrics are in milliseconds; `s` converts.
Thresholds given on the command line replace a scenario's defaults for the same metric and
add to the others, so `--threshold p95<800` loosens one default without dropping the rest.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

LATENCY_METRICS = {
    "p50": "median POST /payouts latency (ms)",
    "p90": "90th percentile POST /payouts latency (ms)",
    "p95": "95th percentile POST /payouts latency (ms)",
    "p99": "99th percentile POST /payouts latency (ms)",
    "max": "slowest POST /payouts (ms)",
    "avg": "mean POST /payouts latency (ms)",
}

# Every metric a threshold may name. A scenario that does not measure one reports "no data",
# which fails the threshold: a check that silently measures nothing would pass forever.
METRICS: dict[str, str] = {
    **LATENCY_METRICS,
    "payouts": "POST /payouts requests answered",
    "payouts_per_s": "POST /payouts answered per second of load",
    "payout_success_rate": "share of POST /payouts answered 200/201/202 with a payout not in error",
    "server_errors": "5xx answers that are not the API's designed 502/504, plus transport errors",
    "transport_errors": "requests that got no HTTP answer (refused, reset, client timeout)",
    "timeout_errors": "504 GATEWAY_TIMEOUT answers (injected node timeouts)",
    "payment_failures": "502 PAYMENT_FAILED answers",
    "rate_limited": "429 RATE_LIMIT_EXCEEDED answers",
    "insufficient_balance": "402 INSUFFICIENT_BALANCE answers",
    "client_errors": "other 4xx answers",
    "balance_rollback_failures": "a 504/502 whose charge stayed (balance moved, or the answer "
    "says balanceRolledBack: false)",
    "balance_checks_failed": "per-request balance checks that did not move by exactly what the "
    "answer implies",
    "ledger_mismatches": "projects whose server balance differs from the client-side ledger",
    "unresolved_payouts": "payouts still pending after the settle wait",
    "unseen_payouts": "payouts the server holds for our projects that no answer showed us",
    "reconciliation_discrepancies": "discrepancies from GET /admin/reconciliation on our data",
    "duplicate_payouts": "idempotency keys that produced more than one payout",
    "rate_limit_violations": "gamertags whose success count or 429 answers broke the limit",
    "expired_in_flight": "payouts that expired although they had been sent to the node",
    "expire_checks_failed": "POST /test/expire answers other than the one the state implies",
    "callbacks_missing": "payout status changes with no callback received",
    "signature_failures": "callbacks whose Payrail-Signature did not verify",
    "task_errors": "exceptions inside the harness's own Locust tasks",
}

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_EXPR = re.compile(
    r"^\s*(?P<metric>[a-z_][a-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s)?\s*$"
)


class ThresholdError(ValueError):
    """An expression that is not `METRIC OP NUMBER`; the message lists what is accepted."""


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: str
    value: float
    source: str = "default"  # default | cli

    @property
    def text(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"{self.metric}{self.op}{value}"

    def holds(self, actual: float) -> bool:
        return OPS[self.op](actual, self.value)


@dataclass(frozen=True)
class Result:
    threshold: Threshold
    actual: float | None
    passed: bool

    @property
    def line(self) -> str:
        shown = "no data" if self.actual is None else _fmt(self.actual)
        verdict = "ok" if self.passed else "VIOLATED"
        return f"threshold {self.threshold.text}: {verdict} (actual {shown})"


def _fmt(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def parse(expr: str, source: str = "cli") -> Threshold:
    match = _EXPR.match(expr)
    if match is None:
        raise ThresholdError(
            f"threshold {expr!r} is not METRIC OP NUMBER (ops: {' '.join(OPS)}), "
            "e.g. p95<500 or payout_success_rate>0.7"
        )
    metric, op, unit = match["metric"], match["op"], match["unit"]
    if metric not in METRICS:
        raise ThresholdError(
            f"threshold {expr!r}: unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}"
        )
    value = float(match["value"])
    if unit is not None:
        if metric not in LATENCY_METRICS:
            raise ThresholdError(f"threshold {expr!r}: only latency metrics take a unit")
        value = value * 1000 if unit == "s" else value
    return Threshold(metric, op, value, source)


def merge(defaults: Iterable[str], overrides: Iterable[str]) -> list[Threshold]:
    """Defaults, except those on a metric the command line sets; then the command line's."""
    given = [parse(e, "cli") for e in overrides]
    replaced = {t.metric for t in given}
    kept = [t for t in (parse(e, "default") for e in defaults) if t.metric not in replaced]
    return kept + given


def evaluate(thresholds: Iterable[Threshold], metrics: Mapping[str, float | None]) -> list[Result]:
    results = []
    for t in thresholds:
        actual = metrics.get(t.metric)
        if actual is None or (isinstance(actual, float) and math.isnan(actual)):
            results.append(Result(t, None, False))
        else:
            results.append(Result(t, float(actual), t.holds(float(actual))))
    return results
