"""The dashboard in a real browser: Playwright drives the system Chromium against a real server.

One payrail server (uvicorn, `payrail serve`, its own SQLite file, a port from
PAYRAIL_DASHBOARD_TEST_PORTS) serves the tests of this module. Screenshots of every page land in
reports/dashboard/. Chromium is the Debian package (scripts/install-chromium.sh); under CI=true
a missing browser fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import PROJECT, SANDBOX_KEY
from test_callbacks import Receiver

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "dashboard"
ADMIN_KEY = "browser_test_admin_key_0123456789"
PORTS = os.environ.get("PAYRAIL_DASHBOARD_TEST_PORTS", "18600-18699")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_WAIT_S = 60  # a cold start migrates a fresh database on a busy machine
STATE_WAIT_S = 30  # how long the worker may take to deliver a callback


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _chromium() -> str:
    path = os.environ.get("PAYRAIL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = "Chromium is not installed: run scripts/install-chromium.sh (apt-get chromium)"
        if _in_ci():
            pytest.fail(message + " (CI=true: the browser test may not skip)")
        pytest.skip(message)
    return path


def _free_port() -> int:
    low, high = (int(p) for p in PORTS.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def _wait_for(what: str, check, limit_s: float) -> None:
    """Wait for a state a background process reaches (not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {limit_s} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("dashboard")
    port = _free_port()
    env = os.environ | {
        "PAYRAIL_PORT": str(port),
        "PAYRAIL_DATABASE_URL": f"sqlite:///{work / 'payrail.db'}",
        "PAYRAIL_ADMIN_KEY": ADMIN_KEY,
        "PAYRAIL_SANDBOX_API_KEY": SANDBOX_KEY,
        "PAYRAIL_WORKER_POLL_MS": "50",
        "PAYRAIL_RECONCILE_INTERVAL_S": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "payrail"), "serve", "--log-level", "warning"],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (work / "server.log").read_text()
        try:
            return httpx.get(f"{base}/api/v1/statuses", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for("server up", up, SERVER_START_WAIT_S)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, key: str, name: str) -> None:
    page.goto("/dashboard")
    assert page.url.endswith("/dashboard/login")
    page.fill("input[name=key]", key)
    page.fill("input[name=name]", name)
    page.click("button:has-text('Sign in')")
    assert page.url.endswith("/dashboard")


