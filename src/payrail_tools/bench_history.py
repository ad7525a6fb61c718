"""`payrail bench --history N`: what a server costs when the database holds N payouts.

For a small N (10,000) and the N asked for, side by side, on PostgreSQL:

1. Fill: N payouts written in bulk SQL, exactly the rows the API writes for a finished payout
   (the payout, with a time-ordered id as support/ids.py makes it, its two pending transfers
   and their posts or voids, its audit events, the
   simulated node's record, its recipient lock, its settle job if younger than the jobs'
   retention), over 10 projects, spread over N / 100,000 days (a studio paying 100,000
   players a day), then the accounts' totals from the transfers. The first fill's rows go
   through the same migrations, indexes and triggers as the API's.
2. `payrail reconcile --full` in its own process: wall time, rate, peak memory (ru_maxrss).
3. The incremental reconciliation (what the server's periodic sweep runs): median wall time
   of three runs after a few payouts, in this process.
4. `payrail serve --workers W`: start-up time to the first 200 of /health; idle CPU of its
   processes over IDLE_S and the largest resident memory of one; /health p99 and max while
   idle (one probe every HEALTH_PROBE_S); single payout throughput (CLIENTS concurrent
   clients for PAYOUT_S); list latencies over HTTP; SIGTERM to exit.
5. The dashboard's reads (overview, payout list, gamertag search) timed in this process.

Figures are printed as a table and written as JSON (reports/bench-history.json).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from payrail.support.ids import time_ordered_uuid
from payrail_tools.bench import (
    _cores,
    _CpuSnapshot,
    _descendants,
    recreate_database,
    start_server,
    wait_healthy,
)

console = Console(stderr=True, soft_wrap=True)
PROJECTS = 10
PAYOUTS_PER_DAY = 100_000
FILL_CHUNK_ROWS = 50_000  # payouts per INSERT statement of the fill
IDLE_S = 60.0
HEALTH_PROBE_S = 0.1
PAYOUT_S = 10.0
CLIENTS = 10
LIST_REPEATS = 7
JOBS_KEPT_DAYS = 7  # the jobs' default retention: older settle jobs are pruned
REPORT_PATH = Path("reports") / "bench-history.json"

FILL_SQL = """
WITH g AS (
  SELECT n, ($8::text[])[n - $1 + 1] AS id,  -- made by support/ids.py, as the API makes them
         'bench_' || lpad((n % $3)::text, 2, '0') AS project_id,
         'player' || (n % 100000) AS gamertag,
         10 + (n * 7919) % 491 AS amount,
         $4::bigint - (($7::bigint - 1 - n) * $5::bigint) AS at,
         CASE WHEN n % 50 = 0 THEN 'failed' WHEN n % 97 = 0 THEN 'expired'
              ELSE 'completed' END AS state
    FROM generate_series($1::bigint, $2::bigint - 1) n
), p AS (
  INSERT INTO payouts (id, project_id, gamertag, amount, fee, request_hash, state,
                       failure_code, failure_reason, charge_posted, expires_in, expires_at,
                       created_at, updated_at, settled_at, settle_path, state_cause,
                       destination_kind, destination)
  SELECT id, project_id, gamertag, amount, greatest(1, amount / 50), md5(id), state,
         CASE state WHEN 'failed' THEN 'PAYMENT_FAILED' END,
         CASE state WHEN 'failed' THEN 'node: no_route' END,
         state = 'completed', 3600, at + 3600000, at, at + 40,
         CASE WHEN state <> 'expired' THEN at + 40 END, 'inline', 'node: ' || state,
         'gamertag', gamertag
    FROM g
  RETURNING id, project_id, gamertag, amount, fee, state, created_at
), t AS (
  INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, pending_id, kind,
                         timeout_at, created_at)
  SELECT p.id || ':' || leg.name
           || CASE WHEN step.kind = 'pending' THEN '' ELSE ':' || step.kind END,
         'project:' || p.project_id,
         CASE leg.name WHEN 'amount' THEN 'sys:lightning_outbound:' ELSE 'sys:fees:' END
           || lpad((abs(hashtext(p.id)) % 16)::text, 2, '0'),
         CASE leg.name WHEN 'amount' THEN p.amount ELSE p.fee END,
         CASE WHEN step.kind = 'pending' THEN NULL ELSE p.id || ':' || leg.name END,
         step.kind, NULL, p.created_at + step.offset_ms
    FROM p CROSS JOIN (VALUES ('amount'), ('fee')) AS leg(name)
    CROSS JOIN LATERAL (VALUES ('pending', 0),
                               (CASE WHEN p.state = 'completed' THEN 'post' ELSE 'void' END, 40))
      AS step(kind, offset_ms)
  RETURNING 1
), e AS (
  INSERT INTO payout_events (payout_id, from_status, to_status, cause, at_ms)
  SELECT p.id, 'reserved', 'in_flight', 'sent to node', p.created_at + 5 FROM p
  WHERE p.state <> 'expired'
  RETURNING 1
), s AS (
  INSERT INTO sim_node_payments (payment_id, destination, amount, status, failure_reason,
                                 settle_at, attempts, created_at, updated_at)
  SELECT p.id, p.gamertag, p.amount, CASE p.state WHEN 'completed' THEN 'succeeded'
         ELSE 'failed' END, CASE WHEN p.state = 'failed' THEN 'no_route' END, NULL, 1,
         p.created_at + 5, p.created_at + 40
    FROM p WHERE p.state <> 'expired'
  RETURNING 1
), j AS (
  INSERT INTO jobs (id, kind, payload, state, run_at, attempts, max_attempts, lease_until,
                    locked_by, last_error, created_at, updated_at)
  SELECT 'settle:' || p.id, 'settle_payout', json_build_object('payoutId', p.id)::text, 'done',
         p.created_at, 1, 10, NULL, NULL, NULL, p.created_at, p.created_at + 40
    FROM p WHERE p.created_at > $6::bigint
  RETURNING 1
)
SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM t), (SELECT count(*) FROM j)
"""

# The accounts' four totals from the transfers (every payout of the fill is resolved).
ACCOUNTS_SQL = """
WITH moves AS (
  SELECT debit_account_id AS id, amount AS dp, 0::bigint AS cp FROM transfers
   WHERE kind IN ('single', 'post')
  UNION ALL
  SELECT credit_account_id, 0, amount FROM transfers WHERE kind IN ('single', 'post')
), sums AS (SELECT id, sum(dp) AS dp, sum(cp) AS cp FROM moves GROUP BY id)
UPDATE accounts a SET debits_posted = s.dp, credits_posted = s.cp,
       debits_pending = 0, credits_pending = 0
  FROM sums s WHERE a.id = s.id
