"""Deposits end to end in production mode on PostgreSQL against a real LNbits 1.6.2: payrail's
wallet makes the invoice, another LNbits wallet pays it, and the project's balance grows by
exactly the amount, once: when asked, when payrail dies between LNbits' answer and the
credit, when LNbits is down for a while, and when LNbits' own invoice webhook arrives (it is
received on loopback and handed to payrail's route, which asks LNbits before believing it).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import ADMIN_KEY, _truncate
from lnbits_kit import CALL_TIMEOUT_S, Lnbits, Wallet

from payrail.bootstrap import Runtime, SimulatedCrash, build_runtime
from payrail.config import Settings
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app
from payrail.jobs import queue
from payrail.services import projects
from payrail.services.reconcile import reconcile
from payrail.support.clock import ShiftableClock

PROJECT = "studio_27"
PAYER_FUNDING_SATS = 100_000
AMOUNT = 2_700
PUSH_PORTS = range(12750, 12760)  # issue 27's range
PUSH_WAIT_S = 20


@dataclass
class PushReceiver:
    """Where LNbits posts its invoice webhook: kept, for the test to hand to payrail."""

    port: int
    bodies: list[object] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/webhooks/lnbits/deposits"

    def start(self) -> PushReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _receiver() -> PushReceiver:
    for port in PUSH_PORTS:
        try:
            return PushReceiver(port).start()
        except OSError:
            continue
    raise RuntimeError(f"no free port in {PUSH_PORTS}")


@dataclass
class World:
    lnbits: Lnbits
    payrail_wallet: Wallet
    payer: Wallet
    rt: Runtime
    clock: ShiftableClock
    client: httpx.AsyncClient
    pushes: PushReceiver

    async def balance(self) -> int:
        answer = await self.client.get(
            f"/projects/{PROJECT}/balance", headers={"apikey": ADMIN_KEY}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["balance"]

    def wallets_msat(self) -> tuple[int, int]:
        return self.lnbits.balance_msat(self.payrail_wallet), self.lnbits.balance_msat(self.payer)

    def pay(self, invoice: str) -> None:
        """The payer's wallet pays payrail's invoice (FakeWallet settles it internally)."""
        answer = httpx.post(
            f"{self.lnbits.url}/api/v1/payments",
            json={"out": True, "bolt11": invoice},
            headers={"X-Api-Key": self.payer.adminkey},
            timeout=CALL_TIMEOUT_S,
        )
        assert answer.status_code < 300, answer.text

    async def deposit(self, amount: int = AMOUNT) -> dict:
        answer = await self.client.post(f"/projects/{PROJECT}/deposits", json={"amount": amount})
        assert answer.status_code == 201, answer.text
        return answer.json()["data"]

    async def status(self, deposit_id: str) -> str:
        return (await self.client.get(f"/deposits/{deposit_id}")).json()["data"]["status"]

    async def watch(self) -> None:
        self.clock.advance(self.rt.settings.deposit_check_cap_ms + queue.BACKOFF_CAP_MS)
        await worker.run_until_idle(self.rt)

    def pushes_for(self, payment_hash: str) -> list[object]:
        """The webhook bodies LNbits sent about this hash (an earlier test's may arrive too)."""

        def decoded(body: object) -> object:
            return json.loads(body) if isinstance(body, str) else body

        return [
            b
            for b in self.pushes.bodies
            if isinstance(decoded(b), dict) and decoded(b).get("payment_hash") == payment_hash
        ]

    def incoming(self, payment_hash: str) -> list[dict]:
        return [
            p
            for p in self.lnbits.payments(self.payrail_wallet)
            if p["payment_hash"] == payment_hash and int(p["amount"]) > 0
        ]


@pytest.fixture
def database_url(pg_url: str) -> str:
    asyncio.run(_truncate(pg_url))
    return pg_url


@pytest.fixture
async def world(lnbits, database_url) -> AsyncIterator[World]:
    if not lnbits.running:
        lnbits.start()
    payrail_wallet, payer = lnbits.wallet("payrail"), lnbits.wallet("player-payer")
    lnbits.fund(payer, PAYER_FUNDING_SATS)
    pushes = _receiver()
    settings = Settings(
        mode="production",
        database_url=database_url,
        admin_key=ADMIN_KEY,
        lightning_backend="lnbits",
        lnbits_url=lnbits.url,
        lnbits_admin_key=payrail_wallet.adminkey,
        stripe_backend="disabled",
        node_timeout_ms=5_000,
        lease_ms=15_000,
        run_worker=False,
        deposit_webhook_url=pushes.url,
    )
    clock = ShiftableClock()
    rt = build_runtime(settings, clock=clock)
    created = await projects.create_project(rt, PROJECT, "Studio 27")
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, runtime=rt, migrate_db=False)),
        base_url="http://test/api/v1",
        headers={"apikey": created.api_key},
    )
    yield World(lnbits, payrail_wallet, payer, rt, clock, client, pushes)
    await client.aclose()
    await rt.aclose()
    pushes.stop()
    if not lnbits.running:
        lnbits.start()


