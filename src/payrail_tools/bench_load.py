"""The load generator of `payrail bench`, run as its own process:
`python -m payrail_tools.bench_load`.

Why a separate process: on a small machine the generator competes with the server and
PostgreSQL for the same cores. In its own process it never shares an event loop with the
orchestrator, and its CPU time (getrusage) can be reported next to the figures it produced,
so a reader can tell a slow server from a saturated generator.

Protocol: one JSON object (LoadSpec) on stdin. Stdout carries JSON lines: `window_start` and
`window_end` events (so the parent can sample other processes' CPU over the same window),
then one `result` line.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

PAYOUTS_PATH = "/api/v1/payouts"
BATCH_PATH = "/api/v1/payouts/batch"
REQUEST_TIMEOUT_S = 30.0  # far above the server's settle wait (5 s): a timeout is a real stall
STATUS_CREATED = 201
STATUS_ACCEPTED = 202  # pending: may still be charged later, so the invariant cannot count it


@dataclass(frozen=True)
class ClientSpec:
    project_id: str
    api_key: str


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    run_tag: str  # makes gamertags and idempotency keys unique to this level of this run
    duration_s: float
    warmup_s: float
    amount_min_sats: int
    amount_max_sats: int
    seed: int
    clients: list[ClientSpec]
    batch_items: int = 0  # > 0: each request is POST /payouts/batch with this many items

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LoadSpec:
        clients = [ClientSpec(**c) for c in raw.pop("clients")]
        return cls(clients=clients, **raw)


@dataclass
class LoadResult:
    """What one level measured. Latencies and statuses cover requests issued in the window;
    charges and unsettled answers cover the whole run (warm-up and tail too), because the
    balance invariant is about every sat the server took."""

    clients: int
    duration_s: float
    requests: int = 0
    created: int = 0
    payouts_per_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    charged_sats_by_project: dict[str, int] = field(default_factory=dict)
    created_total: int = 0
    requests_total: int = 0
    unsettled_answers: int = 0  # 202s, 5xx and transport errors: the charge is not known here
    cpu_window_s: float = 0.0
    cpu_total_s: float = 0.0
    wall_total_s: float = 0.0


@dataclass
class _Tally:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    charged_sats_by_project: Counter[str] = field(default_factory=Counter)
    created_total: int = 0
    requests_total: int = 0
    unsettled_answers: int = 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed, never an interpolation."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def _client(
    index: int,
    spec: LoadSpec,
    client: ClientSpec,
    window_start: float,
    window_end: float,
    tally: _Tally,
) -> None:
    """One user: one keep-alive connection, one request at a time, a fresh gamertag each time
    (the rate limit is 10 payouts per gamertag per hour)."""
    rng = random.Random(spec.seed * 100_003 + index)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(
        base_url=spec.base_url,
        headers={"apikey": client.api_key},
        limits=limits,
        timeout=REQUEST_TIMEOUT_S,
        trust_env=False,  # a proxy from the environment must never sit between us and 127.0.0.1
    ) as http:
        n = 0
        while (started := time.perf_counter()) < window_end:
            n += 1
            if spec.batch_items:
                await _batch(http, spec, client, index, n, rng, started >= window_start, tally)
                continue
            body = {
                "projectId": client.project_id,
                "gamertag": f"{spec.run_tag}c{index}g{n}",
                "amount": rng.randint(spec.amount_min_sats, spec.amount_max_sats),
                "idempotencyKey": f"bench-{spec.run_tag}-c{index}-{n}",
            }
            try:
                response = await http.post(PAYOUTS_PATH, json=body)
                status = str(response.status_code)
                if response.status_code == STATUS_CREATED:
                    total_cost = response.json()["data"]["totalCost"]
                    tally.charged_sats_by_project[client.project_id] += total_cost
                    tally.created_total += 1
                elif response.status_code == STATUS_ACCEPTED or response.status_code >= 500:
                    tally.unsettled_answers += 1
            except httpx.HTTPError as exc:
                status = f"transport:{type(exc).__name__}"
                tally.unsettled_answers += 1
            tally.requests_total += 1
            if started >= window_start:
                tally.latencies_s.append(time.perf_counter() - started)
                tally.statuses[status] += 1


async def _batch(
    http: httpx.AsyncClient,
    spec: LoadSpec,
    client: ClientSpec,
    index: int,
    n: int,
    rng: random.Random,
    in_window: bool,
    tally: _Tally,
) -> None:
    """One batch request; every item is tallied as a single payout's answer would be."""
    items = [
        {
            "gamertag": f"{spec.run_tag}c{index}b{n}i{i}",
            "amount": rng.randint(spec.amount_min_sats, spec.amount_max_sats),
        }
        for i in range(spec.batch_items)
    ]
    started = time.perf_counter()
    statuses: list[str] = []
    try:
        response = await http.post(
            BATCH_PATH,
            json={"projectId": client.project_id, "items": items},
            headers={"idempotency-key": f"bench-{spec.run_tag}-c{index}-b{n}"},
        )
        if response.status_code != 200:
            statuses = [str(response.status_code)] * len(items)
            tally.unsettled_answers += len(items) if response.status_code >= 500 else 0
        for item in response.json()["data"]["items"] if response.status_code == 200 else []:
            status = item["httpStatus"]
            statuses.append(str(status))
            if status == STATUS_CREATED:
                tally.charged_sats_by_project[client.project_id] += item["data"]["totalCost"]
                tally.created_total += 1
            elif status == STATUS_ACCEPTED or status >= 500:
                tally.unsettled_answers += 1
    except httpx.HTTPError as exc:
        statuses = [f"transport:{type(exc).__name__}"] * len(items)
        tally.unsettled_answers += len(items)
    tally.requests_total += 1
    if in_window:
        tally.latencies_s.append(time.perf_counter() - started)
        tally.statuses.update(statuses)


