"""A real `payrail serve --workers 2`: its children die with their parent (even by SIGKILL),
so a restart binds the port at once; SIGTERM lets an in-flight payout finish; a batch killed
by SIGKILL mid-settlement is recovered after the restart and charged once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import _truncate

from payrail.entrypoints.supervise import SUPERVISOR_PID_ENV, guard_child

PORT = 18_471  # inside this test's reserved range
BASE = f"http://127.0.0.1:{PORT}"
KEY = {"apikey": "test_api_key_12345"}
STARTUP_S = 60
EXIT_S = 30


@pytest.fixture
def served(pg_url: str, tmp_path: Path) -> Path:
    """Several server processes need PostgreSQL (serve refuses --workers N on SQLite): this
    session's test database, emptied first; the servers' working folder is tmp_path."""
    asyncio.run(_truncate(pg_url))
    (tmp_path / "database_url").write_text(pg_url)
    return tmp_path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(SUPERVISOR_PID_ENV, None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve makes its own under cwd (tmp_path)
    env.update(
        PAYRAIL_DATABASE_URL=(tmp_path / "database_url").read_text(),
        PAYRAIL_PORT=str(PORT),
        PAYRAIL_MODE="sandbox",
        **extra,
    )
    return env


def _start(tmp_path: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "payrail.entrypoints.cli.app", "serve", "--workers", "2"],
        env=_env(tmp_path, **extra_env),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("ab"),
        start_new_session=True,
    )
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"serve exited with {proc.returncode}: {(tmp_path / 'serve.log').read_text()[-2000:]}"
        )
        try:
            if httpx.get(f"{BASE}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"serve did not answer /health within {STARTUP_S} s")


def _servers(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The server children (not multiprocessing's resource tracker), once both are up."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        kids = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())
        ]
        if len(kids) >= 2:
            return kids
        time.sleep(0.2)
    pytest.fail("serve --workers 2 did not start two children")


def _wait_gone(procs: list[psutil.Process]) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=EXIT_S)
    return alive


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(EXIT_S)


def test_children_exit_when_the_parent_is_killed_and_a_restart_binds(served: Path) -> None:
    tmp_path = served
    first = _start(tmp_path)
    try:
        children = _servers(first)
        descendants = psutil.Process(first.pid).children(recursive=True)
        first.send_signal(signal.SIGKILL)  # the parent only, as a crash or OOM kill would
        first.wait(EXIT_S)
        survivors = _wait_gone(descendants)
        assert survivors == [], f"children outlived their parent: {survivors}"
        assert all(not c.is_running() for c in children)
    finally:
        for p in psutil.process_iter():
            # whatever survived in this test's session must not hold the port for the next test
            try:
                if os.getsid(p.pid) == first.pid:
                    p.kill()
            except (ProcessLookupError, psutil.Error):
                pass
    second = _start(tmp_path)  # binds at once: no "Address already in use"
    try:
        assert httpx.get(f"{BASE}/health", timeout=5).status_code == 200
        assert len(_servers(second)) >= 2
    finally:
        _stop(second)


def test_sigterm_lets_an_in_flight_payout_finish(served: Path) -> None:
    tmp_path = served
    proc = _start(tmp_path)
    try:
        _servers(proc)
        # every node call takes 3 s, so the payout is still running when SIGTERM arrives
        httpx.post(
            f"{BASE}/api/v1/test/failure-injection",
            headers=KEY,
            json={"enabled": True, "latencyMs": 3000},
            timeout=10,
        ).raise_for_status()
        before = httpx.get(
            f"{BASE}/api/v1/projects/project_test_001/balance", headers=KEY, timeout=10
        ).json()["data"]["balance"]
        answer: dict[str, httpx.Response] = {}

        def pay() -> None:
            answer["r"] = httpx.post(
                f"{BASE}/api/v1/payouts",
                headers=KEY | {"Idempotency-Key": "drain-1"},
                json={"gamertag": "drain", "amount": 1000, "projectId": "project_test_001"},
                timeout=30,
            )

        client = threading.Thread(target=pay)
        client.start()
        _wait_in_flight()
        proc.send_signal(signal.SIGTERM)
        client.join(EXIT_S)
        assert proc.wait(EXIT_S) == 0
    finally:
        _stop(proc)
    response = answer["r"]
    assert response.status_code == 201, response.text
    assert response.json()["data"]["status"] == "completed"
    # the drained payout is charged exactly once: a fresh server sees the balance moved by 1,020
    again = _start(tmp_path)
    try:
        after = httpx.get(
            f"{BASE}/api/v1/projects/project_test_001/balance", headers=KEY, timeout=10
        ).json()["data"]["balance"]
    finally:
        _stop(again)
    assert before - after == 1020


def _wait_in_flight() -> None:
    """Until the payout is committed as pending: its node call (3 s) has begun."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        listed = httpx.get(f"{BASE}/api/v1/payouts?limit=1", headers=KEY, timeout=10).json()
        if listed["data"]["count"]:
            return
        time.sleep(0.05)
    pytest.fail("the payout never appeared")


