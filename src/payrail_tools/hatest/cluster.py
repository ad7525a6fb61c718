"""The high-availability parts as local processes: one etcd, three PostgreSQL 15 members each
under its own Patroni, HAProxy finding the primary through Patroni's REST API, and PgBouncer in
front of HAProxy's two PostgreSQL ports (primary, replicas).

The configuration files are the ones shipped under ops/ (ops/patroni/patroni.yml,
ops/haproxy/payrail-ha.cfg, ops/pgbouncer/payrail-ha.ini), filled in with string.Template:
what an operator copies is what this test runs. Everything listens on 127.0.0.1; PostgreSQL
and Patroni run as the `postgres` system user when we are root (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import httpx

from payrail_tools.deploytest.parts import (
    SERVICE_USER,
    STARTUP_S,
    STOP_S,
    PartFailed,
    _own,
    pg_bin,
    tool,
    wait_port,
)

OPS = Path(__file__).resolve().parents[3] / "ops"
PASSWORD = "ha26_not_secret"  # trust auth on loopback: the password is never checked here
HEALTHY_WAIT_S = 90.0  # a cluster that has no leader and streaming replicas by then failed
POLL_S = 0.25


def render(template: Path, out: Path, **values: Any) -> Path:
    """Fill in one of the ops/ files (every ${name} must be given: a typo fails loudly)."""
    out.write_text(
        Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    )
    _own(out)
    return out


def pg_bin_dir() -> Path:
    """The folder of PostgreSQL's server binaries (Patroni needs pg_controldata, pg_rewind,
    pg_basebackup there too, which a PATH with only a pg_ctl link lacks)."""
    return Path(os.path.realpath(pg_bin("pg_ctl"))).parent


def _service_user_kwargs() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    return {"user": SERVICE_USER, "group": SERVICE_USER, "extra_groups": []}


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Etcd:
    directory: Path
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = self.directory / "etcd.log"
        self.proc = subprocess.Popen(
            [tool("etcd") or "etcd", "--name", "e0", "--data-dir", str(self.directory / "data")]
            + ["--listen-client-urls", client, "--advertise-client-urls", client]
            + ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
            + ["--initial-cluster", f"e0={peer}", "--initial-cluster-state", "new"]
            + ["--log-level", "warn"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,
        )
        wait_port(self.client_port, "etcd", proc=self.proc, log=log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)


@dataclass
class Member:
    """One PostgreSQL member under its own Patroni (a 'machine' of the cluster)."""

    name: str
    directory: Path
    pg_port: int
    rest_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    down_on_purpose: bool = False  # its machine was killed: Patroni's exit is expected

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def config(self) -> Path:
        return self.directory / "patroni.yml"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{database}"

    def write_config(self, etcd: Etcd, synchronous: bool, strict: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        _own(self.directory)
        render(
            OPS / "patroni" / "patroni.yml",
            self.config,
            name=self.name,
            rest_port=self.rest_port,
            etcd_hosts=etcd.hosts,
            synchronous_mode="true" if synchronous else "false",
            synchronous_mode_strict="true" if strict else "false",
            # a killed process keeps the OS page cache, so commits stay durable across the
            # kills of this test; disk flushes would only slow the shared 2-core machine
            fsync="off",
            pg_port=self.pg_port,
            data_dir=self.data,
            bin_dir=pg_bin_dir(),
            directory=self.directory,
            password=PASSWORD,
            hba_method="trust",
        )

    def start(self) -> None:
        log = (self.directory / "patroni.log").open("ab")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "LC_ALL": "C.UTF-8",
        }
        self.down_on_purpose = False
        self.proc = subprocess.Popen(
            [tool("patroni") or "patroni", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=self.directory,
            start_new_session=True,
            **_service_user_kwargs(),
        )
        self.starts += 1

    def postmaster_pid(self) -> int | None:
        return _read_pid(self.data / "postmaster.pid")

    def kill_postgres(self) -> int:
        """kill -9 the postmaster and every child of it at once (Patroni stays up). Returns
        how many processes were killed."""
        import psutil

        pid = self.postmaster_pid()
        if pid is None:
            raise PartFailed(f"{self.name}: no postmaster.pid to kill")
        try:
            children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            children = []
        _kill_pids([pid, *children])
        return 1 + len(children)

    def walsenders(self) -> list[int]:
        """The pids of this member's WAL senders (a primary has one per streaming replica)."""
        import psutil

        pid = self.postmaster_pid()
        if pid is None:
            return []
        try:
            children = psutil.Process(pid).children()
            return [c.pid for c in children if "walsender" in " ".join(c.cmdline())]
        except psutil.Error:
            return []

    def kill_machine(self) -> int:
        """The member's machine dies: kill -9 Patroni and PostgreSQL (postmaster and children),
        nothing gets to say goodbye; the leader key expires after the DCS ttl."""
        killed = 0
        self.down_on_purpose = True
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_S)
            killed += 1
        if self.postmaster_pid() is not None:
            with contextlib.suppress(PartFailed):
                killed += self.kill_postgres()
        return killed

    def state(self) -> dict[str, Any]:
        """Patroni's own view (GET /patroni), or {} when its REST API does not answer."""
        try:
            r = httpx.get(f"{self.rest}/patroni", timeout=2)
            return r.json() if r.status_code in (200, 503) else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def stop(self) -> None:
        """SIGTERM Patroni (it stops PostgreSQL fast); then make sure nothing is left."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_S)
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(
                    [pg_bin("pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate"],
                    capture_output=True,
                    timeout=STOP_S,
                    **_service_user_kwargs(),
                )
            with contextlib.suppress(PartFailed):
                self.kill_postgres()  # whatever is still there

    def tail(self, chars: int = 2000) -> str:
        path = self.directory / "patroni.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@dataclass
class Cluster:
    etcd: Etcd
    members: list[Member]
    synchronous: bool = True
    strict: bool = False
    events: list[str] = field(default_factory=list)

    def up(self) -> None:
        self.etcd.start()
        for m in self.members:
            m.write_config(self.etcd, self.synchronous, self.strict)
        self.members[0].start()  # the first one bootstraps (initdb); the others clone it
        self.wait(lambda: self.leader() is not None, "a leader after bootstrap")
        for m in self.members[1:]:
            m.start()
        self.wait_healthy()

    def ctl(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("patronictl") or "patronictl", "-c", str(self.members[0].config), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )

    def listing(self) -> list[dict[str, Any]]:
        """`patronictl list -f json`: Member, Role (Leader, Sync Standby, Replica), State."""
        try:
            return json.loads(self.ctl("list", "-f", "json", timeout_s=20).stdout)
        except (subprocess.SubprocessError, ValueError):
            return []

    def leader(self) -> Member | None:
        for m in self.members:
            try:
                if httpx.get(f"{m.rest}/primary", timeout=1).status_code == 200:
                    return m
            except httpx.HTTPError:
                continue
        return None

    def by_name(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def sync_standby(self) -> Member | None:
        for row in self.listing():
            if row.get("Role") == "Sync Standby" and row.get("State") in ("streaming", "running"):
                return self.by_name(row["Member"])
        return None

    def healthy(self, members: int | None = None) -> bool:
        """A leader, and every other (or `members` - 1) member streaming from it; in
        synchronous mode one of them is the synchronous standby."""
        rows = self.listing()
        want = (members or len(self.members)) - 1
        leaders = [r for r in rows if r.get("Role") == "Leader" and r.get("State") == "running"]
        streaming = [
            r
            for r in rows
            if r.get("Role") in ("Replica", "Sync Standby")
            and r.get("State") in ("streaming", "running")  # Patroni 3.0 says running
        ]
        sync_ok = not self.synchronous or any(r.get("Role") == "Sync Standby" for r in streaming)
        return len(leaders) == 1 and len(streaming) >= want and sync_ok

    def wait_healthy(self, members: int | None = None, timeout_s: float = HEALTHY_WAIT_S) -> float:
        return self.wait(
            lambda: self.healthy(members), "a leader and streaming replicas", timeout_s
        )

    def wait(self, condition: Any, what: str, timeout_s: float = HEALTHY_WAIT_S) -> float:
        """Poll until `condition()`; returns the seconds it took, or raises PartFailed."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None and not m.down_on_purpose:
                    raise PartFailed(f"Patroni {m.name} exited: {m.tail()}")
            if condition():
                return time.monotonic() - started
            time.sleep(POLL_S)
        raise PartFailed(f"no {what} within {timeout_s:.0f} s: {self.listing()}")

    def timeline(self) -> int | None:
        for row in self.listing():
            if row.get("Role") == "Leader":
                return row.get("TL")
        return None

    def down(self) -> None:
        """Stop every member at once, then etcd (Patroni needs it to stop cleanly)."""
        from concurrent.futures import ThreadPoolExecutor

        def stop(m: Member) -> None:
            try:
                m.stop()
            except Exception as exc:  # teardown goes on: every part must be stopped
                print(f"stopping {m.name}: {exc}", flush=True)

        with ThreadPoolExecutor(max_workers=len(self.members)) as pool:
            list(pool.map(stop, self.members))
        self.etcd.stop()


