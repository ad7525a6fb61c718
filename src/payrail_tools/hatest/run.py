"""`make ha-test`: payrail on a Patroni cluster, losing its primary under load.

etcd → three PostgreSQL 15 members, each under Patroni (synchronous_mode on by default) →
HAProxy (its primary port follows Patroni's GET /primary, its replica port GET /replica) →
PgBouncer (transaction pooling; `<db>` to the primary port, `<db>_ro` to the replicas) → two
`payrail serve --workers 2` nodes and a `payrail worker` (PAYRAIL_READ_DATABASE_URL on the
replicas) → HAProxy's API port. Thirty clients send payouts with retries on the same
idempotency keys (the deployment test's clients and client ledger), the sandbox node times
out, refuses and answers ambiguously, and on a schedule the run:

1. kills -9 the primary's postmaster and all its children (Patroni fails over to the
   synchronous standby; the old primary rejoins as a replica, with pg_rewind if it diverged);
2. runs a planned `patronictl switchover` to the synchronous standby;
3. posts a batch of 1,000 payouts and, while it settles, kills -9 the new primary's whole
   machine (Patroni and PostgreSQL: the leader key expires after the ttl); later restarts its
   Patroni, and the old primary rejoins as a replica (pg_rewind).

Then it checks, against the client's own record of every answer: every payout answered
(201/202 in particular) exists with exactly its charge (zero acknowledged writes lost), no
node payment without its completed payout or the reverse, every payout final, conservation
to the sat, `payrail reconcile` clean on the surviving primary, no 500. It prints the time
from each fault to the first payout created after it, and the answers by code in between.

`--async` runs the same with synchronous_mode off, to measure what asynchronous replication
loses (a measurement: its losses are printed, not failed on). Loopback only, ports
12600-12699, every wait bounded, the whole run under a hard deadline, and every process
stopped on every exit (failure, Ctrl-C, SIGTERM, deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from payrail_tools.deploytest.parts import PartFailed, PayrailProcess, service_dir, tool
from payrail_tools.deploytest.run import (
    ADMIN_KEY,
    CLIENTS,
    FAULTS,
    FUNDING_SATS,
    PROJECT,
    REQUEST_TIMEOUT_S,
    Tally,
    _cpu_s,
    _envelope,
    settle,
    setup_project,
    start_clients,
    stop_clients,
)
from payrail_tools.hatest.cluster import Cluster, Etcd, HAProxyHA, Member, PgBouncerHA

API_PORT = 12_600
PRIMARY_PORT = 12_601
REPLICA_PORT = 12_602
ETCD_PORTS = (12_610, 12_611)
PG_PORTS = (12_620, 12_621, 12_622)
REST_PORTS = (12_630, 12_631, 12_632)
PGBOUNCER_PORT = 12_640
NODE_PORTS = (12_650, 12_651)
ALL_PORTS = (API_PORT, PRIMARY_PORT, REPLICA_PORT, *ETCD_PORTS, *PG_PORTS, *REST_PORTS)
ALL_PORTS += (PGBOUNCER_PORT, *NODE_PORTS)
DATABASE = "payrail_ha_26"
RUN_DEADLINE_S = 540  # the whole run, setup and teardown included: past it, it fails
LOAD_MIN_S = 20.0  # load before the first fault
PAUSE_S = 8.0  # load between one fault's recovery and the next fault
REJOIN_AFTER_S = 6.0  # the killed machine comes back this long after its kill
BATCH_ITEMS = 1_000
BATCH_AMOUNT_MAX_SATS = 2_000
BATCH_SETTLING_MIN = 100  # the kill comes once this many of its payouts are not final yet
BATCH_SETTLING_WAIT_S = 60.0
ATTEMPTS_MAX = 40
SWITCH_WAIT_S = 60.0  # a new leader, or a rejoined member, within this
LAG_BEFORE_KILL_S = 1.0  # the primary's WAL senders stop this long before each kill
ROUTED_IN_A_ROW = 6  # HAProxy's view has settled once this many connections agree
OUTAGE_SEARCH_S = 15  # a fault's write outage is looked for this far around it


def say(message: str) -> None:
    print(f"[ha-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


class TimedCounter(Counter):  # type: ignore[type-arg]
    """The clients' answer counter (deploytest's Tally.codes) that also remembers when each
    answer came: the answers between a fault and the first success after it are reported."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def __setitem__(self, key: str, value: int) -> None:
        self.times.append((time.monotonic(), key))
        super().__setitem__(key, value)


