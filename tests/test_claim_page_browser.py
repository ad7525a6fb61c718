"""The claim page in a real browser: Playwright drives the system Chromium against a real
server (`payrail serve`, its own SQLite file, PAYRAIL_PUBLIC_URL its own address).

The page shows the amount and the expiry, and the LNURL's QR code as inline SVG rendered on
the server: no script, and no request to anything but the page itself. Screenshots land in
reports/claim-links/. Under CI=true a missing browser fails the run instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import segno
from conftest import PROJECT, SANDBOX_KEY
from lightning_kit import make_invoice
from test_dashboard_browser import (
    CHROMIUM_ARGS,
    SERVER_START_WAIT_S,
    _chromium,
    _free_port,
    _wait_for,
)

from payrail.domain.recipients import decode_lnurl

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "claim-links"
ADMIN_KEY = "claim_page_test_admin_key_0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("claim-page")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "PAYRAIL_PORT": str(port),
        "PAYRAIL_DATABASE_URL": f"sqlite:///{work / 'payrail.db'}",
        "PAYRAIL_ADMIN_KEY": ADMIN_KEY,
        "PAYRAIL_SANDBOX_API_KEY": SANDBOX_KEY,
        "PAYRAIL_PUBLIC_URL": base,
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


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_claim_page_shows_the_amount_and_a_server_rendered_qr_and_loads_nothing_else(
    browser, server
):
    api = httpx.Client(base_url=f"{server}/api/v1", headers={"apikey": SANDBOX_KEY}, timeout=30)
    made = api.post(
        "/withdrawals",
        json={"projectId": PROJECT, "amount": 1_234, "description": "Boss <b>loot</b>"},
    )
    assert made.status_code == 201, made.text
    link = made.json()["data"]
    assert link["url"].startswith(f"{server}/claim/")

    context = browser.new_context(viewport={"width": 480, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    answer = page.goto(link["url"])
    assert answer is not None and answer.status == 200
    assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none'
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert requested == [link["url"]]  # nothing from another host, nothing else at all
    assert page.locator("script").count() == 0
    assert page.inner_text(".amount") == "1,234 sats"
    assert "Boss <b>loot</b>" in page.inner_text("body")  # shown as text, not markup
    assert link["expiresAt"][:16].replace("T", " ") + " UTC" in page.inner_text("body")
    assert page.get_attribute("a.open", "href") == f"lightning:{link['lnurl']}"
    svg = page.inner_html(".qr")
    expected = segno.make(link["lnurl"], error="m").svg_inline(scale=6, omitsize=True)
    assert svg.count("<path") == 1
    drawn = expected.split(' d="', 1)[1].split('"', 1)[0]
    assert drawn in svg  # the QR code of exactly this lnurl
    shot(page, "01-open")

    # A wallet claims it; the page then says so (and shows no QR code any more).
    wallet = httpx.Client(timeout=30)
    request = wallet.get(decode_lnurl(link["lnurl"].lower())).json()
    claimed = wallet.get(
        request["callback"], params={"k1": request["k1"], "pr": make_invoice(1_234_000)}
    )
    assert claimed.json() == {"status": "OK"}
    _wait_for(
        "link paid",
        lambda: api.get(f"/withdrawals/{link['id']}").json()["data"]["status"] == "completed",
        30,
    )
    page.goto(link["url"])
    assert page.inner_text("h1") == "This link is completed"
    assert page.locator(".qr").count() == 0
    shot(page, "02-claimed")

    # A wrong secret: not found, and nothing about the link.
    wrong = page.goto(link["url"].split("?k1=")[0] + "?k1=" + "0" * 64)
    assert wrong is not None and wrong.status == 404
    assert "1,234" not in page.content()
    context.close()