async def run_load(spec: LoadSpec) -> LoadResult:
    """Warm up, measure for duration_s, then let in-flight requests finish (never cancel one:
    a cancelled request could be charged without the generator seeing the charge)."""
    tally = _Tally()
    begin = time.perf_counter()
    cpu_begin = _cpu_s()
    window_start = begin + spec.warmup_s
    window_end = window_start + spec.duration_s
    tasks = [
        asyncio.create_task(_client(i, spec, c, window_start, window_end, tally))
        for i, c in enumerate(spec.clients)
    ]
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
    cpu_start = _cpu_s()
    _emit("window_start")
    await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
    cpu_end = _cpu_s()
    _emit("window_end")
    await asyncio.gather(*tasks)
    latencies = sorted(tally.latencies_s)
    created = tally.statuses.get(str(STATUS_CREATED), 0)
    wall_total_s = time.perf_counter() - begin
    # A batch can straddle the window's edges, so batches count every payout over all the
    # time they took (warm-up and tail included): no edge inflates the figure.
    per_s = tally.created_total / wall_total_s if spec.batch_items else created / spec.duration_s
    return LoadResult(
        clients=len(spec.clients),
        duration_s=spec.duration_s,
        requests=len(latencies),
        created=created,
        payouts_per_s=per_s,
        statuses=dict(tally.statuses),
        latency_ms={
            "p50": _percentile(latencies, 50) * 1000,
            "p95": _percentile(latencies, 95) * 1000,
            "p99": _percentile(latencies, 99) * 1000,
            "max": (latencies[-1] * 1000) if latencies else math.nan,
            "mean": (sum(latencies) / len(latencies) * 1000) if latencies else math.nan,
        },
        charged_sats_by_project=dict(tally.charged_sats_by_project),
        created_total=tally.created_total,
        requests_total=tally.requests_total,
        unsettled_answers=tally.unsettled_answers,
        cpu_window_s=cpu_end - cpu_start,
        cpu_total_s=_cpu_s() - cpu_begin,
        wall_total_s=wall_total_s,
    )


def main() -> None:
    spec = LoadSpec.from_dict(json.loads(sys.stdin.read()))
    result = asyncio.run(run_load(spec))
    _emit("result", **asdict(result))


if __name__ == "__main__":
    main()
