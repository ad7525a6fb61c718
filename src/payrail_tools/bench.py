"""`payrail bench`: payout throughput on PostgreSQL, measured against pgbench on the same database.

Single POST /payouts at each concurrency level, then POST /payouts/batch (1,000 items, 2
clients), with commits and rows per payout from pg_stat_database; before the server starts,
bench_costs counts statements, commits and rows of one payout at a time and of one batch.

Why this shape:

- A real server (`payrail serve --workers N`) in a subprocess, driven over HTTP, so the figure
  includes everything a client pays for: HTTP, auth, JSON, the saga's transactions.
- The load generator runs in its own process (payrail_tools.bench_load) and reports its CPU time;
  on a 2-core machine it competes with the server and PostgreSQL, and a reader must see that.
- pgbench TPC-B on the same PostgreSQL gives the yardstick: payouts/s alone says little until
  it is set against what this database does for a simple write transaction on this machine.
- Throughput is worthless if money is wrong, so every run ends with the invariants: what
  clients saw charged equals what left each project, and `reconcile` is clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from payrail.domain.money import total_cost_sats
from payrail_tools import bench_costs, bench_wrk
from payrail_tools.bench_load import ClientSpec, LoadSpec
from payrail_tools.loadtest import pgadmin
from payrail_tools.loadtest.guard import TargetRefused

console = Console(stderr=True, soft_wrap=True)  # progress lines stay whole in a log
TABLE_WIDTH_MIN = 150  # piped output defaults to 80 columns, too few for the table

WARMUP_S = 2.0
AMOUNT_MIN_SATS = 10
AMOUNT_MAX_SATS = 500
# Funding headroom: one keep-alive client cannot exceed this rate, so no run ends in 402s.
CLIENT_REQUESTS_PER_S_MAX = 1_000
FUNDING_MARGIN_S = 5.0
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 15.0
HEALTH_POLL_S = 0.2
SETTLE_TIMEOUT_S = 30.0  # after the runs: every reservation must be resolved by then
SETTLE_POLL_S = 0.5
LOAD_TIMEOUT_MARGIN_S = 120.0  # a generator past duration + warm-up + this is stuck
LOAD_LINE_MAX_BYTES = 1 << 20  # the generator's result line
PGBENCH_SCALE = 10
PGBENCH_CLIENTS = 10
PGBENCH_THREADS = 2
PGBENCH_INIT_TIMEOUT_S = 300.0
PGBENCH_SAMPLE_EDGE_S = 0.5  # CPU is sampled this far inside the run: connect and exit excluded
PGBENCH_TPS_RE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
REPORT_PATH = Path("reports") / "bench.json"
BATCH_FUND_FACTOR = 10  # a batch client asks for many payouts per request
SERVER_LOG_PATH = Path("reports") / "bench-server.log"
SERVER_LOG_TAIL_LINES = 30
API = "/api/v1"

EXIT_OK = 0
EXIT_INVARIANT_FAILED = 1
EXIT_HARNESS_FAILED = 2


class BenchError(Exception):
    """The harness could not measure (server did not start, pgbench failed, …): not a verdict."""


# ---------------------------------------------------------------- results


@dataclass
class ProjectCheck:
    project_id: str
    funded_sats: int
    balance_sats: int
    reserved_sats: int
    charged_seen_sats: int

    @property
    def ok(self) -> bool:
        return (
            self.reserved_sats == 0
            and self.funded_sats - self.balance_sats == self.charged_seen_sats
        )


@dataclass
class LevelResult:
    clients: int
    payouts_per_s: float
    latency_ms: dict[str, float]
    requests: int
    errors: int
    statuses: dict[str, int]
    unsettled_answers: int
    loadgen_cpu_s: float
    loadgen_cores: float
    server_cores: float
    postgres_cores: float
    busy_cores: float  # machine-wide; busy − (server + postgres + loadgen) = everything else
    other_cores: float
    server_cpu_ms_per_payout: float  # the cost that bounds throughput once the cores are full
    postgres_cpu_ms_per_payout: float
    projects: list[ProjectCheck] = field(default_factory=list)
    balances_ok: bool = False
    ratio_to_pgbench: float | None = None
    batch_items: int = 0  # 0: single POST /payouts; else POST /payouts/batch of this many
    # pg_stat_database deltas over the whole level (warm-up and tail too) per payout created
    commits_per_payout: float = math.nan
    rows_inserted_per_payout: float = math.nan
    rows_updated_per_payout: float = math.nan

    @property
    def label(self) -> str:
        return (
            f"batch {self.batch_items} × {self.clients}" if self.batch_items else str(self.clients)
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["projects"] = [asdict(p) | {"ok": p.ok} for p in self.projects]
        return data


@dataclass
class PgbenchResult:
    tps: float
    scale: int
    clients: int
    threads: int
    duration_s: int
    postgres_cores: float
    pgbench_cores: float
    busy_cores: float
    other_cores: float
    postgres_cpu_ms_per_tx: float


# ---------------------------------------------------------------- CPU sampling (Linux /proc)


@dataclass(frozen=True)
class _Proc:
    ppid: int
    comm: str
    cpu_s: float
    title: str  # the process title, read for PostgreSQL processes only (names the database)


@dataclass(frozen=True)
class _CpuSnapshot:
    """Per-process CPU seconds and the machine's busy/total jiffies at one instant.

    Read from /proc so the split between server, PostgreSQL, the generator and whatever else
    runs on the machine is visible; elsewhere it is empty and the figures read as NaN rather
    than stopping the bench.
    """

    at_s: float
    processes: dict[int, _Proc]
    machine_busy: int
    machine_total: int

    @classmethod
    def take(cls) -> _CpuSnapshot:
        processes: dict[int, _Proc] = {}
        busy = total = 0
        try:
            ticks = os.sysconf("SC_CLK_TCK")
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                with contextlib.suppress(OSError, ValueError, IndexError):
                    raw = Path(f"/proc/{entry}/stat").read_text()
                    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
                    rest = raw[raw.rindex(")") + 2 :].split()
                    title = ""
                    if comm == "postgres":
                        title = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                        title = title.replace("\0", " ")
                    cpu = (int(rest[11]) + int(rest[12])) / ticks
                    processes[int(entry)] = _Proc(int(rest[1]), comm, cpu, title)
            jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            total = sum(jiffies[:8])
            busy = total - jiffies[3] - jiffies[4]  # idle and iowait
        except (OSError, ValueError):
            pass
        return cls(time.monotonic(), processes, busy, total)


def _descendants(snapshot: _CpuSnapshot, root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, proc in snapshot.processes.items():
        children.setdefault(proc.ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _cores(before: _CpuSnapshot, after: _CpuSnapshot, pids: set[int]) -> float:
    """Average cores used by `pids` between two snapshots (a process born in between counts
    from zero; one that died in between is lost, so take `after` while the load still runs)."""
    wall = after.at_s - before.at_s
    if wall <= 0 or not after.processes:
        return math.nan
    used = 0.0
    for pid in pids:
        if pid in after.processes:
            start = before.processes[pid].cpu_s if pid in before.processes else 0.0
            used += max(0.0, after.processes[pid].cpu_s - start)
    return used / wall


def _pids_named(snapshot: _CpuSnapshot, name: str) -> set[int]:
    return {pid for pid, proc in snapshot.processes.items() if proc.comm == name}


_PG_CLIENT_RE = re.compile(r"\S+\(\d+\)|\[local\]")


def _postgres_pids(snapshot: _CpuSnapshot, database: str) -> set[int]:
    """PostgreSQL processes working for the bench database: its backends and autovacuum
    workers (the title names the database), and the shared ones (postmaster, WAL writer, …).
    Backends of other databases (another session's tests) are left out."""
    return {
        pid
        for pid, proc in snapshot.processes.items()
        if proc.comm == "postgres"
        and (database in proc.title.split() or not _PG_CLIENT_RE.search(proc.title))
    }


def _busy_cores(before: _CpuSnapshot, after: _CpuSnapshot) -> float:
    """Cores busy machine-wide: with the parts above, shows what else competed for the CPU."""
    total = after.machine_total - before.machine_total
    busy = after.machine_busy - before.machine_busy
    return (os.cpu_count() or 1) * busy / total if total > 0 else math.nan


# ---------------------------------------------------------------- database and server


async def recreate_database(database_url: str) -> None:
    """Drop and create the bench database (loopback only, never a maintenance database)."""
    try:
        await pgadmin.recreate(database_url)
    except (TargetRefused, ConnectionError) as exc:
        raise BenchError(str(exc)) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    database_url: str
    base_url: str
    admin_key: str
    log: TextIO


def start_server(database_url: str, workers: int) -> Server:
    """Start `payrail serve` with a clean PAYRAIL_* environment, so no setting leaks in."""
    port = _free_port()
    admin_key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYRAIL_")}
    env |= {
        "PAYRAIL_DATABASE_URL": database_url,
        "PAYRAIL_PORT": str(port),
        "PAYRAIL_HOST": "127.0.0.1",
        "PAYRAIL_MODE": "sandbox",
        "PAYRAIL_ADMIN_KEY": admin_key,
        "PAYRAIL_LOG_LEVEL": "warning",
    }
    SERVER_LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    log = SERVER_LOG_PATH.open("w")
    # `serve --log-level` overrides PAYRAIL_LOG_LEVEL, so it is passed too: an info line per
    # payout would cost server CPU that is not part of a payout.
    command = [
        sys.executable,
        "-m",
        "payrail.entrypoints.cli.app",
        "serve",
        "--workers",
        str(workers),
    ]
    command += ["--log-level", "warning"]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the uvicorn workers stop with it
    )
    return Server(process, database_url, f"http://127.0.0.1:{port}", admin_key, log)


