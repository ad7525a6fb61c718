"""A payout script killed mid-run and run again pays nobody twice (issue 25).

A real `payrail serve` (sandbox, SQLite) and a real script, as a studio would write it with
payrail.client: it pays a tournament's winners in batches without naming any key, so the
client derives each batch's key from its items. The node is slowed (failure injection
latencyMs) so that the script can be killed with SIGKILL while its first batch is being
paid; the script is then run again to the end. Every winner is paid exactly once, and the
project's balance fell by exactly each winner's amount + fee once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from live_sandbox import sandbox_server

PORT = 12_520  # issue 25's range, 12500-12599
KEY = {"apikey": "test_api_key_12345"}
PROJECT = "project_test_001"
WINNERS = 60
BATCH_ITEMS = 20
KILL_WAIT_S = 60.0

SCRIPT = textwrap.dedent(
    f"""
    import sys
    from payrail.client import Client

    winners = [{{"gamertag": f"winner{{i}}", "amount": 100 + i}} for i in range({WINNERS})]
    with Client(sys.argv[1], api_key="test_api_key_12345") as payrail:
        for start in range(0, len(winners), {BATCH_ITEMS}):
            items = winners[start : start + {BATCH_ITEMS}]
            answers = payrail.create_payouts_batch("{PROJECT}", items)
            print("batch", start, [a["httpStatus"] for a in answers], flush=True)
    print("done", flush=True)
    """
)


def _payouts(api: str) -> list[dict]:
    found, cursor = [], None
    while True:
        params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(f"{api}/payouts", params=params, headers=KEY).json()["data"]
        found += page["payouts"]
        cursor = page["nextCursor"]
        if not cursor:
            return found


def _balance(api: str) -> dict:
    return httpx.get(f"{api}/projects/{PROJECT}/balance", headers=KEY).json()["data"]


def test_a_script_killed_mid_batch_and_run_again_pays_each_winner_once(tmp_path: Path) -> None:
    script = tmp_path / "pay_tournament.py"
    script.write_text(SCRIPT)
    with sandbox_server(tmp_path / "server", PORT) as server:
        api = server.api
        start = _balance(api)["balance"]
        slow = {"enabled": True, "latencyMs": 400}  # each node call takes 0.4 s
        assert httpx.post(f"{api}/test/failure-injection", json=slow, headers=KEY).is_success

        first = subprocess.Popen(
            [sys.executable, str(script), server.base],
            stdout=subprocess.PIPE,
            env=dict(os.environ),
            start_new_session=True,
        )
        deadline = time.monotonic() + KILL_WAIT_S
        while not _payouts(api):  # the first batch reached the server: its items exist
            assert first.poll() is None, "the script ended before it could be killed"
            assert time.monotonic() < deadline, "no payout appeared"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        printed = first.stdout.read().decode() if first.stdout else ""
        assert "done" not in printed  # killed mid-run, not after it
        made_before_rerun = len(_payouts(api))
        assert 0 < made_before_rerun < WINNERS

        again = subprocess.run(
            [sys.executable, str(script), server.base],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().endswith("done")

        deadline = time.monotonic() + 60
        while _balance(api)["reserved"] and time.monotonic() < deadline:
            time.sleep(0.2)
        made = _payouts(api)
        balance = _balance(api)

    tags = sorted(p["gamertag"] for p in made)
    assert tags == sorted(f"winner{i}" for i in range(WINNERS))  # each exactly once
    assert all(p["status"] == "completed" for p in made)
    paid = sum(p["totalCost"] for p in made)
    expected = sum(100 + i + -(-(100 + i) * 2 // 100) for i in range(WINNERS))  # amount + fee
    assert paid == expected
    assert balance == {
        "projectId": PROJECT,
        "balance": start - expected,
        "reserved": 0,
        "currency": "sats",
    }
