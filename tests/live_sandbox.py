"""A real `payrail serve` in sandbox mode on its own SQLite file, for tests that must talk to
a server the way a user does (the docs' examples, a script killed mid-run)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_S = 60.0
STOP_S = 20.0


@dataclass
class Sandbox:
    base: str  # http://127.0.0.1:PORT
    port: int
    database_url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def api(self) -> str:
        return f"{self.base}/api/v1"


@contextlib.contextmanager
def sandbox_server(workdir: Path, port: int, **env: str) -> Iterator[Sandbox]:
    """`payrail serve` on 127.0.0.1:port with a fresh SQLite database under workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{workdir / 'sandbox.db'}"
    full = dict(os.environ)
    for name in [n for n in full if n.startswith("PAYRAIL_")]:
        full.pop(name)  # the defaults a newcomer gets, but for the port and the database
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full |= {"PAYRAIL_PORT": str(port), "PAYRAIL_DATABASE_URL": database_url} | env
    stdout, stderr = workdir / "serve.out", workdir / "serve.err"
    process = subprocess.Popen(
        [sys.executable, "-m", "payrail.entrypoints.cli.app", "serve"],
        cwd=workdir,
        env=full,
        stdout=stdout.open("wb"),
        stderr=stderr.open("wb"),
        start_new_session=True,
    )
    sandbox = Sandbox(f"http://127.0.0.1:{port}", port, database_url, process, stdout, stderr)
    try:
        _wait_healthy(sandbox)
        yield sandbox
    finally:
        _stop(process)


def _wait_healthy(sandbox: Sandbox) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if sandbox.process.poll() is not None:
            raise RuntimeError(f"serve exited: {sandbox.stderr.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{sandbox.base}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"serve was not ready within {STARTUP_S} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_S)