async def test_a_deposit_paid_by_another_wallet_credits_exactly_the_amount_once(world):
    balance, (ours, theirs) = await world.balance(), world.wallets_msat()
    data = await world.deposit()
    assert (await world.client.post(f"/deposits/{data['id']}/check")).json()["data"][
        "status"
    ] == "open"
    world.pay(data["invoice"])
    assert world.wallets_msat() == (ours + AMOUNT * 1000, theirs - AMOUNT * 1000)
    await world.watch()
    assert await world.status(data["id"]) == "completed"
    answers = await asyncio.gather(
        *(world.client.post(f"/deposits/{data['id']}/check") for _ in range(10))
    )
    assert {a.json()["data"]["status"] for a in answers} == {"completed"}
    await world.watch()
    assert await world.balance() == balance + AMOUNT
    assert len(world.incoming(data["paymentHash"])) == 1
    report = await reconcile(world.rt, settle_window_ms=0)  # asks LNbits about the deposit
    assert report.clean, report.discrepancies


async def test_lnbits_invoice_webhook_is_checked_with_lnbits_before_it_credits(world):
    balance = await world.balance()
    data = await world.deposit(1_000)
    forged = {"payment_hash": data["paymentHash"], "amount": 1_000_000, "status": "success"}
    early = await world.client.post("/webhooks/lnbits/deposits", json=forged, headers={})
    assert early.json()["data"]["status"] == "open"  # LNbits says not paid: nothing moves
    assert await world.balance() == balance
    world.pay(data["invoice"])
    deadline = time.monotonic() + PUSH_WAIT_S
    while not world.pushes_for(data["paymentHash"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    # LNbits' own webhook for the paid invoice, as it sent it: the Payment encoded twice, a
    # JSON string (receive_push reads both forms). LNbits may send it more than once (it
    # retries); every copy is handed on, and the deposit is credited once all the same.
    pushes = world.pushes_for(data["paymentHash"])
    assert pushes, f"LNbits sent no webhook within {PUSH_WAIT_S} s"
    assert all(isinstance(push, str) for push in pushes)
    for push in [*pushes, pushes[0]]:
        answer = await world.client.post("/webhooks/lnbits/deposits", json=push, headers={})
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["status"] == "completed"
    assert await world.balance() == balance + 1_000


async def test_payrail_killed_between_lnbits_answer_and_the_credit_credits_once_later(world):
    balance = await world.balance()
    data = await world.deposit()
    world.pay(data["invoice"])
    world.rt.crashpoints.add("deposit_after_status")  # LNbits said paid; nothing written
    with pytest.raises(SimulatedCrash):
        await world.client.post(f"/deposits/{data['id']}/check")
    with pytest.raises(SimulatedCrash):
        await world.watch()
    world.rt.crashpoints.clear()
    assert await world.status(data["id"]) == "open"
    assert await world.balance() == balance
    await world.watch()  # the restarted worker: its lease ran out, the watch job runs again
    await world.watch()
    assert await world.status(data["id"]) == "completed"
    assert await world.balance() == balance + AMOUNT
    assert len(world.incoming(data["paymentHash"])) == 1
    report = await reconcile(world.rt, settle_window_ms=0)
    assert report.clean, report.discrepancies


async def test_lnbits_down_changes_nothing_then_the_payment_is_credited_once(world):
    balance = await world.balance()
    data = await world.deposit()
    world.pay(data["invoice"])
    world.lnbits.kill()
    down = await world.client.post(f"/deposits/{data['id']}/check")
    assert down.status_code == 503
    assert down.json()["data"]["error"] == "LIGHTNING_BACKEND_UNAVAILABLE"
    await world.watch()
    assert await world.status(data["id"]) == "open"
    assert await world.balance() == balance
    refused = await world.client.post(f"/projects/{PROJECT}/deposits", json={"amount": 5})
    assert refused.status_code == 503  # no invoice, no deposit
    world.lnbits.start()
    await world.watch()
    assert await world.status(data["id"]) == "completed"
    assert await world.balance() == balance + AMOUNT
