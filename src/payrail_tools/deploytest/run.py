"""`make deploy-test`: the reference deployment on real parts, under load and faults.

Its own PostgreSQL (initdb) → PgBouncer (transaction pooling) → two `payrail serve --workers 2`
nodes and one `payrail worker` → HAProxy health-checking /ready. Thirty clients send payouts
through HAProxy (the sandbox node times out, refuses and answers ambiguously) while the run
kills -9 one node's whole process tree and restarts it, kills -9 the worker, restarts
PostgreSQL with `pg_ctl restart -m immediate`, and kills and restarts PgBouncer. Clients retry
through HAProxy with the same idempotency keys, as a real client would.

Then it checks: conservation to the sat (the database's reconcile and the API's balance
against the client's own ledger), one node payment per payout, every payout final, every 201
ended completed, and no 500 answer. Exit 0 only if all hold. Loopback only; ports
18400-18499; bounded everywhere.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from payrail_tools.deploytest.parts import (
    HAProxy,
    PartFailed,
    PayrailProcess,
    PgBouncer,
    Postgres,
    service_dir,
    tool,
)
from payrail_tools.loadtest.ledger import ClientLedger

HAPROXY_PORT = 18_400
POSTGRES_PORT = 18_410
PGBOUNCER_PORT = 18_411
NODE_PORTS = (18_420, 18_421)
DATABASE = "payrail_deploy_14"
ADMIN_KEY = "deploy_admin_key_14_not_secret"
PROJECT = "deploy_14"
FUNDING_SATS = 50_000_000
CLIENTS = 30
AMOUNT_MAX_SATS = 5_000
LOAD_S = 60.0  # the faults below happen within this window
FAULTS_AT_S = {"node": 8.0, "worker": 20.0, "postgres": 30.0, "pgbouncer": 42.0}
RESTART_AFTER_S = 2.0
REQUEST_TIMEOUT_S = 20.0
ATTEMPTS_MAX = 40  # per payout; past it the key is replayed once more after the load
BACKOFF_MAX_S = 2.0
SETTLE_DEADLINE_S = 120.0  # every payout must be final by then
MEASURE_MAX_S = 120.0  # --measure-s is capped at this, per phase
FAULTS = {
    "enabled": True,
    "timeoutRate": 0.05,
    "failureRate": 0.05,
    "ambiguousRate": 0.10,
    "timeoutMs": 300,
    "ambiguousSettleMs": 1_500,
    "rollbackOnTimeout": True,
}


def say(message: str) -> None:
    print(f"[deploy-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Tally:
    """What the clients saw, shared by the client threads (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    codes: Counter[str] = field(default_factory=Counter)
    created_201: set[str] = field(default_factory=set)
    errors_500: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ledger: ClientLedger = field(default_factory=ClientLedger)


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    """payrail's JSON envelope, or None (HAProxy's own 502/503/504 pages are HTML)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and "success" in body else None


def pay_once(client: httpx.Client, key: str, body: dict[str, Any], tally: Tally) -> bool:
    """Send one payout until a definite answer, retrying with the same idempotency key."""
    delay_s = 0.1
    for _ in range(ATTEMPTS_MAX):
        try:
            r = client.post("/api/v1/payouts", json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError as exc:
            outcome = f"transport:{type(exc).__name__}"
            r = None
        else:
            outcome = str(r.status_code)
        env = _envelope(r) if r is not None else None
        if r is not None and r.status_code >= 500:
            outcome += ":" + (str(env["data"].get("error")) if env else "proxy")
        with tally.lock:
            tally.codes[outcome] += 1
            if r is not None and r.status_code == 500:
                tally.errors_500.append(r.text[:300])
            if env is not None and r is not None and r.status_code in (200, 201, 202, 502, 504):
                data = env["data"]
                if "id" in data:  # a payout answer (not a proxy's or a rate limit's)
                    tally.ledger.observe(body["projectId"], data)
                    if r.status_code == 201:
                        tally.created_201.add(data["id"])
                    return True
            if env is not None and r is not None and r.status_code not in (500, 503):
                tally.unexpected.append(f"{r.status_code} {r.text[:200]}")
                return True
        time.sleep(delay_s)  # 503 (database away or no node in rotation), 5xx of the proxy
        delay_s = min(BACKOFF_MAX_S, delay_s * 2)
    with tally.lock:
        tally.ledger.unknown(body["projectId"], {**body, "key": key})
    return False


def client_loop(index: int, base: str, api_key: str, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(index)
    with httpx.Client(
        base_url=base, headers={"apikey": api_key}, timeout=REQUEST_TIMEOUT_S
    ) as client:
        n = 0
        while not stop.is_set():
            body = {
                "gamertag": f"c{index}n{n}",  # one payout per gamertag: no rate limit
                "amount": rng.randint(1, AMOUNT_MAX_SATS),
                "projectId": PROJECT,
            }
            pay_once(client, f"deploy14-{index}-{n}", body, tally)
            n += 1


class Deployment:
    def __init__(self, through_pgbouncer: bool = True) -> None:
        self.root = service_dir("payrail-14-deploy-")
        self.postgres = Postgres(self.root / "pg", POSTGRES_PORT)
        self.pgbouncer = PgBouncer(self.root / "pgbouncer", PGBOUNCER_PORT, POSTGRES_PORT)
        self.haproxy = HAProxy(self.root / "haproxy", HAPROXY_PORT, list(NODE_PORTS))
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith("PAYRAIL_") or name == "PROMETHEUS_MULTIPROC_DIR":
                del self.env[name]
        self.env.update(
            PAYRAIL_MODE="sandbox",
            PAYRAIL_DATABASE_URL=(
                self.pgbouncer.url(DATABASE) if through_pgbouncer else self.postgres.url(DATABASE)
            ),
            PAYRAIL_ADMIN_KEY=ADMIN_KEY,
            PAYRAIL_DB_POOL_SIZE="5",
            PAYRAIL_NODE_TIMEOUT_MS="2000",
            PAYRAIL_LEASE_MS="5000",  # a killed worker's jobs are taken over within seconds
            PAYRAIL_CALLBACK_TIMEOUT_MS="2000",
            PAYRAIL_SETTLE_WAIT_MS="3000",
            PAYRAIL_SIM_SEED="14",
        )
        self.nodes = [
            PayrailProcess(
                f"node{i}",
                ["serve", "--workers", "2", "--log-level", "warning"],
                {**self.env, "PAYRAIL_PORT": str(port)},
                self.root / f"node{i}",
                port,
            )
            for i, port in enumerate(NODE_PORTS)
        ]
        self.worker = PayrailProcess("worker", ["worker"], self.env, self.root / "worker")

    def up(self) -> None:
        missing = [b for b in ("pgbouncer", "haproxy") if tool(b) is None]
        if missing:
            raise PartFailed(f"{', '.join(missing)} missing: run scripts/install-deploy-tools.sh")
        say(f"PostgreSQL (own instance, initdb) on :{POSTGRES_PORT}")
        self.postgres.init()
        self.postgres.start()
        self.postgres.sql(f"CREATE DATABASE {DATABASE}")
        # PgBouncer refuses startup parameters: the timeouts live on the role instead
        self.postgres.sql("ALTER ROLE postgres SET statement_timeout = '30s'")
        self.postgres.sql("ALTER ROLE postgres SET lock_timeout = '10s'")
        say(f"PgBouncer (transaction pooling) on :{PGBOUNCER_PORT}")
        self.pgbouncer.start()
        say("migrations through PgBouncer")
        subprocess.run(
            [sys.executable, "-m", "payrail.entrypoints.cli.app", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
            cwd=self.root,
        )
        say(f"two nodes (serve --workers 2) on :{NODE_PORTS[0]} and :{NODE_PORTS[1]}, a worker")
        for node in self.nodes:
            node.start()
        self.worker.start()
        for node in self.nodes:
            node.wait_ready()
        say(f"HAProxy on :{HAPROXY_PORT}, health-checking /ready")
        self.haproxy.start()
        self.wait_proxy_ready()

    def wait_proxy_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise PartFailed(f"no node became ready behind HAProxy within {timeout_s} s")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{HAPROXY_PORT}"

    def down(self) -> None:
        for part in (self.haproxy, *self.nodes, self.worker, self.pgbouncer):
            try:
                part.stop()
            except Exception as exc:  # teardown goes on: every part must be stopped
                say(f"stopping {type(part).__name__}: {exc}")
        try:
            self.postgres.stop()
        except Exception as exc:
            say(f"stopping PostgreSQL: {exc}")

    def faults(self, started: float, stop: threading.Event) -> list[str]:
        """Kill and restart parts on schedule, while the load runs."""
        done: list[str] = []

        def at(offset_s: float) -> None:
            time.sleep(max(0.0, started + offset_s - time.monotonic()))

        at(FAULTS_AT_S["node"])
        say("fault: kill -9 node0's whole process tree")
        self.nodes[0].kill_tree()
        time.sleep(RESTART_AFTER_S)
        self.nodes[0].start()
        self.nodes[0].wait_ready()
        say("node0 restarted: it bound its port at once")
        done.append("node0 kill -9 (process tree) + restart")

        at(FAULTS_AT_S["worker"])
        say("fault: kill -9 the worker")
        self.worker.kill_tree()
        time.sleep(RESTART_AFTER_S)
        self.worker.start()
        done.append("worker kill -9 + restart")

        at(FAULTS_AT_S["postgres"])
        say("fault: pg_ctl restart -m immediate")
        self.postgres.restart_immediate()
        done.append("PostgreSQL restart -m immediate")

        at(FAULTS_AT_S["pgbouncer"])
        say("fault: kill -9 PgBouncer")
        self.pgbouncer.kill()
        time.sleep(RESTART_AFTER_S)
        self.pgbouncer.start()
        done.append("PgBouncer kill -9 + restart")
        return done


def setup_project(base: str, tally: Tally, faults: bool) -> str:
    admin = {"apikey": ADMIN_KEY}
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as c:
        r = c.post("/api/v1/projects", headers=admin, json={"id": PROJECT, "name": "deploy"})
        r.raise_for_status()
        api_key = r.json()["data"]["apiKey"]
        r = c.post(
            f"/api/v1/projects/{PROJECT}/fund",
            headers=admin | {"Idempotency-Key": "deploy14-fund"},
            json={"amount": FUNDING_SATS},
        )
        r.raise_for_status()
        tally.ledger.fund(PROJECT, FUNDING_SATS)
        if faults:
            c.post("/api/v1/test/failure-injection", headers=admin, json=FAULTS).raise_for_status()
    return api_key


def settle(base: str, api_key: str, tally: Tally) -> list[str]:
    """Replay unanswered keys, then wait (bounded) until every payout seen is final."""
    with httpx.Client(base_url=base, headers={"apikey": api_key}, timeout=10) as c:
        for unknown in list(tally.ledger.unknowns):
            body = {k: v for k, v in unknown.body.items() if k != "key"}
            if not pay_once(c, unknown.body["key"], body, tally):
                return [f"idempotency key {unknown.body['key']} never got an answer"]
        tally.ledger.unknowns.clear()
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while time.monotonic() < deadline:
            pending = tally.ledger.pending_ids()
            if not pending:
                return []
            for payout_id in pending:
                try:
                    r = c.get(f"/api/v1/payouts/{payout_id}")
                except httpx.TransportError:
                    continue
                if r.status_code == 200:
                    tally.ledger.observe(PROJECT, r.json()["data"])
            time.sleep(0.5)
        return [f"{len(tally.ledger.pending_ids())} payouts not final after the deadline"]


def check(deployment: Deployment, api_key: str, tally: Tally) -> list[str]:
    import asyncio

    import asyncpg

    problems: list[str] = []
    with httpx.Client(base_url=deployment.base, headers={"apikey": api_key}, timeout=10) as c:
        balance = c.get(f"/api/v1/projects/{PROJECT}/balance").json()["data"]
        for payout_id in sorted(tally.created_201):
            status = c.get(f"/api/v1/payouts/{payout_id}").json()["data"]["status"]
            if status != "completed":
                problems.append(f"201 for {payout_id}, now {status}")
    expected = tally.ledger.expected_balance(PROJECT)
    if balance["balance"] != expected or balance["reserved"] != 0:
        problems.append(f"API balance {balance} != client ledger {expected} (reserved 0)")

    async def db() -> dict[str, Any]:
        conn = await asyncpg.connect(deployment.postgres.url(DATABASE), timeout=10)
        try:
            reasons = await conn.fetch(
                "SELECT failure_reason, count(*) AS n FROM payouts WHERE state = 'failed' "
                "GROUP BY 1 ORDER BY 2 DESC"
            )
            say("failed payouts by reason: " + str({r["failure_reason"]: r["n"] for r in reasons}))
            return dict(
                await conn.fetchrow(
                    """
                    SELECT
                      (SELECT count(*) FROM payouts
                        WHERE state NOT IN ('completed','failed','expired')) AS not_final,
                      (SELECT count(*) FROM payouts WHERE project_id = $1) AS payouts,
                      (SELECT coalesce(sum(amount + fee), 0) FROM payouts
                        WHERE project_id = $1 AND state = 'completed') AS charged,
                      (SELECT count(*) FROM payouts p JOIN sim_node_payments n
                        ON n.payment_id = p.id
                        WHERE n.status = 'succeeded' AND p.state <> 'completed') AS paid_not_done,
                      (SELECT count(*) FROM payouts p
                        WHERE p.state = 'completed' AND NOT EXISTS (
                          SELECT 1 FROM sim_node_payments n
                          WHERE n.payment_id = p.id AND n.status = 'succeeded')) AS done_not_paid
                    """,
                    PROJECT,
                )
            )
        finally:
            await conn.close()

    row = asyncio.run(db())
    say(f"database: {row}")
    if row["not_final"]:
        problems.append(f"{row['not_final']} payouts not final in the database")
    if row["paid_not_done"] or row["done_not_paid"]:
        problems.append(f"node payments and payouts disagree: {row}")
    if FUNDING_SATS - row["charged"] != balance["balance"]:
        problems.append(
            f"database: funded {FUNDING_SATS} − charged {row['charged']} != {balance['balance']}"
        )
    if row["payouts"] != len(tally.ledger.payouts):
        problems.append(
            f"{row['payouts']} payouts in the database, clients saw {len(tally.ledger.payouts)}"
        )
    reconcile = subprocess.run(
        [sys.executable, "-m", "payrail.entrypoints.cli.app", "reconcile", "--json"],
        env={**deployment.env, "PAYRAIL_DATABASE_URL": deployment.postgres.url(DATABASE)},
        capture_output=True,
        text=True,
        cwd=deployment.root,
        timeout=120,
    )
    if reconcile.returncode != 0:
        problems.append(f"reconcile exit {reconcile.returncode}: {reconcile.stdout[-800:]}")
    else:
        say(f"reconcile clean over {json.loads(reconcile.stdout).get('payoutsChecked')} payouts")
    if tally.errors_500:
        problems.append(f"{len(tally.errors_500)} answers were 500: {tally.errors_500[:2]}")
    if tally.unexpected:
        problems.append(f"unexpected answers: {tally.unexpected[:3]}")
    if tally.ledger.conflicts:
        problems.append(f"answers contradict each other: {tally.ledger.conflicts[:3]}")
    return problems


def start_clients(
    base: str, api_key: str, tally: Tally, stop: threading.Event, offset: int = 0
) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=client_loop, args=(offset + i, base, api_key, stop, tally), daemon=True
        )
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    return threads


def stop_clients(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S * 3)


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants, including
    descendants that already exited (PostgreSQL backends come and go)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            own = root.cpu_times()
            total += own.children_user + own.children_system  # children reaped so far
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def measure(deployment: Deployment, api_key: str, tally: Tally, seconds: float) -> list[str]:
    """Throughput without faults: one node alone (clients straight to node0), then both
    nodes through HAProxy; with the CPU each tier spent per payout."""
    pg_pid = int((deployment.postgres.data / "postmaster.pid").read_text().split()[0])
    tiers = {
        "nodes": [n.proc.pid for n in deployment.nodes if n.proc is not None],
        "worker": [deployment.worker.proc.pid] if deployment.worker.proc else [],
        "pgbouncer": [deployment.pgbouncer.proc.pid] if deployment.pgbouncer.proc else [],
        "postgresql": [pg_pid],
    }
    lines = []
    targets = [
        ("1 node", f"http://127.0.0.1:{NODE_PORTS[0]}"),
        ("2 nodes (HAProxy)", deployment.base),
    ]
    for phase, (label, base) in enumerate(targets):
        before_n = len(tally.ledger.payouts)
        before_cpu = {k: _cpu_s(v) for k, v in tiers.items()}
        stop = threading.Event()
        started = time.monotonic()
        threads = start_clients(base, api_key, tally, stop, offset=1_000 * (phase + 1))
        time.sleep(seconds)
        stop_clients(stop, threads)
        elapsed = time.monotonic() - started
        count = len(tally.ledger.payouts) - before_n
        cpu = {k: (_cpu_s(v) - before_cpu[k]) * 1000 / max(count, 1) for k, v in tiers.items()}
        line = f"{label}: {count / elapsed:.1f} payouts/s; CPU ms per payout " + ", ".join(
            f"{k} {v:.1f}" for k, v in cpu.items()
        )
        say(line)
        lines.append(line)
    say(f"answers: {dict(tally.codes)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m payrail_tools.deploytest.run")
    parser.add_argument(
        "--measure-s",
        type=float,
        default=0.0,
        help="no faults: measure throughput of 1 node, then 2, for this many seconds each",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="with --measure-s: nodes connect to PostgreSQL directly, not through PgBouncer",
    )
    args = parser.parse_args(argv)
    if args.direct and not args.measure_s:
        parser.error("--direct only goes with --measure-s: the fault run needs PgBouncer")
    started_at = time.monotonic()
    deployment = Deployment(through_pgbouncer=not args.direct)
    tally = Tally()
    problems: list[str] = []
    try:
        deployment.up()
        api_key = setup_project(deployment.base, tally, faults=not args.measure_s)
        if args.measure_s:
            measure(deployment, api_key, tally, min(args.measure_s, MEASURE_MAX_S))
        else:
            say(f"load: {CLIENTS} clients for {LOAD_S:.0f} s through HAProxy, faults {FAULTS}")
            stop = threading.Event()
            load_started = time.monotonic()
            threads = start_clients(deployment.base, api_key, tally, stop)
            done = deployment.faults(load_started, stop)
            time.sleep(max(0.0, load_started + LOAD_S - time.monotonic()))
            stop_clients(stop, threads)
            load_s = time.monotonic() - load_started
            say(f"faults done: {'; '.join(done)}")
            say(
                f"answers: {dict(tally.codes)}; "
                f"{len(tally.ledger.payouts)} payouts in {load_s:.0f} s"
            )
        problems += settle(deployment.base, api_key, tally)
        say(f"final statuses: {tally.ledger.status_counts()}")
        problems += check(deployment, api_key, tally)
    except (PartFailed, subprocess.CalledProcessError, httpx.HTTPError, OSError) as exc:
        detail = getattr(exc, "stderr", None) or b""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        problems.append(f"{type(exc).__name__}: {exc} {detail[-1000:]}")
    finally:
        if problems:
            for part in (*deployment.nodes, deployment.worker):
                say(f"--- {part.name} log tail ---\n{part.tail()}")
        deployment.down()
        if not problems:
            shutil.rmtree(deployment.root, ignore_errors=True)
    elapsed = time.monotonic() - started_at
    if problems:
        say(f"FAILED after {elapsed:.0f} s (logs kept in {deployment.root}):")
        for p in problems:
            say(f"  - {p}")
        return 1
    say(f"passed in {elapsed:.0f} s: every invariant held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
