"""Claim links end to end in production mode on PostgreSQL against a real LNbits 1.6.2: the
studio's link is claimed with an invoice from a player's own LNbits wallet, and that wallet
gains exactly the amount while the project loses amount + fee; fifty claims of one link at
once pay once; an expired or revoked link pays nothing and its reservation is voided;
`reconcile` (which asks LNbits) is clean after each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ADMIN_KEY, _truncate
from lnbits_kit import Lnbits, Wallet

from payrail.bootstrap import Runtime, build_runtime
from payrail.config import Settings
from payrail.domain.money import fee_sats
from payrail.domain.recipients import decode_lnurl
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app
from payrail.services import projects
from payrail.services.reconcile import reconcile
from payrail.support.clock import ShiftableClock

PROJECT = "studio_claims"
PROJECT_FUNDING_SATS = 50_000
NODE_FUNDING_SATS = 100_000  # payrail's LNbits wallet, which pays the claims
AMOUNT = 2_100
CONCURRENT = 50


@dataclass
class World:
    lnbits: Lnbits
    node_wallet: Wallet
    player: Wallet
    rt: Runtime
    clock: ShiftableClock
    client: httpx.AsyncClient
    wallet_app: httpx.AsyncClient  # a player's wallet app, talking to the public routes

    async def balance(self) -> tuple[int, int]:
        answer = await self.client.get(
            f"/projects/{PROJECT}/balance", headers={"apikey": ADMIN_KEY}
        )
        data = answer.json()["data"]
        return data["balance"], data["reserved"]

    async def link(self, amount: int = AMOUNT, **extra: object) -> dict:
        body = {"projectId": PROJECT, "amount": amount, **extra}
        answer = await self.client.post("/withdrawals", json=body)
        assert answer.status_code == 201, answer.text
        return answer.json()["data"]

    async def offer(self, link: dict) -> dict:
        url = urlsplit(decode_lnurl(link["lnurl"].lower()))
        assert url.scheme == "https"  # production: PAYRAIL_PUBLIC_URL is https
        return (await self.wallet_app.get(f"{url.path}?{url.query}")).json()

    async def claim(self, offer: dict, invoice: str) -> dict:
        path = urlsplit(offer["callback"]).path
        answer = await self.wallet_app.get(path, params={"k1": offer["k1"], "pr": invoice})
        return answer.json()

    async def final(self, link_id: str) -> dict:
        for _ in range(1_000):
            data = (await self.client.get(f"/withdrawals/{link_id}")).json()["data"]
            if data["status"] not in ("open", "claimed"):
                return data
            await asyncio.sleep(0.02)
        raise AssertionError(f"withdrawal {link_id} still {data['status']}")

    async def clean(self) -> None:
        report = await reconcile(self.rt, settle_window_ms=0)  # asks LNbits about each payout
        assert report.clean, report.discrepancies


@pytest.fixture
def database_url(pg_url: str) -> str:
    asyncio.run(_truncate(pg_url))
    return pg_url


@pytest.fixture
async def world(lnbits, database_url) -> AsyncIterator[World]:
    if not lnbits.running:
        lnbits.start()
    node_wallet, player = lnbits.wallet("payrail-claims"), lnbits.wallet("player-claims")
    lnbits.fund(node_wallet, NODE_FUNDING_SATS)
    settings = Settings(
        mode="production",
        database_url=database_url,
        admin_key=ADMIN_KEY,
        lightning_backend="lnbits",
        lnbits_url=lnbits.url,
        lnbits_admin_key=node_wallet.adminkey,
        stripe_backend="disabled",
        settle_wait_ms=5_000,
        node_timeout_ms=5_000,
        lease_ms=15_000,
        run_worker=False,
        public_url="https://pay.studio.example",  # never fetched by payrail
        claim_link_key="claim-link-key-for-the-lnbits-test-0123456789",
    )
    clock = ShiftableClock()
    rt = build_runtime(settings, clock=clock)
    created = await projects.create_project(rt, PROJECT, "Claims studio")
    await projects.fund(rt, PROJECT, PROJECT_FUNDING_SATS, "fund-claims")
    transport = httpx.ASGITransport(app=create_app(settings, runtime=rt, migrate_db=False))
    client = httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": created.api_key}
    )
    wallet_app = httpx.AsyncClient(transport=transport, base_url="http://test")
    yield World(lnbits, node_wallet, player, rt, clock, client, wallet_app)
    await client.aclose()
    await wallet_app.aclose()
    await rt.aclose()


async def test_a_players_lnbits_wallet_claims_the_link_and_gains_exactly_the_amount(world):
    player_before = world.lnbits.balance_msat(world.player)
    link = await world.link(description="Tournament prize")
    total = AMOUNT + fee_sats(AMOUNT)
    assert await world.balance() == (PROJECT_FUNDING_SATS - total, total)
    offer = await world.offer(link)
    assert offer["tag"] == "withdrawRequest" and offer["maxWithdrawable"] == AMOUNT * 1000
    invoice = world.lnbits.invoice(world.player, AMOUNT * 1000)
    assert await world.claim(offer, invoice) == {"status": "OK"}
    final = await world.final(link["id"])
    assert final["status"] == "completed", final
    assert world.lnbits.balance_msat(world.player) == player_before + AMOUNT * 1000
    assert await world.balance() == (PROJECT_FUNDING_SATS - total, 0)
    assert len(world.lnbits.outgoing(world.node_wallet, final["paymentHash"])) == 1
    again = await world.claim(offer, world.lnbits.invoice(world.player, AMOUNT * 1000))
    assert again["status"] == "ERROR"
    assert world.lnbits.balance_msat(world.player) == player_before + AMOUNT * 1000
    await world.clean()


async def test_fifty_claims_of_one_link_at_once_pay_once(world):
    player_before = world.lnbits.balance_msat(world.player)
    link = await world.link(1_000)
    offer = await world.offer(link)
    invoices = [world.lnbits.invoice(world.player, 1_000_000) for _ in range(CONCURRENT)]
    answers = await asyncio.gather(*(world.claim(offer, pr) for pr in invoices))
    assert sum(a == {"status": "OK"} for a in answers) == 1, answers
    final = await world.final(link["id"])
    assert final["status"] == "completed"
    assert world.lnbits.balance_msat(world.player) == player_before + 1_000_000
    paid = [p for p in world.lnbits.payments(world.player) if int(p["amount"]) > 0]
    assert [p for p in paid if p.get("status") == "success"] == [
        p for p in paid if p["payment_hash"] == final["paymentHash"]
    ]
    assert await world.balance() == (PROJECT_FUNDING_SATS - 1_000 - fee_sats(1_000), 0)
    await world.clean()


async def test_an_expired_or_revoked_link_pays_nothing_and_its_reservation_is_voided(world):
    player_before = world.lnbits.balance_msat(world.player)
    expiring = await world.link(1_000, expiresInS=60)
    revoked = await world.link(1_500)
    assert (await world.client.delete(f"/withdrawals/{revoked['id']}")).status_code == 200
    world.clock.advance(61_000)
    await worker.run_until_idle(world.rt)
    assert await world.balance() == (PROJECT_FUNDING_SATS, 0)
    for link, reason in ((expiring, "This link has expired."), (revoked, "This link was revoked.")):
        assert await world.offer(link) == {"status": "ERROR", "reason": reason}
        path = f"/lnurlw/{link['id']}/callback"
        k1 = urlsplit(decode_lnurl(link["lnurl"].lower())).query.removeprefix("k1=")
        pr = world.lnbits.invoice(world.player, link["amount"] * 1000)
        refused = await world.wallet_app.get(path, params={"k1": k1, "pr": pr})
        assert refused.json() == {"status": "ERROR", "reason": reason}
    assert world.lnbits.balance_msat(world.player) == player_before
    assert await world.balance() == (PROJECT_FUNDING_SATS, 0)
    await world.clean()