@dataclass
class Fault:
    name: str
    at_mono: float
    at_wall_ms: int
    old_leader: str
    new_leader: str = ""
    leader_after_s: float | None = None
    answers: dict[str, int] = field(default_factory=dict)

    def stamp(self) -> None:
        self.at_mono, self.at_wall_ms = time.monotonic(), int(time.time() * 1000)


class HADeployment:
    def __init__(self, synchronous: bool, strict: bool, read_replica: bool = True) -> None:
        self.root = service_dir("payrail-26-ha-")
        self.cluster = Cluster(
            Etcd(self.root / "etcd", *ETCD_PORTS),
            [
                Member(f"pg{i}", self.root / f"pg{i}", PG_PORTS[i], REST_PORTS[i])
                for i in range(len(PG_PORTS))
            ],
            synchronous=synchronous,
            strict=strict,
        )
        self.haproxy = HAProxyHA(
            self.root / "haproxy",
            API_PORT,
            PRIMARY_PORT,
            REPLICA_PORT,
            list(NODE_PORTS),
            self.cluster.members,
        )
        self.pgbouncer = PgBouncerHA(
            self.root / "pgbouncer", PGBOUNCER_PORT, DATABASE, PRIMARY_PORT, REPLICA_PORT
        )
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PAYRAIL_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        self.env.update(
            PAYRAIL_MODE="sandbox",
            PAYRAIL_DATABASE_URL=self.pgbouncer.url(DATABASE),
            PAYRAIL_READ_DATABASE_URL=self.pgbouncer.url(f"{DATABASE}_ro"),
            PAYRAIL_ADMIN_KEY=ADMIN_KEY,
            PAYRAIL_DB_POOL_SIZE="5",
            PAYRAIL_NODE_TIMEOUT_MS="2000",
            PAYRAIL_LEASE_MS="5000",
            PAYRAIL_CALLBACK_TIMEOUT_MS="2000",
            PAYRAIL_SETTLE_WAIT_MS="3000",
            PAYRAIL_SIM_SEED="26",
        )
        if not read_replica:
            del self.env["PAYRAIL_READ_DATABASE_URL"]
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

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{API_PORT}"

    def primary_url(self, database: str = DATABASE) -> str:
        """Straight to the primary through HAProxy (no PgBouncer): checks and admin."""
        return f"postgresql://postgres@127.0.0.1:{PRIMARY_PORT}/{database}"

    def up(self) -> None:
        missing = [
            b for b in ("etcd", "patroni", "patronictl", "pgbouncer", "haproxy") if not tool(b)
        ]
        if missing:
            raise PartFailed(f"{', '.join(missing)} missing: run scripts/install-ha-tools.sh")
        busy = [p for p in ALL_PORTS if _listening(p)]
        if busy:  # a leftover of a killed run would answer our health checks: refuse
            raise PartFailed(f"ports already in use: {busy} (a previous run left processes?)")
        mode = "synchronous" if self.cluster.synchronous else "ASYNCHRONOUS"
        strict = ", strict" if self.cluster.strict else ""
        say(f"etcd on :{ETCD_PORTS[0]}; Patroni members pg0-pg2 ({mode}{strict}) on {PG_PORTS}")
        started = time.monotonic()
        self.cluster.up()
        say(f"cluster healthy in {time.monotonic() - started:.1f} s: {_roles(self.cluster)}")
        say(f"HAProxy :{API_PORT} api, :{PRIMARY_PORT} primary, :{REPLICA_PORT} replicas")
        self.haproxy.start()
        # HAProxy starts with every server up, until `fall` failed checks: a first connection
        # could reach a replica. Wait until the primary port only reaches the primary.
        _wait_routed(self.primary_url("postgres"), in_recovery=False)
        _wait_routed(f"postgresql://postgres@127.0.0.1:{REPLICA_PORT}/postgres", in_recovery=True)
        _sql(self.primary_url("postgres"), f"CREATE DATABASE {DATABASE}")
        _sql(self.primary_url("postgres"), "ALTER ROLE postgres SET statement_timeout = '30s'")
        _sql(self.primary_url("postgres"), "ALTER ROLE postgres SET lock_timeout = '10s'")
        say(f"PgBouncer on :{PGBOUNCER_PORT} ({DATABASE} → primary, {DATABASE}_ro → replicas)")
        self.pgbouncer.start()
        subprocess.run(
            [sys.executable, "-m", "payrail.entrypoints.cli.app", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
            cwd=self.root,
            timeout=120,
        )
        say(f"two nodes on :{NODE_PORTS[0]}, :{NODE_PORTS[1]} and a worker")
        for node in self.nodes:
            node.start()
        self.worker.start()
        for node in self.nodes:
            node.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise PartFailed("no node became ready behind HAProxy within 60 s")

    def down(self) -> None:
        """Stop everything, the parts of one tier at once."""
        from concurrent.futures import ThreadPoolExecutor

        def stop(part: Any) -> None:
            try:
                part.stop()
            except Exception as exc:  # teardown goes on: every part must be stopped
                say(f"stopping {type(part).__name__}: {exc}")

        # the nodes need no graceful drain at the end of a test: kill -9 their process trees
        for app in (*self.nodes, self.worker):
            with contextlib.suppress(Exception):
                app.kill_tree()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stop, [self.haproxy, *self.nodes, self.worker]))
        stop(self.pgbouncer)
        self.cluster.down()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _roles(cluster: Cluster) -> str:
    return ", ".join(f"{r['Member']} {r['Role']} TL{r.get('TL')}" for r in cluster.listing())