@dataclass
class HAProxyHA:
    """One HAProxy: the API frontend over the nodes, and the primary and replica ports over
    the PostgreSQL members (health from Patroni's REST API)."""

    directory: Path
    api_port: int
    primary_port: int
    replica_port: int
    node_ports: list[int]
    members: list[Member]
    proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        nodes = "\n".join(
            f"    server node{i} 127.0.0.1:{p} check inter 500 fall 2 rise 1"
            for i, p in enumerate(self.node_ports)
        )
        pgs = "\n".join(
            f"    server {m.name} 127.0.0.1:{m.pg_port} check port {m.rest_port}"
            for m in self.members
        )
        return render(
            OPS / "haproxy" / "payrail-ha.cfg",
            self.directory / "haproxy.cfg",
            api_port=self.api_port,
            primary_port=self.primary_port,
            replica_port=self.replica_port,
            node_servers=nodes,
            primary_servers=pgs,
            replica_servers=pgs,
        )

    def start(self) -> None:
        cfg = self.write_config()
        log = self.directory / "haproxy.log"
        self.proc = subprocess.Popen(
            [tool("haproxy") or "haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,
        )
        wait_port(self.api_port, "HAProxy", proc=self.proc, log=log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)


@dataclass
class PgBouncerHA:
    """PgBouncer with two databases: `<db>` to HAProxy's primary port, `<db>_ro` to its
    replica port."""

    directory: Path
    port: int
    database: str
    primary_port: int
    replica_port: int
    proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?pgbouncer=1"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        _own(self.directory)
        users = self.directory / "userlist.txt"
        users.write_text('"postgres" ""\n')
        _own(users)
        ini = render(
            OPS / "pgbouncer" / "payrail-ha.ini",
            self.directory / "pgbouncer.ini",
            database=self.database,
            primary_port=self.primary_port,
            replica_port=self.replica_port,
            listen_port=self.port,
            directory=self.directory,
        )
        user = ["-u", SERVICE_USER] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [tool("pgbouncer") or "pgbouncer", *user, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, "PgBouncer", STARTUP_S, self.proc, self.directory / "pgbouncer.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)
