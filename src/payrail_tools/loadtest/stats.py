"""What the harness measured: one sample per request, classified by what the answer means.

Locust keeps its own statistics too (they go into the report as a cross-check), but the
verdicts use these samples, because an answer's meaning depends on its body: a 504 with
`GATEWAY_TIMEOUT` is the API doing its job under injected faults, a bare 500 is a bug.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BUCKETS_MAX = 150  # points per time series in the report: enough detail, a small HTML file

# outcome → (label, designed by the API?)
OUTCOMES: dict[str, str] = {
    "completed": "201 completed",
    "pending": "202 pending",
    "replay": "200 replay",
    "timeout": "504 timeout",
    "payment_failed": "502 payment failed",
    "rate_limited": "429 rate limited",
    "insufficient_balance": "402 insufficient",
    "idempotency_conflict": "422 key reused",
    "client_error": "other 4xx",
    "server_error": "other 5xx",
    "transport_error": "no answer",
}
SUCCESS_OUTCOMES = frozenset({"completed", "pending", "replay"})


def classify(status: int, body: Any) -> str:
    """The meaning of one POST /payouts answer (or any answer: non-payout codes map the same)."""
    data = body.get("data") if isinstance(body, dict) else None
    error = data.get("error") if isinstance(data, dict) else None
    if status == 0:
        return "transport_error"
    if status == 201:
        return "completed"
    if status == 202:
        return "pending"
    if 200 <= status < 300:
        return "replay"
    if status == 504 and error == "GATEWAY_TIMEOUT":
        return "timeout"
    if status == 502 and error == "PAYMENT_FAILED":
        return "payment_failed"
    if status == 429:
        return "rate_limited"
    if status == 402:
        return "insufficient_balance"
    if status == 422:
        return "idempotency_conflict"
    if 400 <= status < 500:
        return "client_error"
    return "server_error"


def payout_ok(outcome: str, body: Any) -> bool:
    """Accepted or paid: 201, 202, or a 200 replay of a payout that is not in error."""
    if outcome not in SUCCESS_OUTCOMES:
        return False
    data = body.get("data") if isinstance(body, dict) else None
    return not (isinstance(data, dict) and data.get("status") == "error")


@dataclass(frozen=True)
class Sample:
    t_s: float  # when the answer arrived, seconds since the recorder started
    op: str  # payout | balance | expire | get | …
    status: int
    outcome: str
    latency_ms: float
    ok: bool


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low))


@dataclass
class Recorder:
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    users: list[tuple[float, int]] = field(default_factory=list)
    # (t, server Σ balance, client-ledger Σ expected, server Σ reserved)
    balances: list[tuple[float, int, int, int]] = field(default_factory=list)
    load_started_s: float | None = None
    load_ended_s: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, op: str, status: int, outcome: str, latency_ms: float, ok: bool = True) -> None:
        self.samples.append(Sample(self.now(), op, status, outcome, latency_ms, ok))

    def payouts(self) -> list[Sample]:
        return [s for s in self.samples if s.op == "payout"]

    def load_duration_s(self) -> float:
        if self.load_started_s is None:
            return 0.0
        end = self.load_ended_s if self.load_ended_s is not None else self.now()
        return max(end - self.load_started_s, 1e-9)

    def summary(self) -> dict[str, float]:
        payouts = self.payouts()
        latencies = sorted(s.latency_ms for s in payouts)
        outcomes = Counter(s.outcome for s in payouts)
        every = Counter(s.outcome for s in self.samples)
        duration = self.load_duration_s()
        return {
            "requests": len(self.samples),
            "payouts": len(payouts),
            "payouts_per_s": len(payouts) / duration if duration else 0.0,
            "load_duration_s": duration,
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else math.nan,
            "avg": sum(latencies) / len(latencies) if latencies else math.nan,
            "payout_success_rate": (
                sum(s.ok for s in payouts) / len(payouts) if payouts else math.nan
            ),
            "timeout_errors": outcomes["timeout"],
            "payment_failures": outcomes["payment_failed"],
            "rate_limited": outcomes["rate_limited"],
            "insufficient_balance": outcomes["insufficient_balance"],
            "client_errors": outcomes["client_error"],
            "transport_errors": every["transport_error"],
            "server_errors": every["server_error"] + every["transport_error"],
        }

    def outcome_counts(self) -> dict[str, int]:
        counts = Counter(s.outcome for s in self.payouts())
        return {k: counts[k] for k in OUTCOMES if counts[k]}

    def timeseries(self) -> dict[str, Any]:
        """Per-bucket payout latency percentiles, throughput by outcome, and users."""
        payouts = self.payouts()
        end = max([s.t_s for s in self.samples] + [t for t, _ in self.users] + [1.0])
        bucket_s = max(1, math.ceil(end / BUCKETS_MAX))
        count = int(end // bucket_s) + 1
        latencies: list[list[float]] = [[] for _ in range(count)]
        by_outcome: dict[str, list[int]] = {k: [0] * count for k in OUTCOMES}
        for s in payouts:
            i = min(int(s.t_s // bucket_s), count - 1)
            latencies[i].append(s.latency_ms)
            by_outcome[s.outcome][i] += 1
        sampled: list[int | None] = [None] * count
        for t, n in self.users:
            i = min(int(t // bucket_s), count - 1)
            sampled[i] = max(sampled[i] or 0, n)
        users, last = [], 0
        for i, n in enumerate(sampled):  # a bucket with no sample keeps the last count
            last = n if n is not None else (last if self._load_running(i * bucket_s) else 0)
            users.append(last)
        series: dict[str, Any] = {"bucket_s": bucket_s, "t": [i * bucket_s for i in range(count)]}
        for q in (50, 95, 99):
            series[f"p{q}"] = [percentile(sorted(v), q) if v else None for v in latencies]
        series["per_s"] = {k: [n / bucket_s for n in v] for k, v in by_outcome.items() if any(v)}
        series["users"] = users
        series["balances"] = [list(b) for b in self.balances]
        return series

    def _load_running(self, t: float) -> bool:
        start, end = self.load_started_s, self.load_ended_s
        return start is not None and start <= t and (end is None or t <= end)
