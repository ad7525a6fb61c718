"""`--start-server`: a real `payrail serve` on a free loopback port, on a fresh database.

A subprocess, not an in-process app: the harness measures the server a studio would run, and
the server keeps its own event loop far from Locust's gevent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from payrail_tools.loadtest.api import HarnessError
from payrail_tools.loadtest.guard import DatabaseTarget

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HEALTH_POLL_S = 0.2
RECREATE_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 30


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    admin_key: str
    sandbox_key: str
    log_path: Path
    log: TextIO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recreate_database(target: DatabaseTarget) -> None:
    if target.kind == "sqlite":
        path = target.sqlite_path
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    done = subprocess.run(
        [sys.executable, "-m", "payrail_tools.loadtest.pgadmin", target.url],
        capture_output=True,
        text=True,
        timeout=RECREATE_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise HarnessError(f"could not recreate database {target.name}: {done.stderr.strip()}")


def start(target: DatabaseTarget, log_path: Path) -> Server:
    """Recreate the database, then start the server with a clean PAYRAIL_* environment."""
    recreate_database(target)
    port = free_port()
    admin_key = "lt_admin_" + secrets.token_urlsafe(24)
    sandbox_key = "lt_sandbox_" + secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYRAIL_")}
    env |= {
        "PAYRAIL_MODE": "sandbox",
        "PAYRAIL_HOST": "127.0.0.1",
        "PAYRAIL_PORT": str(port),
        "PAYRAIL_DATABASE_URL": target.url,
        "PAYRAIL_ADMIN_KEY": admin_key,
        "PAYRAIL_SANDBOX_API_KEY": sandbox_key,
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "payrail.entrypoints.cli.app", "serve", "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a stuck child can be stopped too
    )
    server = Server(process, f"http://127.0.0.1:{port}", admin_key, sandbox_key, log_path, log)
    try:
        _wait_healthy(server)
    except BaseException:
        stop(server)
        raise
    return server


def _log_tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise HarnessError(
                    f"the server exited with code {server.process.returncode}; "
                    f"{server.log_path} ends:\n{_log_tail(server.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/health").status_code == 200:
                    return
            time.sleep(HEALTH_POLL_S)
    raise HarnessError(
        f"the server was not healthy within {START_TIMEOUT_S:.0f} s; see {server.log_path}:\n"
        + _log_tail(server.log_path)
    )


def stop(server: Server) -> None:
    """SIGTERM (a graceful uvicorn shutdown), then SIGKILL to its group if it hangs."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # Still alive, so its group is still ours: take it down with any children.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_S)
    server.log.close()