def _server_log_tail() -> str:
    try:
        lines = SERVER_LOG_PATH.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-SERVER_LOG_TAIL_LINES:])


async def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2, trust_env=False) as http:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise BenchError(
                    f"the server exited with code {server.process.returncode}; "
                    f"its log ({SERVER_LOG_PATH}) ends:\n{_server_log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(HEALTH_POLL_S)
    raise BenchError(
        f"the server was not healthy within {SERVER_START_TIMEOUT_S:.0f} s; "
        f"see {SERVER_LOG_PATH}:\n{_server_log_tail()}"
    )


def stop_server(server: Server) -> None:
    """SIGTERM (uvicorn stops its workers gracefully), then SIGKILL to its group if it hangs."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            console.print("[yellow]server did not stop on SIGTERM; killing its group[/yellow]")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stray uvicorn workers, if any survived
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(SERVER_STOP_TIMEOUT_S)
    server.log.close()


# ---------------------------------------------------------------- admin API


def _data(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code not in (200, 201):
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    data: dict[str, Any] = response.json()["data"]
    return data


async def create_projects(
    server: Server, run_index: int, count: int, fund_sats: int
) -> list[ClientSpec]:
    """One funded project per client, so each client's charges can be checked on its own."""
    specs: list[ClientSpec] = []
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"apikey": server.admin_key},
        timeout=30,
        trust_env=False,
    ) as http:
        for client in range(count):
            project_id = f"bench_r{run_index}_c{client}"
            created = _data(
                await http.post(f"{API}/projects", json={"id": project_id}), "create project"
            )
            _data(
                await http.post(
                    f"{API}/projects/{project_id}/fund",
                    json={"amount": fund_sats},
                    headers={"idempotency-key": f"bench-fund-{project_id}"},
                ),
                "fund project",
            )
            specs.append(ClientSpec(project_id, created["apiKey"]))
    return specs