# Short leases and node timeouts, so the group job of a killed batch is claimable soon.
QUICK_LEASES = {
    "PAYRAIL_LEASE_MS": "2000",
    "PAYRAIL_NODE_TIMEOUT_MS": "1000",
    "PAYRAIL_CALLBACK_TIMEOUT_MS": "1000",
}
BATCH_ITEMS = 30


def _api(method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = KEY | ({"Idempotency-Key": key} if key else {})
    return httpx.request(method, f"{BASE}/api/v1{path}", headers=headers, timeout=30, **kwargs)


def _listed() -> list[dict]:
    return _api("GET", "/payouts?limit=100").json()["data"]["payouts"]


def test_a_batch_killed_by_sigkill_mid_settlement_is_paid_once_after_restart(
    served: Path,
) -> None:
    """kill -9 of every server process while a batch's node calls are under way: after a
    restart the group job's lease runs out, the worker hands each payout its own settle job,
    each asks the node, and every item is charged exactly once (reconcile clean)."""
    tmp_path = served
    first = _start(tmp_path, **QUICK_LEASES)
    try:
        _servers(first)
        before = _api("GET", "/projects/project_test_001/balance").json()["data"]["balance"]
        _api("POST", "/test/failure-injection", json={"enabled": True, "latencyMs": 3000})
        items = [{"gamertag": f"k9-{i}", "amount": 100 + i} for i in range(BATCH_ITEMS)]
        body = {"projectId": "project_test_001", "items": items}

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                _api("POST", "/payouts/batch", "k9", json=body)

        threading.Thread(target=send, daemon=True).start()
        deadline = time.monotonic() + STARTUP_S
        while len(_listed()) < BATCH_ITEMS:  # every item reserved; node calls take 3 s
            assert time.monotonic() < deadline, "the batch's payouts never appeared"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(EXIT_S)
    finally:
        _stop(first)
    second = _start(tmp_path, **QUICK_LEASES)
    try:
        _api("POST", "/test/failure-injection", json={"enabled": False})
        deadline = time.monotonic() + STARTUP_S
        while any(p["status"] == "pending" for p in _listed()):
            assert time.monotonic() < deadline, f"still pending: {_listed()}"
            time.sleep(0.2)
        listed = _listed()
        assert sorted(p["status"] for p in listed) == ["completed"] * BATCH_ITEMS
        after = _api("GET", "/projects/project_test_001/balance").json()["data"]
        assert after["reserved"] == 0
        assert before - after["balance"] == sum(p["amount"] + p["fee"] for p in listed)
        # The batch never answered, so nothing was stored: sent again, each item is a replay.
        again = _api("POST", "/payouts/batch", "k9", json=body)
        assert [a["httpStatus"] for a in again.json()["data"]["items"]] == [200] * BATCH_ITEMS
        final = _api("GET", "/projects/project_test_001/balance").json()["data"]["balance"]
        assert final == after["balance"]
    finally:
        _stop(second)
    reconciled = subprocess.run(
        [sys.executable, "-m", "payrail.entrypoints.cli.app", "reconcile"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr


def test_guard_does_nothing_without_a_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SUPERVISOR_PID_ENV, raising=False)
    assert guard_child() == "none"
    monkeypatch.setenv(SUPERVISOR_PID_ENV, str(os.getpid()))  # `--workers 1`: we are the parent
    assert guard_child() == "none"
