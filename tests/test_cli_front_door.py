"""An operator's mistakes at the command line (issue 25): one clear line and exit 2, never a
traceback, and nothing created on disk; `serve` says a port is taken before it starts
anything; its banner shows the real balance and where the dashboard and docs are; every log
line, the libraries' too, is one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from payrail.bootstrap import build_runtime
from payrail.config import SANDBOX_PROJECT_ID, Settings
from payrail.db.migrate import upgrade
from payrail.entrypoints.cli.app import _sandbox_balance, start_banner
from payrail.services import projects

PORT_TAKEN = 12_510  # issue 25's range, 12500-12599
PORT_NOBODY = 12_519  # nothing listens here: a database that is down
CLI = [sys.executable, "-m", "payrail.entrypoints.cli.app"]


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ) | {"PAYRAIL_MODE": "sandbox"} | env
    return subprocess.run(
        [*CLI, *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120
    )


def _one_line_exit_2(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_serve_on_a_taken_port_says_so_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", PORT_TAKEN))
        taken.listen()
        db = tmp_path / "fresh.db"
        done = _run(
            tmp_path, "serve", PAYRAIL_PORT=str(PORT_TAKEN), PAYRAIL_DATABASE_URL=f"sqlite:///{db}"
        )
    line = _one_line_exit_2(done)
    assert f"port {PORT_TAKEN}" in line and f"PAYRAIL_PORT={PORT_TAKEN + 1}" in line
    assert done.stdout == ""  # no banner
    assert not db.exists()  # nothing migrated, no worker started


def test_migrate_makes_no_folders_for_a_mistyped_path(tmp_path: Path) -> None:
    done = _run(tmp_path, "migrate", PAYRAIL_DATABASE_URL=f"sqlite:///{tmp_path}/typo/x.db")
    assert "folder" in _one_line_exit_2(done)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "command",
    [["reconcile"], ["projects", "balance", SANDBOX_PROJECT_ID], ["payouts", "list"], ["recover"]],
)
def test_a_command_that_reads_creates_no_empty_database_file(tmp_path: Path, command) -> None:
    db = tmp_path / "missing.db"
    done = _run(tmp_path, *command, PAYRAIL_DATABASE_URL=f"sqlite:///{db}")
    assert "no database file" in _one_line_exit_2(done)
    assert not db.exists()


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["serve"], ["reconcile"], ["projects", "balance", SANDBOX_PROJECT_ID]],
)
def test_an_unreachable_database_is_one_line_naming_it(tmp_path: Path, command) -> None:
    url = f"postgresql://payrail:secret@127.0.0.1:{PORT_NOBODY}/payrail"
    done = _run(tmp_path, *command, PAYRAIL_DATABASE_URL=url, PAYRAIL_PORT=str(PORT_NOBODY + 1))
    line = _one_line_exit_2(done)
    assert f"cannot reach the database postgresql://payrail:***@127.0.0.1:{PORT_NOBODY}" in line
    assert "secret" not in line  # the password is never printed
    assert "has no payrail schema" not in line  # unreachable is not "never migrated"


def test_the_banner_shows_the_real_balance_and_where_to_go(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/b.db", port=12_511)
    upgrade(settings.database_url)
    assert _sandbox_balance(settings) == 100_000  # seeded as the server seeds

    async def spend() -> None:
        rt = build_runtime(settings)
        try:
            await projects.fund(rt, SANDBOX_PROJECT_ID, 2_345, "banner-test")
        finally:
            await rt.aclose()

    asyncio.run(spend())
    banner = start_banner(settings, _sandbox_balance(settings))
    assert "balance 102,345 sats" in banner
    assert "http://127.0.0.1:12511/dashboard" in banner
    assert "http://127.0.0.1:12511/docs" in banner
    (curl,) = [line for line in banner.splitlines() if "curl" in line]
    assert curl.strip().endswith(f"/api/v1/projects/{SANDBOX_PROJECT_ID}/balance")


def test_library_log_lines_are_json_too(tmp_path: Path) -> None:
    script = (
        "import logging, structlog\n"
        "from payrail.support.logging import configure\n"
        "logging.basicConfig(format='%(message)s')\n"  # what a library might do first
        "configure('info')\n"
        "logging.getLogger('httpx').info('HTTP Request: POST %s', 'http://x')\n"
        "logging.getLogger('stripe').warning('message=%s', 'plain')\n"
        "logging.getLogger('uvicorn.error').info('Uvicorn running')\n"
        "structlog.get_logger('payrail').info('payout_done', api_key='k_secret')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 4, done.stderr
    parsed = [json.loads(line) for line in lines]
    assert [p.get("logger") for p in parsed[:3]] == ["httpx", "stripe", "uvicorn.error"]
    assert parsed[0]["event"] == "HTTP Request: POST http://x" and parsed[0]["level"] == "info"
    assert parsed[3]["api_key"] == "[redacted]"
