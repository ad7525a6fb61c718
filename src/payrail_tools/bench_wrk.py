"""`payrail bench`'s single-payout levels driven by wrk (scripts/bench/bench_payouts.lua).

Why wrk: the Python generator (bench_load.py) took 0.5-0.7 of this 2-core machine's cores at
50 clients, so its figures were partly its own limit (477 payouts/s where wrk measured 1,211
against the same build). wrk is C with a Lua script per request and costs a fraction of that;
its CPU is reported beside the figures (`loadgen` cores), so a reader can still tell.

The script reads each 201's projectId and totalCost from the answer, so what every project
was charged is known to the client, as with the Python generator, and checked against the
server's balances afterwards. wrk stops mid-flight: the requests unanswered at the cut are
sent again with their own keys (a client's retry), so what they charged is seen as well. A
warm-up run (its charges counted too) precedes the measured
one; CPU is sampled around the measured run only.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from payrail_tools.bench_load import LoadSpec

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "bench_payouts.lua"
RESULT_PREFIX = "wrk-result "
PENDING_PREFIX = "wrk-pending "
CHARGED_STATUSES = (200, 201)  # 200: the replay of a payout made before the cut
TIMEOUT_S = 30  # per request, as the Python generator's: a timeout is a real stall
THREADS_MAX = 2
RUN_MARGIN_S = 60.0
STATUS_CREATED = "201"


class WrkMissing(Exception):
    """wrk is not installed: `make bench` installs it (scripts/install-wrk.sh)."""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing("wrk is not installed: run `make bench` (scripts/install-wrk.sh)")
    return found


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(spec: LoadSpec, seconds: float, tag: str) -> tuple[dict[str, Any], float]:
    """One wrk run against spec.base_url; its parsed result line and the CPU seconds wrk used."""
    connections = len(spec.clients)
    env = {
        "PROJECTS": ",".join(f"{c.project_id}={c.api_key}" for c in spec.clients),
        "AMOUNT_MIN": str(spec.amount_min_sats),
        "AMOUNT_MAX": str(spec.amount_max_sats),
        "RUN_TAG": f"{spec.run_tag}{tag}",
        "SEED": str(spec.seed),
        "PATH": "/usr/bin:/bin",
    }
    command = [
        wrk_binary(),
        f"-t{min(THREADS_MAX, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={TIMEOUT_S}s",
        "-s",
        str(SCRIPT),
        spec.base_url,
    ]
    cpu_before = _children_cpu_s()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + RUN_MARGIN_S
    )
    cpu_s = _children_cpu_s() - cpu_before
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:] or done.stdout}")
    result = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    result["charged"] = dict(Counter(result["charged"]) + _resend_pending(spec, done.stdout))
    return result, cpu_s


def _resend_pending(spec: LoadSpec, stdout: str) -> Counter[str]:
    """What the requests in flight at wrk's cut charged: each sent again, same key and body."""
    charged: Counter[str] = Counter()
    pending = [line for line in stdout.splitlines() if line.startswith(PENDING_PREFIX)]
    with httpx.Client(base_url=spec.base_url, timeout=TIMEOUT_S, trust_env=False) as http:
        for line in pending:
            key, project_id, api_key, body = line.removeprefix(PENDING_PREFIX).split("\t", 3)
            answer = http.post(
                "/api/v1/payouts",
                content=body,
                headers={
                    "apikey": api_key,
                    "idempotency-key": key,
                    "content-type": "application/json",
                },
            )
            if answer.status_code in CHARGED_STATUSES:
                charged[project_id] += answer.json()["data"]["totalCost"]
    return charged


def merge(warmup: dict[str, Any], measured: dict[str, Any], cpu_s: float) -> dict[str, Any]:
    """The shape bench.py reads from the Python generator's result line."""
    statuses = {str(k): int(v) for k, v in measured["statuses"].items()}
    charged: Counter[str] = Counter()
    for run in (warmup, measured):
        charged.update({k: int(v) for k, v in run["charged"].items()})
    everything: Counter[str] = Counter(warmup["statuses"]) + Counter(measured["statuses"])
    not_final = sum(n for s, n in everything.items() if s != STATUS_CREATED)
    not_final += warmup["socket_errors"] + measured["socket_errors"]
    return {
        "requests": measured["requests"],
        "created": measured["created"],
        "payouts_per_s": measured["created"] / measured["duration_s"],
        "statuses": statuses,
        "latency_ms": {
            "p50": measured["p50_ms"],
            "p95": measured["p95_ms"],
            "p99": measured["p99_ms"],
        },
        "charged_sats_by_project": dict(charged),
        "created_total": warmup["created"] + measured["created"],
        "unsettled_answers": not_final,
        "cpu_window_s": cpu_s,
    }