def api(server: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{server}/api/v1", headers={"apikey": key}, timeout=30)


def test_operator_signs_in_sees_a_payout_replays_a_callback_changes_a_flag_and_signs_out(
    page, server
):
    sandbox, admin = api(server, SANDBOX_KEY), api(server, ADMIN_KEY)
    receiver = Receiver()
    receiver.respond = lambda n: 410  # the studio refuses for good: the callbacks die at once
    try:
        page.goto("/dashboard")
        shot(page, "01-sign-in")
        sign_in(page, ADMIN_KEY, "alice")
        (cookie,) = [c for c in page.context.cookies() if c["name"] == "payrail_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert ADMIN_KEY not in cookie["value"]

        overview = f"/dashboard?project={PROJECT}&window=1h"
        page.goto(overview)
        before_balance = page.inner_text("#balance")
        before_total = int(page.get_attribute("#outcome-chart", "data-total"))
        before_bars = page.locator("#outcome-chart svg rect").count()
        assert ADMIN_KEY not in page.content()
        shot(page, "02-overview-before")

        made = sandbox.post(
            "/payouts",
            json={
                "gamertag": "browser1",
                "amount": 1000,
                "projectId": PROJECT,
                "callbackUrl": receiver.url,
            },
        )
        assert made.status_code == 201, made.text
        payout_id = made.json()["data"]["id"]

        page.goto(overview)
        after = int(before_balance.replace(",", "")) - 1_020  # amount + 2% fee
        assert page.inner_text("#balance") == f"{after:,}"
        assert int(page.get_attribute("#outcome-chart", "data-total")) == before_total + 1
        assert page.locator("#outcome-chart svg rect").count() > before_bars
        shot(page, "03-overview-after-payout")

        page.goto("/dashboard/payouts?gamertag=browser1")
        assert page.locator("#payouts tbody tr").count() == 1
        shot(page, "04-payouts")
        page.click(f"a[href='/dashboard/payouts/{payout_id}']")
        # an inline payout: written in flight by its reservation (the send intent), completed
        assert page.locator("#history tbody tr").count() == 2
        shot(page, "05-payout-history")

        order = sandbox.post("/orders", json={"amount": 2500, "currency": "eur"})
        assert order.status_code == 201, order.text
        page.goto("/dashboard/orders")
        page.click(f"a[href='/dashboard/orders/{order.json()['data']['id']}']")
        assert page.locator("#history tbody tr").count() >= 1
        shot(page, "06-order-history")

        def dead_ids() -> set[str]:
            found = sandbox.get("/callbacks", params={"status": "dead"}).json()["data"]
            return {c["id"] for c in found["callbacks"] if c["payoutId"] == payout_id}

        _wait_for("callbacks dead", lambda: len(dead_ids()) == 2, STATE_WAIT_S)
        target = sorted(dead_ids())[0]
        page.goto("/dashboard/dead")
        shot(page, "07-dead-letters")
        receiver.respond = lambda n: 200  # the studio fixed its endpoint
        page.click(f"tr[data-callback='{target}'] button:has-text('Replay')")
        assert "queued for delivery again" in page.inner_text(".notice")
        assert page.locator(f"tr[data-callback='{target}']").count() == 0

        def delivered() -> bool:
            found = sandbox.get("/callbacks", params={"status": "delivered"}).json()["data"]
            return target in {c["id"] for c in found["callbacks"]}

        _wait_for("replayed callback delivered", delivered, STATE_WAIT_S)
        assert len(receiver.by_event()[target]) == 2  # the 410, then the replay's 200
        shot(page, "08-dead-letters-after-replay")

        page.goto("/dashboard/flags")
        card = page.locator("#flag-settlement_queue_path")
        card.locator("input[name=enabled]").check()
        card.locator("input[name=rolloutPercent]").fill("25")
        card.locator("input[name=reason]").fill("canary for two studios")
        card.locator("button:has-text('Change')").click()
        assert "audit log" in page.inner_text(".notice")
        assert card.locator(".rollout").inner_text() == "25%"
        assert "dashboard:alice" in card.locator("table.history").inner_text()
        flag = admin.get("/admin/flags/settlement_queue_path").json()["data"]
        assert (flag["enabled"], flag["rolloutPercent"]) == (True, 25)
        assert flag["history"][0]["actor"] == "dashboard:alice"
        shot(page, "09-flags")

        page.goto("/dashboard/reconciliation")
        page.click("button:has-text('Run now')")
        assert "Clean" in page.inner_text("#reconcile-result")
        shot(page, "10-reconciliation")

        page.click("button:has-text('Sign out')")
        assert page.url.endswith("/dashboard/login")
        page.goto("/dashboard/flags")
        assert page.url.endswith("/dashboard/login")
    finally:
        receiver.close()


def test_a_project_key_cannot_see_another_project(page, server):
    admin = api(server, ADMIN_KEY)
    other = admin.post("/projects", json={"id": "studio_browser_b", "name": "Studio B"})
    assert other.status_code == 201, other.text
    admin.post("/projects/studio_browser_b/fund", json={"amount": 5_000})
    theirs = api(server, SANDBOX_KEY).post(
        "/payouts", json={"gamertag": "hidden1", "amount": 100, "projectId": PROJECT}
    )
    assert theirs.status_code == 201, theirs.text

    sign_in(page, other.json()["data"]["apiKey"], "bob")
    assert page.get_attribute("#project", "data-project") == "studio_browser_b"
    assert page.inner_text("#balance") == "5,000"
    assert PROJECT not in page.content()
    assert other.json()["data"]["apiKey"] not in page.content()
    shot(page, "11-project-key-overview")
    assert page.goto(f"/dashboard?project={PROJECT}").status == 403
    assert page.goto(f"/dashboard/payouts/{theirs.json()['data']['id']}").status == 404
    shot(page, "12-other-project-not-found")
    page.goto("/dashboard/payouts")
    assert "hidden1" not in page.content()
    assert page.goto("/dashboard/reconciliation").status == 403


def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(page, server):
    admin = api(server, ADMIN_KEY)
    before = admin.get("/admin/flags/settlement_queue_path").json()["data"]
    sign_in(page, ADMIN_KEY, "mallory-test")
    page.goto("/dashboard/flags")
    card = page.locator("#flag-settlement_queue_path")
    card.locator("input[name=csrf]").evaluate("input => input.remove()")
    card.locator("input[name=rolloutPercent]").fill("90")
    card.locator("input[name=reason]").fill("forged")
    card.locator("button:has-text('Change')").click()
    assert "CSRF" in page.inner_text(".error")
    shot(page, "13-csrf-refused")
    forged = page.request.post(
        "/dashboard/reconciliation/run", form={"csrf": "not-the-token"}, max_redirects=0
    )
    assert forged.status == 403
    after = admin.get("/admin/flags/settlement_queue_path").json()["data"]
    assert after["rolloutPercent"] == before["rolloutPercent"]
    assert after["history"] == before["history"]
