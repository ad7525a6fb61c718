"""The real parts of the reference deployment, as local processes a test can start and kill:
a PostgreSQL instance of its own (initdb in a folder), PgBouncer in transaction pooling mode,
HAProxy health-checking /ready, `payrail serve --workers N` nodes and a `payrail worker`.

Everything listens on 127.0.0.1 only. PostgreSQL and PgBouncer refuse to run as root, so
when we are root they run as the `postgres` system user (which Debian's packages create).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_S = 60  # a part that does not come up within this is a failure
STOP_S = 30
POLL_S = 0.2
PG_MAX_CONNECTIONS = 200
PGBOUNCER_POOL_SIZE = 20  # server connections per database/user pair
PGBOUNCER_MAX_CLIENTS = 400
SERVICE_USER = "postgres"


class PartFailed(RuntimeError):
    """A part did not start or stop as it should; the message says which and why."""


def _as_service_user() -> list[str]:
    return [tool("runuser") or "runuser", "-u", SERVICE_USER, "--"] if os.geteuid() == 0 else []


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)


def tool(name: str) -> str | None:
    """A daemon's binary: PATH first, then /usr/sbin (where Debian puts pgbouncer and haproxy,
    often not on a non-root PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: PATH first, then Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise PartFailed(f"{name} not found (install postgresql-server binaries)")
    return candidates[-1]


def service_dir(prefix: str) -> Path:
    """A fresh folder the service user can reach (pytest's tmp_path is private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    _own(path)
    return path


def wait_port(
    port: int,
    what: str,
    timeout_s: float = STARTUP_S,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise PartFailed(f"{what} exited with {proc.returncode}: {detail}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL_S)
    raise PartFailed(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s} s")


@dataclass
class Postgres:
    """Our own PostgreSQL instance: restartable without touching anyone else's."""

    directory: Path
    port: int

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _own(self.directory)
        subprocess.run(
            [*_as_service_user(), pg_bin("initdb"), "-D", str(self.data), "-A", "trust"]
            + ["-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
        )

    def _ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={PG_MAX_CONNECTIONS} -c fsync=off"
        )  # fsync off: a process crash keeps the OS page cache; commits stay synchronous
        subprocess.run(
            [*_as_service_user(), pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
            + ["-l", str(self.directory / "postgres.log"), "-o", options, *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._ctl("start")
        wait_port(self.port, "PostgreSQL")

    def restart_immediate(self) -> None:
        """`pg_ctl restart -m immediate`: every backend dies mid-transaction, crash recovery."""
        self._ctl("restart", "-m", "immediate")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", "fast")

    def sql(self, statement: str, database: str = "postgres") -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.url(database), timeout=10)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode in front of one PostgreSQL server."""

    directory: Path
    port: int
    server_port: int
    proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?pgbouncer=1"

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        _own(self.directory)
        users = self.directory / "userlist.txt"
        users.write_text('"postgres" ""\n')
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.directory}\n"
            f"auth_type = trust\nauth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {PGBOUNCER_POOL_SIZE}\n"
            f"max_client_conn = {PGBOUNCER_MAX_CLIENTS}\n"
            "server_reset_query =\n"
            # a server connection that died with PostgreSQL is noticed at once, and replaced
            "server_check_delay = 0\nserver_login_retry = 1\n"
            "query_wait_timeout = 30\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
        )
        for path in (users, ini):
            _own(path)
        return ini

    def start(self) -> None:
        ini = self.write_config()
        user = ["-u", SERVICE_USER] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [tool("pgbouncer") or "pgbouncer", *user, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, "PgBouncer", proc=self.proc, log=self.directory / "pgbouncer.log")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class HAProxy:
    """HAProxy spreading requests over the nodes; a node is in rotation while /ready is 200."""

    directory: Path
    port: int
    backends: list[int]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        servers = "".join(
            f"    server node{i} 127.0.0.1:{p} check inter 500 fall 2 rise 1\n"
            for i, p in enumerate(self.backends)
        )
        cfg = self.directory / "haproxy.cfg"
        cfg.write_text(
            "global\n    maxconn 1000\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n"
            "    timeout server 60s\n    retries 3\n    option redispatch\n"
            # a request never sent (connection refused) goes to another node; a request that
            # reached a node is never resent by the proxy: the client decides, with its key
            "    retry-on conn-failure\n"
            f"frontend api\n    bind 127.0.0.1:{self.port}\n    default_backend nodes\n"
            "backend nodes\n    balance roundrobin\n"
            "    option httpchk GET /ready\n    http-check expect status 200\n" + servers
        )
        self.proc = subprocess.Popen(
            [tool("haproxy") or "haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "haproxy.log").open("ab"),
            start_new_session=True,
        )
        wait_port(self.port, "HAProxy", proc=self.proc, log=self.directory / "haproxy.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(STOP_S)


@dataclass
class PayrailProcess:
    """`payrail serve --workers N` (a node) or `payrail worker`, in its own session so that
    its whole process tree can be killed at once."""

    name: str
    args: list[str]
    env: dict[str, str]
    directory: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "payrail.entrypoints.cli.app", *self.args],
            env=self.env,
            cwd=self.directory,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.starts += 1

    def wait_ready(self, timeout_s: float = STARTUP_S) -> None:
        """A node: /health answers (readiness also needs a worker, which may come later)."""
        if self.port is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PartFailed(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
        raise PartFailed(f"{self.name} did not answer /health within {timeout_s} s")

    def kill_tree(self) -> None:
        """kill -9 of the whole process group (parent and every child)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_S)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.kill_tree()

    def tail(self, chars: int = 1500) -> str:
        path = self.directory / f"{self.name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""