"""


@dataclass
class Sizes:
    per_table_mb: dict[str, float]
    total_mb: float


def _pg(url: str) -> str:
    return url.replace("postgresql://", "postgres://", 1)


async def fill(database_url: str, n: int, now_ms: int) -> float:
    """N finished payouts over PROJECTS projects, the newest two minutes old. Seconds taken."""
    from payrail.bootstrap import build_runtime
    from payrail.config import Settings
    from payrail.services import projects as project_service

    started = time.perf_counter()
    rt = build_runtime(Settings(database_url=database_url, run_worker=False))
    try:
        per_project = (n // PROJECTS + 1) * 600 + 10_000_000
        for i in range(PROJECTS):
            await project_service.create_project(rt, f"bench_{i:02d}", f"Bench {i}")
            await project_service.fund(rt, f"bench_{i:02d}", per_project)
    finally:
        await rt.aclose()
    days = max(n / PAYOUTS_PER_DAY, 1 / 24)
    step_ms = max(1, int(days * 86_400_000 / max(n, 1)))
    newest_ms = now_ms - 120_000
    jobs_after = now_ms - JOBS_KEPT_DAYS * 86_400_000
    conn = await asyncpg.connect(_pg(database_url))
    try:
        await conn.execute("SET statement_timeout = 0")
        done = 0
        for start in range(0, n, FILL_CHUNK_ROWS):
            end = min(n, start + FILL_CHUNK_ROWS)
            ids = [time_ordered_uuid(newest_ms - (n - 1 - i) * step_ms) for i in range(start, end)]
            await conn.fetchrow(
                FILL_SQL, start, end, PROJECTS, newest_ms, step_ms, jobs_after, n, ids
            )
            done = end
            rate = done / (time.perf_counter() - started)
            console.print(f"  fill: {done:,}/{n:,} payouts ({rate:,.0f}/s)")
        await conn.execute(ACCOUNTS_SQL)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def full_audit(database_url: str) -> dict[str, Any]:
    """`payrail reconcile --full` in a process of its own: wall, rate, peak memory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYRAIL_")}
    env["PAYRAIL_DATABASE_URL"] = database_url
    started = time.perf_counter()
    # Its output goes to files: a pipe nobody reads while it runs would fill and stop it.
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = REPORT_PATH.with_suffix(".full.out"), REPORT_PATH.with_suffix(".full.err")
    with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "payrail.entrypoints.cli.app", "reconcile", "--full"],
            env=env,
            stdout=out_file,
            stderr=err_file,
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    out = out_path.read_text(errors="replace")
    err = err_path.read_text(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    return {
        "exit": code,
        "wall_s": wall,
        "peak_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "last_line": (out.strip().splitlines() or [""])[-1][:200],
        "progress_lines": len([line for line in err.splitlines() if "reconcile --full" in line]),
    }


async def incremental_runs(database_url: str, runs: int = 3) -> dict[str, Any]:
    """The periodic reconciliation's wall time (median of `runs`), with a checkpoint present."""
    from payrail.bootstrap import build_runtime
    from payrail.config import Settings
    from payrail.services import reconcile

    rt = build_runtime(Settings(database_url=database_url, run_worker=False))
    walls, checked, clean = [], [], True
    try:
        for _ in range(runs):
            started = time.perf_counter()
            report = await reconcile.reconcile_incremental(rt)
            walls.append(time.perf_counter() - started)
            checked.append(report.payouts_checked)
            clean = clean and report.clean
    finally:
        await rt.aclose()
    return {"median_s": statistics.median(walls), "payouts_read": checked, "clean": clean}


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


async def idle(server: Any, seconds: float) -> dict[str, Any]:
    """CPU of the server's processes and /health latency while nobody else calls it."""
    before = _CpuSnapshot.take()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, trust_env=False) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await http.get("/health")
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(HEALTH_PROBE_S)
    after = _CpuSnapshot.take()
    pids = _descendants(after, server.process.pid)
    python = {p for p in pids if after.processes[p].comm.startswith("python")}
    return {
        "cores": _cores(before, after, pids),
        "rss_mb_max": max((_rss_mb(p) for p in python), default=math.nan),
        "processes": len(python),
        "health_p99_ms": _pct(latencies, 0.99),
        "health_max_ms": max(latencies, default=math.nan),
        "health_probes": len(latencies),
    }