async def _fetch(url: str, statement: str, *args: Any) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [dict(r) for r in await conn.fetch(statement, *args)]
    finally:
        await conn.close()


def _sql(url: str, statement: str, *args: Any) -> list[dict[str, Any]]:
    return asyncio.run(_fetch(url, statement, *args))


def _wait_sql(url: str, statement: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _sql(url, statement)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _wait_routed(url: str, in_recovery: bool, timeout_s: float = 30.0) -> None:
    """Until ROUTED_IN_A_ROW connections in a row reach a server that is (or is not) in
    recovery."""
    deadline, in_a_row = time.monotonic() + timeout_s, 0
    while in_a_row < ROUTED_IN_A_ROW:
        if time.monotonic() > deadline:
            raise PartFailed(
                f"{url} did not reach only {'replicas' if in_recovery else 'the primary'}"
            )
        try:
            row = _sql(url, "SELECT pg_is_in_recovery() AS r")[0]
            in_a_row = in_a_row + 1 if row["r"] == in_recovery else 0
        except Exception:
            in_a_row = 0
        time.sleep(0.1)


def post_batch(base: str, api_key: str, tally: Tally, answered: threading.Event) -> None:
    """One batch of BATCH_ITEMS payouts, retried with its key until an answer; every item's
    payout goes into the client ledger."""
    rng = random.Random(26)
    items = [
        {"gamertag": f"batch{i}", "amount": rng.randint(1, BATCH_AMOUNT_MAX_SATS)}
        for i in range(BATCH_ITEMS)
    ]
    body = {"projectId": PROJECT, "items": items}
    delay_s = 0.2
    with httpx.Client(base_url=base, headers={"apikey": api_key}, timeout=120) as c:
        for _ in range(ATTEMPTS_MAX):
            try:
                r = c.post(
                    "/api/v1/payouts/batch", json=body, headers={"Idempotency-Key": "ha26-b"}
                )
            except httpx.TransportError as exc:
                outcome, r = f"batch transport:{type(exc).__name__}", None
            else:
                outcome = f"batch {r.status_code}"
            with tally.lock:
                tally.codes[outcome] += 1
                if r is not None and r.status_code == 500:
                    tally.errors_500.append(r.text[:300])
            env = _envelope(r) if r is not None else None
            if r is not None and r.status_code == 200 and env is not None:
                with tally.lock:
                    for item in env["data"]["items"]:
                        data = item["data"]
                        tally.codes[f"item {item['httpStatus']}"] += 1
                        if "id" in data and "totalCost" in data:
                            tally.ledger.observe(PROJECT, data)
                            if item["httpStatus"] == 201:
                                tally.created_201.add(data["id"])
                        else:
                            tally.unexpected.append(f"batch item {item}")
                answered.set()
                return
            if env is not None and r is not None and r.status_code not in (500, 503):
                tally.unexpected.append(f"batch {r.status_code} {r.text[:200]}")
                answered.set()
                return
            time.sleep(delay_s)
            delay_s = min(2.0, delay_s * 2)
    tally.unexpected.append("the batch never got an answer")
    answered.set()


class Faults:
    def __init__(self, d: HADeployment, api_key: str, tally: Tally) -> None:
        self.d, self.api_key, self.tally = d, api_key, tally
        self.done: list[Fault] = []
        self.batch_thread: threading.Thread | None = None

    def _record(self, name: str) -> Fault:
        leader = self.d.cluster.leader()
        if leader is None:
            raise PartFailed(f"{name}: no leader to fault: {self.d.cluster.listing()}")
        fault = Fault(name, time.monotonic(), int(time.time() * 1000), leader.name)
        self.done.append(fault)
        return fault

    def _new_leader(self, fault: Fault) -> None:
        c = self.d.cluster

        def moved() -> bool:
            leader = c.leader()
            return leader is not None and leader.name != fault.old_leader

        c.wait(moved, f"new leader after {fault.name}", SWITCH_WAIT_S)
        fault.leader_after_s = time.monotonic() - fault.at_mono
        leader = c.leader()
        fault.new_leader = leader.name if leader else "?"
        say(f"  {fault.new_leader} leads {fault.leader_after_s:.1f} s after the {fault.name}")

    def _lagging(self, leader: Member) -> list[int]:
        """Stop the primary's WAL senders (SIGSTOP) for LAG_BEFORE_KILL_S before a kill: the
        standbys fall behind, as over a congested link (stopping the receivers would not do:
        what was sent waits in their sockets and arrives after the kill). A synchronous
        primary then holds every commit until the standby has it (none is acknowledged that
        it lacks); an asynchronous one goes on acknowledging what no standby has."""
        paused = leader.walsenders()
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(LAG_BEFORE_KILL_S)
        return paused

    @staticmethod
    def _resume(paused: list[int]) -> None:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill_postmaster(self) -> None:
        leader = self.d.cluster.leader()
        assert leader is not None
        paused = self._lagging(leader)
        try:
            fault = self._record("kill -9 of the primary's postmaster")
            killed = leader.kill_postgres()
            fault.stamp()  # from here on nothing can commit on the old primary
        finally:
            self._resume(paused)
        say(
            f"fault 1: kill -9 {leader.name}'s postmaster and children ({killed} processes), "
            f"its WAL senders stopped for the {LAG_BEFORE_KILL_S:.0f} s before"
        )
        self._new_leader(fault)
        waited = self.d.cluster.wait_healthy(timeout_s=SWITCH_WAIT_S)
        say(
            f"  {leader.name} rejoined as a replica ({waited:.1f} s more): {_roles(self.d.cluster)}"
        )

    def switchover(self) -> None:
        c = self.d.cluster
        leader, candidate = c.leader(), c.sync_standby()
        if leader is None:
            raise PartFailed("switchover: no leader")
        if candidate is None:  # asynchronous mode: any replica
            candidate = next(m for m in c.members if m is not leader)
        fault = self._record("planned switchover")
        say(f"fault 2: patronictl switchover {leader.name} → {candidate.name}")
        c.ctl("switchover", "--leader", leader.name, "--candidate", candidate.name, "--force")
        self._new_leader(fault)
        waited = c.wait_healthy(timeout_s=SWITCH_WAIT_S)
        say(f"  healthy again after {waited:.1f} s more: {_roles(c)}")

    def kill_machine_during_batch(self) -> None:
        c = self.d.cluster
        answered = threading.Event()
        self.batch_thread = threading.Thread(
            target=post_batch, args=(self.d.base, self.api_key, self.tally, answered), daemon=True
        )
        say(f"batch of {BATCH_ITEMS:,} posted")
        self.batch_thread.start()
        # The kill comes once the batch's payouts are reserved and some are still in motion
        # (the request itself may still be waiting for them): its retry replays the batch.
        settling, deadline = 0, time.monotonic() + BATCH_SETTLING_WAIT_S
        while time.monotonic() < deadline and not answered.is_set():
            settling = _sql(
                self.d.primary_url(),
                "SELECT count(*) AS n FROM payouts WHERE gamertag LIKE 'batch%' "
                "AND state NOT IN ('completed', 'failed', 'expired')",
            )[0]["n"]
            if settling >= BATCH_SETTLING_MIN:
                break
            time.sleep(0.05)
        leader = c.leader()
        if leader is None:
            raise PartFailed("batch kill: no leader")
        paused = self._lagging(leader)
        try:
            fault = self._record("kill -9 of the primary's machine mid-batch")
            killed = leader.kill_machine()
            fault.stamp()
        finally:
            self._resume(paused)
        say(
            f"fault 3: kill -9 {leader.name}'s machine (Patroni + PostgreSQL, {killed} "
            f"processes, its WAL senders stopped for the {LAG_BEFORE_KILL_S:.0f} s before) with "
            f"{settling} batch payouts not yet final"
        )
        self._new_leader(fault)
        time.sleep(max(0.0, fault.at_mono + REJOIN_AFTER_S - time.monotonic()))
        say(f"  {leader.name}'s machine restarts: Patroni rejoins it to {fault.new_leader}")
        leader.start()
        waited = c.wait_healthy(timeout_s=SWITCH_WAIT_S)
        say(f"  {leader.name} rejoined ({waited:.1f} s after its restart): {_roles(c)}")

    def run(self, load_started: float) -> None:
        time.sleep(max(0.0, load_started + LOAD_MIN_S - time.monotonic()))
        self.kill_postmaster()
        time.sleep(PAUSE_S)
        self.switchover()
        time.sleep(PAUSE_S)
        self.kill_machine_during_batch()
        time.sleep(PAUSE_S)


def forget_lost_pending(base: str, api_key: str, tally: Tally) -> int:
    """A payout answered 202 that the database no longer has (asynchronous replication lost
    it) would be waited for in vain: mark it lost, so that settle() waits only for the others.
    check() counts it with every other acknowledged payout the database lacks."""
    lost = 0
    with httpx.Client(base_url=base, headers={"apikey": api_key}, timeout=10) as c:
        for payout_id in tally.ledger.pending_ids():
            if c.get(f"/api/v1/payouts/{payout_id}").status_code == 404:
                tally.ledger.payouts[payout_id].status = "lost"
                lost += 1
    return lost


def rewinds(d: HADeployment) -> dict[str, int]:
    """How often each member's data was rewound (Patroni logs 'pg_rewind exit code=0')."""
    return {m.name: m.tail(10_000_000).count("pg_rewind exit code=0") for m in d.cluster.members}


def write_outage(commits_ms: list[int], fault: Fault) -> tuple[int, int] | None:
    """The longest stretch with no payout committed around a fault: (last commit before it,
    first commit after it), epoch ms. Under load a payout commits every few tens of ms, so the
    failover is the one gap of seconds; the commit that ends it is the new primary's first."""
    until = fault.at_wall_ms + int(((fault.leader_after_s or 0) + OUTAGE_SEARCH_S) * 1000)
    window = [t for t in commits_ms if fault.at_wall_ms - OUTAGE_SEARCH_S * 1000 <= t <= until]
    gaps = [(b - a, a, b) for a, b in zip(window, window[1:], strict=False)]
    if not gaps:
        return None
    _, last, first = max(gaps)
    return last, first


def report(d: HADeployment, faults: list[Fault], codes: TimedCounter) -> list[str]:
    """Per fault: the leader change, the write outage (from the commit times of the payouts
    created, track_commit_timestamp: the database's clock, not a client's guess), the time
    from the fault to the first payout committed on the new primary, and the clients'
    answers meanwhile."""
    commits_ms = [
        int(r["t"])
        for r in _sql(
            d.primary_url(),
            "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint AS t "
            "FROM payout_events WHERE from_status IS NULL ORDER BY 1",
        )
        if r["t"] is not None
    ]
    lines = []
    for f in faults:
        outage = write_outage(commits_ms, f)
        if outage is None:
            line = f"{f.name}: no payout committed around it"
        else:
            last, first = outage
            first_after_s = (first - f.at_wall_ms) / 1000
            since = f.at_mono + (last - f.at_wall_ms) / 1000  # the outage, on the clients' clock
            until = f.at_mono + first_after_s
            f.answers = dict(Counter(k for t, k in codes.times if since <= t <= until))
            line = (
                f"{f.name}: {f.old_leader} → {f.new_leader} (leader after "
                f"{f.leader_after_s or 0:.1f} s); no payout committed for "
                f"{(first - last) / 1000:.1f} s; first payout on the new primary "
                f"{first_after_s:.1f} s after the fault; answers meanwhile {f.answers}"
            )
        say(line)
        lines.append(line)
    return lines


def check(d: HADeployment, api_key: str, tally: Tally, measure_only: bool) -> list[str]:
    """Every invariant, against the client's own record. In a measurement (--async) the
    losses are printed and returned as the second list, not as problems."""
    problems: list[str] = []
    leader = d.cluster.leader()
    if leader is None:
        return ["no leader after the run"]
    url = leader.url(DATABASE)  # the surviving primary itself, no proxy in between
    rows = {
        r["id"]: r
        for r in _sql(
            url,
            "SELECT id, amount + fee AS cost, state FROM payouts WHERE project_id = $1",
            PROJECT,
        )
    }
    acked = tally.ledger.payouts
    lost = [p for p in acked.values() if p.payout_id not in rows]
    lost_201 = [p for p in lost if p.payout_id in tally.created_201]
    wrong = [
        p.payout_id
        for p in acked.values()
        if p.payout_id in rows and int(rows[p.payout_id]["cost"]) != p.total_cost_sats
    ]
    say(
        f"acknowledged payouts: {len(acked)}; in the database: {len(acked) - len(lost)}; "
        f"LOST: {len(lost)} (of them answered 201: {len(lost_201)}); "
        f"lost sats {sum(p.total_cost_sats for p in lost)}"
    )
    loss = []
    if lost:
        loss.append(f"{len(lost)} acknowledged payouts lost: {[p.payout_id for p in lost[:3]]}")
    if wrong:
        problems.append(f"{len(wrong)} payouts with another charge than answered: {wrong[:3]}")
    unknown = set(rows) - set(acked)
    if unknown:
        problems.append(f"{len(unknown)} payouts in the database no client was told about")

    node = _sql(
        url,
        """
        SELECT
          (SELECT count(*) FROM payouts WHERE project_id = $1
             AND state NOT IN ('completed', 'failed', 'expired')) AS not_final,
          (SELECT coalesce(sum(amount + fee), 0) FROM payouts
             WHERE project_id = $1 AND state = 'completed') AS charged,
          (SELECT coalesce(sum(amount), 0) FROM payouts
             WHERE project_id = $1 AND state = 'completed') AS paid_by_ledger,
          (SELECT coalesce(sum(n.amount), 0) FROM sim_node_payments n
             WHERE n.status = 'succeeded') AS paid_by_node,
          (SELECT count(*) FROM payouts p JOIN sim_node_payments n ON n.payment_id = p.id
             WHERE n.status = 'succeeded' AND p.state <> 'completed') AS paid_not_done,
          (SELECT count(*) FROM payouts p WHERE p.state = 'completed' AND NOT EXISTS (
             SELECT 1 FROM sim_node_payments n
             WHERE n.payment_id = p.id AND n.status = 'succeeded')) AS done_not_paid,
          (SELECT count(*) FROM sim_node_payments n WHERE n.status = 'succeeded'
             AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.id = n.payment_id))
             AS paid_unknown_payout
        """,
        PROJECT,
    )[0]
    say(f"database: {node}")
    if node["not_final"]:
        problems.append(f"{node['not_final']} payouts not final in the database")
    if node["paid_not_done"] or node["done_not_paid"] or node["paid_unknown_payout"]:
        problems.append(f"node payments and payouts disagree: {node}")
    if node["paid_by_node"] != node["paid_by_ledger"]:
        problems.append(
            f"the node paid {node['paid_by_node']} sats, the ledger says {node['paid_by_ledger']}"
        )
    not_completed = [
        f"{i} {rows[i]['state']}"
        for i in sorted(tally.created_201)
        if i in rows and rows[i]["state"] != "completed"
    ]
    if not_completed:
        problems.append(f"{len(not_completed)} answered 201, now: {not_completed[:3]}")
    with httpx.Client(base_url=d.base, headers={"apikey": api_key}, timeout=10) as c:
        balance = c.get(f"/api/v1/projects/{PROJECT}/balance").json()["data"]
    expected = tally.ledger.expected_balance(PROJECT)
    if balance["balance"] != expected or balance["reserved"] != 0:
        (loss if lost else problems).append(
            f"API balance {balance} != client ledger {expected} (reserved 0)"
        )
    if FUNDING_SATS - int(node["charged"]) != balance["balance"]:
        problems.append(f"funded {FUNDING_SATS} − charged {node['charged']} != {balance}")
    reconcile = subprocess.run(
        # --full: every payout, not only what changed since the server's last checkpoint
        [sys.executable, "-m", "payrail.entrypoints.cli.app", "reconcile", "--full", "--json"],
        env={**d.env, "PAYRAIL_DATABASE_URL": url},
        capture_output=True,
        text=True,
        cwd=d.root,
        timeout=120,
    )
    if reconcile.returncode != 0:
        problems.append(
            f"reconcile exit {reconcile.returncode}: {reconcile.stdout[-800:]}"
            f"{reconcile.stderr[-800:]}"
        )
    else:
        out = reconcile.stdout
        checked = json.loads(out[out.index('{\n  "clean"') :]).get("payoutsChecked")
        say(f"reconcile clean on the surviving primary {leader.name} over {checked} payouts")
    if tally.errors_500:
        problems.append(f"{len(tally.errors_500)} answers were 500: {tally.errors_500[:2]}")
    if tally.unexpected:
        problems.append(f"unexpected answers: {tally.unexpected[:3]}")
    if tally.ledger.conflicts:
        problems.append(f"answers contradict each other: {tally.ledger.conflicts[:3]}")
    if measure_only:
        # --async is a measurement: what asynchronous replication broke is its result
        for line in loss + problems:
            say(f"measured (asynchronous replication): {line}")
        return []
    return problems + loss


def read_loop(base: str, api_key: str, stop: threading.Event, counts: Counter[str]) -> None:
    """A dashboard-like reader: the newest 50 payouts, again and again."""
    with httpx.Client(base_url=base, headers={"apikey": api_key}, timeout=10) as c:
        while not stop.is_set():
            try:
                r = c.get("/api/v1/payouts", params={"limit": 50})
                counts[str(r.status_code)] += 1
            except httpx.TransportError:
                counts["transport"] += 1


def measure(d: HADeployment, api_key: str, tally: Tally, seconds: float, readers: int) -> None:
    """No faults: payouts/s and the CPU per payout of the primary and of the replicas, in
    this replication mode, with `readers` list readers beside the 30 paying clients."""
    leader = d.cluster.leader()
    assert leader is not None
    primary = [leader.postmaster_pid()]
    replicas = [m.postmaster_pid() for m in d.cluster.members if m is not leader]
    assert None not in primary and None not in replicas
    before_n = len(tally.ledger.payouts)
    before = _cpu_s(primary), _cpu_s(replicas)  # type: ignore[arg-type]
    stop = threading.Event()
    reads: Counter[str] = Counter()
    started = time.monotonic()
    threads = start_clients(d.base, api_key, tally, stop, offset=5_000)
    reading = [
        threading.Thread(target=read_loop, args=(d.base, api_key, stop, reads), daemon=True)
        for _ in range(readers)
    ]
    for t in reading:
        t.start()
    time.sleep(seconds)
    stop_clients(stop, threads + reading)
    elapsed = time.monotonic() - started
    count = max(len(tally.ledger.payouts) - before_n, 1)
    primary_ms = (_cpu_s(primary) - before[0]) * 1000 / count  # type: ignore[arg-type]
    replicas_ms = (_cpu_s(replicas) - before[1]) * 1000 / count  # type: ignore[arg-type]
    mode = "synchronous" if d.cluster.synchronous else "asynchronous"
    where = "replicas" if "PAYRAIL_READ_DATABASE_URL" in d.env else "primary"
    say(
        f"measure ({mode}, no faults, {readers} list readers on the {where}): {count} payouts "
        f"in {elapsed:.0f} s = {count / elapsed:.1f} payouts/s, {sum(reads.values()) / elapsed:.1f}"
        f" lists/s {dict(reads)}; CPU ms per payout: primary {primary_ms:.1f}, "
        f"replicas {replicas_ms:.1f}"
    )


class Deadline(BaseException):
    """The run's hard deadline passed (a BaseException: nothing may swallow it)."""


def _on_signal(signum: int, _frame: Any) -> None:
    if signum == signal.SIGALRM:
        raise Deadline(f"the run passed its deadline of {RUN_DEADLINE_S} s")
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m payrail_tools.hatest.run")
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="synchronous_mode off: measure what asynchronous replication loses",
    )
    parser.add_argument(
        "--strict", action="store_true", help="synchronous_mode_strict on (commits wait)"
    )
    parser.add_argument(
        "--measure-s",
        type=float,
        default=0.0,
        help="no faults: payouts/s and the primary's CPU per payout for this many seconds",
    )
    parser.add_argument(
        "--readers",
        type=int,
        default=0,
        help="with --measure-s: this many clients listing payouts beside the paying ones",
    )
    parser.add_argument(
        "--reads-on-primary",
        action="store_true",
        help="no PAYRAIL_READ_DATABASE_URL: the lists read the primary too",
    )
    args = parser.parse_args(argv)
    if args.asynchronous and args.strict:
        parser.error("--strict needs synchronous mode")
    signal.signal(signal.SIGALRM, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.alarm(RUN_DEADLINE_S)
    started_at = time.monotonic()
    d = HADeployment(
        synchronous=not args.asynchronous,
        strict=args.strict,
        read_replica=not args.reads_on_primary,
    )
    tally = Tally()
    codes = TimedCounter()
    tally.codes = codes
    problems: list[str] = []
    try:
        d.up()
        api_key = setup_project(d.base, tally, faults=not args.measure_s)
        if args.measure_s:
            measure(d, api_key, tally, min(args.measure_s, 120.0), args.readers)
        else:
            say(f"load: {CLIENTS} clients through HAProxy, sandbox node faults {FAULTS}")
            stop = threading.Event()
            load_started = time.monotonic()
            threads = start_clients(d.base, api_key, tally, stop)
            faults = Faults(d, api_key, tally)
            try:
                faults.run(load_started)
            finally:
                stop_clients(stop, threads)
                if faults.batch_thread is not None:
                    faults.batch_thread.join(REQUEST_TIMEOUT_S * 3)
            load_s = time.monotonic() - load_started
            say(f"answers: {dict(codes)}; {len(tally.ledger.payouts)} payouts in {load_s:.0f} s")
        forgotten = forget_lost_pending(d.base, api_key, tally)
        if forgotten:
            say(f"{forgotten} payouts answered pending are unknown to the database now")
        problems += settle(d.base, api_key, tally)
        say(f"final statuses: {tally.ledger.status_counts()}")
        if not args.measure_s:
            report(d, faults.done, codes)
            say(f"pg_rewind runs per member: {rewinds(d)}")
        problems += check(d, api_key, tally, measure_only=args.asynchronous)
    except (PartFailed, subprocess.SubprocessError, httpx.HTTPError, OSError) as exc:
        detail = getattr(exc, "stderr", None) or b""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        problems.append(f"{type(exc).__name__}: {exc} {detail[-1000:]}")
    except (KeyboardInterrupt, Deadline) as exc:
        problems.append(f"interrupted: {exc}")
    finally:
        signal.alarm(0)
        if problems:
            for part in (*d.nodes, d.worker):
                say(f"--- {part.name} log tail ---\n{part.tail()}")
            for m in d.cluster.members:
                say(f"--- {m.name} Patroni log tail ---\n{m.tail(1500)}")
        d.down()
        if not problems:
            import shutil

            shutil.rmtree(d.root, ignore_errors=True)
    elapsed = time.monotonic() - started_at
    if problems:
        say(f"FAILED after {elapsed:.0f} s (logs kept in {d.root}):")
        for p in problems:
            say(f"  - {p}")
        return 1
    if args.asynchronous:
        say(f"measured in {elapsed:.0f} s: asynchronous replication's losses are above")
    else:
        say(f"passed in {elapsed:.0f} s: every invariant held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