async def project_balances(server: Server, project_ids: list[str]) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"apikey": server.admin_key},
        timeout=30,
        trust_env=False,
    ) as http:
        return {
            p: _data(await http.get(f"{API}/projects/{p}/balance"), "balance") for p in project_ids
        }


async def wait_settled(server: Server, project_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Balances once no reservation is open (or the timeout passed: then the check fails)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        balances = await project_balances(server, project_ids)
        if all(b["reserved"] == 0 for b in balances.values()) or time.monotonic() > deadline:
            return balances
        await asyncio.sleep(SETTLE_POLL_S)


# ---------------------------------------------------------------- load and pgbench


async def run_load_process(
    spec: LoadSpec, server_pid: int, spec_database: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run payrail_tools.bench_load in a child process; sample CPU over its measured window."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "payrail_tools.bench_load",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=LOAD_LINE_MAX_BYTES,
    )
    assert process.stdin is not None and process.stdout is not None
    result: dict[str, Any] | None = None
    before: _CpuSnapshot | None = None
    after: _CpuSnapshot | None = None
    timeout_s = spec.warmup_s + spec.duration_s + LOAD_TIMEOUT_MARGIN_S
    try:
        process.stdin.write(json.dumps(asdict(spec)).encode())
        await process.stdin.drain()
        process.stdin.close()
        async with asyncio.timeout(timeout_s):
            async for line in process.stdout:
                event = _event(line)
                if event.get("event") == "window_start":
                    before = _CpuSnapshot.take()
                elif event.get("event") == "window_end":
                    after = _CpuSnapshot.take()
                elif event.get("event") == "result":
                    result = event
            code = await process.wait()
    except TimeoutError:
        raise BenchError(f"the load generator ran past {timeout_s:.0f} s; it was killed") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0 or result is None or before is None or after is None:
        raise BenchError(f"the load generator failed (exit code {code}); see its stderr above")
    cpu = {
        "server_cores": _cores(before, after, _descendants(after, server_pid)),
        "postgres_cores": _cores(before, after, _postgres_pids(after, spec_database)),
        "busy_cores": _busy_cores(before, after),
    }
    return result, cpu


async def run_wrk_level(
    spec: LoadSpec, server_pid: int, spec_database: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """A single-payout level driven by wrk (bench_wrk.py): a warm-up run, then the measured
    run with the server's and PostgreSQL's CPU sampled around it."""
    try:
        warmup, _ = await asyncio.to_thread(bench_wrk.run_wrk, spec, spec.warmup_s, "w")
        before = _CpuSnapshot.take()
        measured, wrk_cpu_s = await asyncio.to_thread(bench_wrk.run_wrk, spec, spec.duration_s, "m")
        after = _CpuSnapshot.take()
    except (bench_wrk.WrkMissing, RuntimeError, subprocess.TimeoutExpired) as exc:
        raise BenchError(str(exc)) from None
    cpu = {
        "server_cores": _cores(before, after, _descendants(after, server_pid)),
        "postgres_cores": _cores(before, after, _postgres_pids(after, spec_database)),
        "busy_cores": _busy_cores(before, after),
    }
    return bench_wrk.merge(warmup, measured, wrk_cpu_s), cpu


def _event(line: bytes) -> dict[str, Any]:
    """One line of the generator's protocol; anything else on its stdout is ignored."""
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _pgbench_binary() -> str:
    return shutil.which("pgbench") or "/usr/bin/pgbench"


def _pgbench(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            [_pgbench_binary(), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"pgbench {' '.join(args[:2])} failed: {exc!r}") from None
    if done.returncode != 0:
        raise BenchError(f"pgbench {' '.join(args[:2])} exited {done.returncode}: {done.stderr}")
    return done


def _pgbench_timed(seconds: int, database_url: str) -> tuple[str, _CpuSnapshot, _CpuSnapshot]:
    """Run TPC-B and snapshot CPU while it still runs: its backends exit with it, and a
    snapshot taken after would lose their CPU time."""
    args = ["-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_THREADS), "-T", str(seconds)]
    edge_s = min(PGBENCH_SAMPLE_EDGE_S, seconds / 5)
    try:
        process = subprocess.Popen(
            [_pgbench_binary(), *args, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError as exc:
        raise BenchError(f"pgbench could not start: {exc!r}") from None
    try:
        started = time.monotonic()
        time.sleep(edge_s)
        before = _CpuSnapshot.take()
        time.sleep(max(0.0, started + seconds - edge_s - time.monotonic()))
        after = _CpuSnapshot.take()
        stdout, stderr = process.communicate(timeout=seconds + LOAD_TIMEOUT_MARGIN_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"pgbench ran past {seconds} s + {LOAD_TIMEOUT_MARGIN_S:.0f} s") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"pgbench exited {process.returncode}: {stderr}")
    return stdout, before, after


def run_pgbench(database_url: str, duration_s: float) -> PgbenchResult:
    """TPC-B (pgbench's default script) on the bench database; its tables dropped afterwards."""
    seconds = max(1, round(duration_s))
    database = make_url(database_url).database or ""
    try:
        console.print(f"pgbench: initialising scale {PGBENCH_SCALE} …")
        _pgbench(["-i", "-q", "-s", str(PGBENCH_SCALE), database_url], PGBENCH_INIT_TIMEOUT_S)
        console.print(
            f"pgbench: TPC-B, {PGBENCH_CLIENTS} clients, {PGBENCH_THREADS} threads, {seconds} s …"
        )
        stdout, before, after = _pgbench_timed(seconds, database_url)
    finally:
        with contextlib.suppress(BenchError):
            _pgbench(["-i", "-I", "d", database_url], PGBENCH_INIT_TIMEOUT_S)
    match = PGBENCH_TPS_RE.search(stdout)
    if match is None:
        raise BenchError(f"no 'tps = … (without initial connection time)' in:\n{stdout}")
    postgres = _cores(before, after, _postgres_pids(after, database))
    client = _cores(before, after, _pids_named(after, "pgbench"))
    busy = _busy_cores(before, after)
    tps = float(match.group(1))
    return PgbenchResult(
        tps=tps,
        scale=PGBENCH_SCALE,
        clients=PGBENCH_CLIENTS,
        threads=PGBENCH_THREADS,
        duration_s=seconds,
        postgres_cores=postgres,
        pgbench_cores=client,
        busy_cores=busy,
        other_cores=busy - postgres - client,
        postgres_cpu_ms_per_tx=_ms_per(postgres, tps),
    )


async def run_reconcile(database_url: str) -> dict[str, Any]:
    """payrail's own reconciliation over the whole bench database (ledger vs simulated node)."""
    from payrail.bootstrap import build_runtime
    from payrail.config import Settings
    from payrail.services.reconcile import reconcile
    from payrail.support.logging import configure

    configure("warning")
    started = time.monotonic()
    rt = build_runtime(Settings(database_url=database_url, mode="sandbox"))
    try:
        report = await reconcile(rt)
    finally:
        await rt.aclose()
    return {
        "clean": report.clean,
        "payouts_checked": report.payouts_checked,
        "discrepancies": report.kinds(),
        "examples": [d.to_dict() for d in report.discrepancies[:10]],
        "seconds": round(time.monotonic() - started, 2),
    }


# ---------------------------------------------------------------- the run


def _fund_sats(duration_s: float) -> int:
    return (
        total_cost_sats(AMOUNT_MAX_SATS)
        * CLIENT_REQUESTS_PER_S_MAX
        * math.ceil(WARMUP_S + duration_s + FUNDING_MARGIN_S)
    )


async def _measure_level(
    server: Server,
    run_index: int,
    clients: int,
    duration_s: float,
    fund_sats: int,
    batch_items: int = 0,
    driver: str = "wrk",
) -> tuple[LevelResult, dict[str, int]]:
    if batch_items:
        fund_sats *= BATCH_FUND_FACTOR
    specs = await create_projects(server, run_index, clients, fund_sats)
    what = f"batches of {batch_items}" if batch_items else "single payouts"
    console.print(
        f"level {clients} ({what}): {clients} projects funded with {fund_sats:,} sats each; "
        f"{WARMUP_S:.0f} s warm-up + {duration_s:g} s measured …"
    )
    spec = LoadSpec(
        base_url=server.base_url,
        run_tag=f"r{run_index}",
        duration_s=duration_s,
        warmup_s=WARMUP_S,
        amount_min_sats=AMOUNT_MIN_SATS,
        amount_max_sats=AMOUNT_MAX_SATS,
        seed=run_index,
        clients=specs,
        batch_items=batch_items,
    )
    database = make_url(server.database_url).database or ""
    stats_before = await bench_costs.pg_stats(server.database_url)
    if batch_items or driver == "python":
        load, cpu = await run_load_process(spec, server.process.pid, database)
    else:
        load, cpu = await run_wrk_level(spec, server.process.pid, database)
    stats_after = await bench_costs.pg_stats(server.database_url)
    commits, inserted, updated = (a - b for a, b in zip(stats_after, stats_before, strict=True))
    created_total = max(1, load["created_total"])
    loadgen_cores = load["cpu_window_s"] / duration_s
    statuses: dict[str, int] = load["statuses"]
    level = LevelResult(
        clients=clients,
        payouts_per_s=load["payouts_per_s"],
        latency_ms=load["latency_ms"],
        requests=load["requests"],
        errors=sum(n for s, n in statuses.items() if s != "201"),
        statuses=statuses,
        unsettled_answers=load["unsettled_answers"],
        loadgen_cpu_s=load["cpu_window_s"],
        loadgen_cores=loadgen_cores,
        server_cores=cpu["server_cores"],
        postgres_cores=cpu["postgres_cores"],
        busy_cores=cpu["busy_cores"],
        other_cores=cpu["busy_cores"] - cpu["server_cores"] - cpu["postgres_cores"] - loadgen_cores,
        server_cpu_ms_per_payout=_ms_per(cpu["server_cores"], load["payouts_per_s"]),
        postgres_cpu_ms_per_payout=_ms_per(cpu["postgres_cores"], load["payouts_per_s"]),
        batch_items=batch_items,
        commits_per_payout=round(commits / created_total, 2),
        rows_inserted_per_payout=round(inserted / created_total, 2),
        rows_updated_per_payout=round(updated / created_total, 2),
    )
    lat = level.latency_ms
    console.print(
        f"level {level.label}: {level.payouts_per_s:.1f} payouts/s, p50 {lat['p50']:.1f} ms "
        f"(per {'batch' if batch_items else 'payout'}), "
        f"p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"errors {_error_text(level.errors, statuses)}; cores: server {level.server_cores:.2f}, "
        f"postgres {level.postgres_cores:.2f}, loadgen {level.loadgen_cores:.2f}, "
        f"other {level.other_cores:.2f} (machine busy {level.busy_cores:.2f} of "
        f"{os.cpu_count()}); CPU per payout: server {level.server_cpu_ms_per_payout:.2f} ms, "
        f"postgres {level.postgres_cpu_ms_per_payout:.2f} ms; per payout: "
        f"{level.commits_per_payout} commits, {level.rows_inserted_per_payout} rows inserted, "
        f"{level.rows_updated_per_payout} updated"
    )
    charged = {s.project_id: load["charged_sats_by_project"].get(s.project_id, 0) for s in specs}
    return level, charged


def _ms_per(cores: float, per_s: float) -> float:
    return 1000 * cores / per_s if per_s > 0 else math.nan


def _error_text(count: int, statuses: dict[str, int]) -> str:
    errors = {s: n for s, n in statuses.items() if s != "201"}
    if not errors:
        return str(count)
    return f"{count} (" + ", ".join(f"{s}×{n}" for s, n in sorted(errors.items())) + ")"


async def _run(
    database_url: str,
    client_levels: list[int],
    duration_s: float,
    server_workers: int,
    batch_items: int = 0,
    batch_clients: int = 0,
    driver: str = "wrk",
) -> dict[str, Any]:
    console.print(f"bench database {make_url(database_url).database}: recreating …")
    await recreate_database(database_url)
    costs = await _costs(database_url)
    fund_sats = _fund_sats(duration_s)
    levels: list[LevelResult] = []
    charged: list[dict[str, int]] = []
    runs: list[tuple[int, int]] = [(c, 0) for c in client_levels]
    if batch_items and batch_clients:
        runs.append((batch_clients, batch_items))
    console.print(f"server: payrail serve --workers {server_workers} (log {SERVER_LOG_PATH}) …")
    server = start_server(database_url, server_workers)
    try:
        await wait_healthy(server)
        console.print(f"server: healthy at {server.base_url}")
        for run_index, (clients, items) in enumerate(runs):
            level, seen = await _measure_level(
                server, run_index, clients, duration_s, fund_sats, items, driver
            )
            levels.append(level)
            charged.append(seen)
        console.print("invariants: waiting for every reservation to resolve …")
        all_ids = [p for seen in charged for p in seen]
        balances = await wait_settled(server, all_ids)
    finally:
        console.print("server: stopping")
        stop_server(server)
    for level, seen in zip(levels, charged, strict=True):
        level.projects = [
            ProjectCheck(
                project_id=p,
                funded_sats=fund_sats * (BATCH_FUND_FACTOR if level.batch_items else 1),
                balance_sats=balances[p]["balance"],
                reserved_sats=balances[p]["reserved"],
                charged_seen_sats=seen[p],
            )
            for p in seen
        ]
        level.balances_ok = all(p.ok for p in level.projects)
        bad = [p for p in level.projects if not p.ok]
        console.print(
            f"invariants: level {level.label}: charged seen == funded − balance for "
            f"{len(level.projects) - len(bad)}/{len(level.projects)} projects"
            + (f"; first mismatch {asdict(bad[0])}" if bad else "")
            + (
                f"; {level.unsettled_answers} answers were not final (202, 5xx or transport "
                "error), so the client could not know their charge"
                if bad and level.unsettled_answers
                else ""
            )
        )
    console.print("reconcile: checking the ledger against the simulated node …")
    recon = await run_reconcile(database_url)
    console.print(
        f"reconcile: {'clean' if recon['clean'] else 'NOT clean'} "
        f"({recon['payouts_checked']} payouts, {recon['seconds']} s)"
        + (f" {recon['discrepancies']}" if recon["discrepancies"] else "")
    )
    pgbench = run_pgbench(database_url, duration_s)
    console.print(
        f"pgbench: {pgbench.tps:.1f} tps (cores: postgres {pgbench.postgres_cores:.2f}, "
        f"pgbench {pgbench.pgbench_cores:.2f}, other {pgbench.other_cores:.2f}); "
        f"postgres CPU per transaction {pgbench.postgres_cpu_ms_per_tx:.2f} ms"
    )
    for level in levels:
        level.ratio_to_pgbench = level.payouts_per_s / pgbench.tps if pgbench.tps else None
    return {"levels": levels, "pgbench": pgbench, "reconcile": recon, "costs": costs}


async def _costs(database_url: str) -> list[bench_costs.Costs]:
    """Statements, commits and rows per payout, counted in-process before the server starts."""
    from payrail.db.migrate import upgrade

    await asyncio.to_thread(upgrade, database_url)
    console.print("costs: 200 payouts one at a time, then a batch of 200, in-process …")
    costs = await bench_costs.all_costs(database_url)
    for c in costs:
        console.print(
            f"costs: {c.what}: {c.statements_per_payout} statements, {c.commits_per_payout} "
            f"commits, {c.rows_inserted_per_payout} rows inserted, "
            f"{c.rows_updated_per_payout} rows updated per payout"
        )
    return costs


def _git_state() -> dict[str, Any]:
    """Which code was measured: the commit, and whether the work tree had changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "modified": [line[3:] for line in dirty if line.strip()]}


def _print_table(levels: list[LevelResult], pgbench: PgbenchResult, recon_clean: bool) -> None:
    table = Table(title="payrail bench: payouts vs pgbench TPC-B (same database)")
    for name in (
        "clients",
        "payouts/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "commits/payout",
        "loadgen CPU s",
        "cores srv/pg/gen/other",
        "pgbench tps",
        "ratio",
        "invariants ok",
    ):
        table.add_column(name, justify="right")
    for level in levels:
        lat = level.latency_ms
        ok = level.balances_ok and recon_clean
        table.add_row(
            level.label,
            f"{level.payouts_per_s:.1f}",
            f"{lat['p50']:.1f}",
            f"{lat['p95']:.1f}",
            f"{lat['p99']:.1f}",
            _error_text(level.errors, level.statuses),
            f"{level.commits_per_payout:.2f}",
            f"{level.loadgen_cpu_s:.2f}",
            "/".join(
                f"{c:.2f}"
                for c in (
                    level.server_cores,
                    level.postgres_cores,
                    level.loadgen_cores,
                    level.other_cores,
                )
            ),
            f"{pgbench.tps:.1f}",
            f"{level.ratio_to_pgbench:.3f}" if level.ratio_to_pgbench is not None else "-",
            "[green]yes[/green]" if ok else "[red]NO[/red]",
        )
    out = Console()
    out.width = max(out.width, TABLE_WIDTH_MIN)
    out.print(table)


def run_bench(
    database_url: str,
    client_levels: list[int],
    duration_s: float,
    server_workers: int,
    batch_items: int = 0,
    batch_clients: int = 0,
    driver: str = "wrk",
) -> int:
    """Run the whole bench; 0 if every invariant held, 1 if one failed, 2 if it could not run."""
    if any(c < 1 for c in client_levels) or not (client_levels or (batch_items and batch_clients)):
        console.print("[red]error:[/red] --clients needs positive integers, e.g. 10,50")
        return EXIT_HARNESS_FAILED
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        outcome = asyncio.run(
            _run(
                database_url,
                client_levels,
                duration_s,
                server_workers,
                batch_items,
                batch_clients,
                driver,
            )
        )
    except BenchError as exc:
        console.print(f"[red]bench failed:[/red] {exc}")
        return EXIT_HARNESS_FAILED
    levels: list[LevelResult] = outcome["levels"]
    pgbench: PgbenchResult = outcome["pgbench"]
    recon: dict[str, Any] = outcome["reconcile"]
    ok = recon["clean"] and all(level.balances_ok for level in levels)
    _print_table(levels, pgbench, recon["clean"])
    report = {
        "started_at": started_at,
        "config": {
            "database": make_url(database_url).database,
            "client_levels": client_levels,
            "duration_s": duration_s,
            "warmup_s": WARMUP_S,
            "server_workers": server_workers,
            "batch_items": batch_items,
            "batch_clients": batch_clients,
            "single_payout_driver": driver,
            "amount_sats": [AMOUNT_MIN_SATS, AMOUNT_MAX_SATS],
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": _git_state(),
        "levels": [
            level.to_dict() | {"invariants_ok": level.balances_ok and recon["clean"]}
            for level in levels
        ],
        "pgbench": asdict(pgbench),
        "reconcile": recon,
        "costs": [c.to_dict() for c in outcome["costs"]],
        "invariants_ok": ok,
    }
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    console.print(f"report: {REPORT_PATH}")
    if not ok:
        console.print("[red]invariants failed[/red]: see the table and the report")
        return EXIT_INVARIANT_FAILED
    return EXIT_OK


def _finite(value: Any) -> Any:
    """NaN (a figure that could not be measured) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