async def payouts_rate(server: Any, seconds: float, clients: int) -> dict[str, Any]:
    """Single POST /payouts from `clients` concurrent clients on one funded project."""
    admin = {"apikey": server.admin_key}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, trust_env=False) as http:
        created = await http.post(
            "/api/v1/projects", json={"id": "bench_rate", "name": "rate"}, headers=admin
        )
        key = created.json()["data"]["apiKey"]
        await http.post(
            "/api/v1/projects/bench_rate/fund", json={"amount": 50_000_000}, headers=admin
        )
        counts = {"ok": 0, "other": 0}
        deadline = time.monotonic() + seconds

        async def client(c: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                body = {"gamertag": f"rate{c}_{n}", "amount": 100, "projectId": "bench_rate"}
                answer = await http.post("/api/v1/payouts", json=body, headers={"apikey": key})
                counts["ok" if answer.status_code in (200, 201) else "other"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - started
    return {"per_s": counts["ok"] / wall, "refused": counts["other"]}


async def _timed(call: Any, repeats: int = LIST_REPEATS) -> float:
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        walls.append((time.perf_counter() - started) * 1000)
    return statistics.median(walls)


async def list_latencies(server: Any) -> dict[str, float]:
    """Median ms of each list over HTTP (admin key: across projects)."""
    admin = {"apikey": server.admin_key}
    found: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, trust_env=False) as http:

        async def get(path: str, **params: Any) -> dict[str, Any]:
            answer = await http.get(f"/api/v1{path}", params=params, headers=admin)
            assert answer.status_code == 200, answer.text
            return answer.json()["data"]

        found["GET /payouts (all projects)"] = await _timed(lambda: get("/payouts", limit=50))
        found["GET /payouts?status=error (all)"] = await _timed(
            lambda: get("/payouts", status="error", limit=50)
        )
        found["GET /payouts?projectId= (one project)"] = await _timed(
            lambda: get("/payouts", projectId="bench_03", limit=50)
        )
        # A deep page: the 50th page's cursor, then that page timed.
        cursor = None
        for _ in range(50):
            cursor = (await get("/payouts", limit=100, **({"cursor": cursor} if cursor else {})))[
                "nextCursor"
            ]
        found["GET /payouts, 50th page of 100"] = await _timed(
            lambda: get("/payouts", limit=100, cursor=cursor)
        )
    return found


async def dashboard_latencies(database_url: str) -> dict[str, float]:
    """Median ms of the dashboard's reads, as its pages call them."""
    from payrail.bootstrap import build_runtime
    from payrail.config import Settings
    from payrail.services.dashboard import pages

    rt = build_runtime(Settings(database_url=database_url, run_worker=False))
    found: dict[str, float] = {}
    try:
        every = pages.ListFilter(None)
        found["dashboard: all payouts"] = await _timed(lambda: pages.payout_page(rt, every, None))
        search = pages.ListFilter(None, (), "gamertag", "Player4242")
        found["dashboard: gamertag search (all projects)"] = await _timed(
            lambda: pages.payout_page(rt, search, None)
        )
        for window in ("1h", "24h", "7d"):
            found[f"dashboard: overview {window}"] = await _timed(
                lambda w=window: pages.overview(rt, "bench_03", w)
            )
    finally:
        await rt.aclose()
    return found


def stop(server: Any) -> float:
    started = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(180)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    server.log.close()
    return time.perf_counter() - started


async def sizes(database_url: str) -> Sizes:
    conn = await asyncpg.connect(_pg(database_url))
    try:
        rows = await conn.fetch(
            "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables ORDER BY 2 DESC"
        )
        total = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return Sizes({r[0]: r[1] / 1e6 for r in rows if r[1] > 1e6}, total / 1e6)


async def measure(database_url: str, n: int, workers: int, idle_s: float) -> dict[str, Any]:
    from payrail.db.migrate import upgrade

    console.print(f"[bold]history {n:,}[/bold]: database {database_url}")
    await recreate_database(database_url)
    upgrade(database_url)
    out: dict[str, Any] = {"n": n}
    out["fill_s"] = await fill(database_url, n, int(time.time() * 1000))
    size = await sizes(database_url)
    out["db_mb"] = size.total_mb
    out["tables_mb"] = size.per_table_mb
    console.print("  reconcile --full …")
    out["full"] = full_audit(database_url)
    out["full"]["rate_per_s"] = n / out["full"]["wall_s"]
    console.print(f"  {out['full']}")
    console.print("  server …")
    started = time.perf_counter()
    server = start_server(database_url, workers)
    try:
        await wait_healthy(server)
        out["start_s"] = time.perf_counter() - started
        await asyncio.sleep(5)  # the first sweeps
        out["idle"] = await idle(server, idle_s)
        console.print(f"  idle: {out['idle']}")
        out["payouts"] = await payouts_rate(server, PAYOUT_S, CLIENTS)
        console.print(f"  payouts: {out['payouts']}")
        out["lists"] = await list_latencies(server)
    finally:
        out["stop_s"] = stop(server)
    out["incremental"] = await incremental_runs(database_url)
    out["dashboard"] = await dashboard_latencies(database_url)
    console.print(f"  done: {out['incremental']} {out['dashboard']}")
    return out


def _row(label: str, values: list[str], target: str) -> list[str]:
    return [label, *values, target]


def print_table(results: list[dict[str, Any]]) -> None:
    table = Table(title="payrail bench --history", show_lines=False)
    table.add_column("")
    for r in results:
        table.add_column(f"{r['n']:,} payouts", justify="right")
    table.add_column("target", justify="left")

    def each(get: Any, fmt: str) -> list[str]:
        return [format(get(r), fmt) for r in results]

    rows = [
        _row("fill (bulk SQL), s", each(lambda r: r["fill_s"], ".0f"), ""),
        _row(
            "single payout, /s (10 clients)",
            each(lambda r: r["payouts"]["per_s"], ".0f"),
            "within 10 %",
        ),
        _row("idle server CPU, cores", each(lambda r: r["idle"]["cores"], ".3f"), "≤ 0.05"),
        _row("RSS per server process, MB", each(lambda r: r["idle"]["rss_mb_max"], ".0f"), "≤ 300"),
        _row("/health p99 idle, ms", each(lambda r: r["idle"]["health_p99_ms"], ".1f"), "≤ 20"),
        _row("/health max idle, ms", each(lambda r: r["idle"]["health_max_ms"], ".1f"), ""),
        _row(
            "periodic reconcile run, s",
            each(lambda r: r["incremental"]["median_s"], ".3f"),
            "≤ 1",
        ),
        _row("reconcile --full, s", each(lambda r: r["full"]["wall_s"], ".1f"), ""),
        _row(
            "reconcile --full, payouts/s", each(lambda r: r["full"]["rate_per_s"], ",.0f"), "stated"
        ),
        _row("reconcile --full, peak MB", each(lambda r: r["full"]["peak_mb"], ".0f"), "≤ 500"),
        _row("start to /health 200, s", each(lambda r: r["start_s"], ".1f"), "bounded"),
        _row("SIGTERM to exit, s", each(lambda r: r["stop_s"], ".1f"), "bounded"),
    ]
    for key in results[0]["lists"]:
        rows.append(_row(f"{key}, ms", each(lambda r, k=key: r["lists"][k], ".1f"), "≤ 50"))
    for key in results[0]["dashboard"]:
        rows.append(_row(f"{key}, ms", each(lambda r, k=key: r["dashboard"][k], ".1f"), "≤ 50"))
    rows.append(
        _row("database size, MB", each(lambda r: r["db_mb"], ",.0f"), ""),
    )
    rows.append(
        _row("database per payout, KB", each(lambda r: r["db_mb"] * 1000 / r["n"], ".2f"), "")
    )
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def run_history(database_url: str, sizes_: list[int], workers: int, idle_s: float) -> int:
    results = []
    for n in sizes_:
        url = database_url.rsplit("/", 1)[0] + f"/{database_url.rsplit('/', 1)[1]}_{n}"
        results.append(asyncio.run(measure(url, n, workers, idle_s)))
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    console.print(f"report: {REPORT_PATH}")
    return 0
