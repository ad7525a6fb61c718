"""Payout controls on claim links (issue 29), on SQLite and PostgreSQL: playerId (the rate
limit and the daily player cap count by it, with payouts), quoteId instead of amount (exactly
the quote's sats, spent once when the link is made; expired / used: 409, nothing reserved),
and approval holds: a link above approvalAboveSats is reserved but claimable only once
approved (rejected or unapproved by its expiry: voided). Every path asserts the balance and a
clean reconciliation; races: approve vs reject vs revoke, and claims vs a reject."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, payout_body
from lightning_kit import make_invoice
from sqlalchemy import func, select
from test_withdrawals import (
    FUNDED,
    _balance,
    _claim,
    _clean,
    _final,
    _node_payments,
    _public,
    _withdraw_request,
)

from payrail.config import Settings
from payrail.db.tables import jobs, quote_uses
from payrail.domain.money import fee_sats
from payrail.entrypoints.http.app import create_app
from payrail.services import payouts

ADMIN = {"apikey": ADMIN_KEY}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, settle_wait_ms=30_000, node_timeout_ms=20_000, lease_ms=60_000
    )


async def _limits(client, **caps) -> None:
    answer = await client.put(f"/projects/{PROJECT}/limits", json=caps, headers=ADMIN)
    assert answer.status_code == 200, answer.text


async def _link(client, status: int = 201, **body) -> httpx.Response:
    answer = await client.post("/withdrawals", json={"projectId": PROJECT, **body})
    assert answer.status_code == status, answer.text
    return answer


async def _quote(client, amount: str = "0.25") -> dict:
    made = await client.post(
        "/quotes", json={"projectId": PROJECT, "currency": "USD", "amount": amount}
    )
    assert made.status_code == 201, made.text
    return made.json()["data"]


async def _settle_jobs(rt, payout_id: str) -> int:
    async with rt.engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).where(jobs.c.id == payouts.settle_job_id(payout_id))
            )
        )


# ---------------------------------------------------------------- playerId


async def test_a_links_player_counts_toward_the_players_day_with_its_payouts(client, rt):
    await _limits(client, perPlayerDailyMaxSats=3_000)
    link = (await _link(client, amount=2_000, playerId="player-7")).json()["data"]
    assert link["playerId"] == "player-7" and link["approval"] is None
    spent = 2_000 + fee_sats(2_000)
    assert await _balance(client) == (FUNDED - spent, spent)
    # the same player, a payout under another gamertag: its day holds 2,000 of 3,000
    over = await client.post(
        "/payouts", json=payout_body(amount=1_500, gamertag="alt", playerId="player-7")
    )
    assert over.status_code == 429 and over.json()["data"]["error"] == "PLAYER_DAILY_LIMIT"
    again = await _link(client, 429, amount=1_500, playerId="player-7")
    assert again.json()["data"]["error"] == "PLAYER_DAILY_LIMIT"
    assert again.json()["data"]["usedSats"] == 2_000
    other = (await _link(client, amount=1_500, playerId="player-8")).json()["data"]
    assert other["playerId"] == "player-8"
    spent += 1_500 + fee_sats(1_500)
    assert await _balance(client) == (FUNDED - spent, spent)
    listed = await client.get("/payouts", params={"playerId": "player-7"})
    assert listed.json()["data"]["count"] == 1  # the link's payout, under its player
    bad = await client.post(
        "/withdrawals", json={"projectId": PROJECT, "amount": 10, "playerId": "x" * 129}
    )
    assert bad.status_code == 400
    assert await _balance(client) == (FUNDED - spent, spent)
    await _clean(rt)


async def test_the_rate_limit_counts_a_links_player(client, rt, settings):
    limit = settings.rate_limit_per_hour
    for _ in range(limit):
        await _link(client, amount=10, playerId="grinder")
    refused = await _link(client, 429, amount=10, playerId="grinder")
    assert refused.json()["data"]["error"] == "RATE_LIMIT_EXCEEDED"
    spent = limit * (10 + fee_sats(10))
    assert await _balance(client) == (FUNDED - spent, spent)
    await _clean(rt)


async def test_the_same_key_replays_a_link_with_its_player_and_quote(client, rt):
    q = await _quote(client)
    body = {"quoteId": q["id"], "playerId": "p1"}
    headers = {"Idempotency-Key": "link-k1"}
    first = await client.post("/withdrawals", json={"projectId": PROJECT, **body}, headers=headers)
    assert first.status_code == 201, first.text
    replay = await client.post("/withdrawals", json={"projectId": PROJECT, **body}, headers=headers)
    assert replay.status_code == 200 and replay.json()["data"]["id"] == first.json()["data"]["id"]
    changed = await client.post(
        "/withdrawals",
        json={"projectId": PROJECT, **body, "playerId": "p2"},
        headers=headers,
    )
    assert changed.status_code == 422
    cost = q["sats"] + fee_sats(q["sats"])
    assert await _balance(client) == (FUNDED - cost, cost)
    await _clean(rt)


# ---------------------------------------------------------------- quoteId


async def test_a_quoted_link_pays_exactly_the_quotes_sats_once(client, rt, clock):
    q = await _quote(client, "0.25")
    assert q["sats"] == 250  # the sandbox's fixed 100,000 USD/BTC
    link = (await _link(client, quoteId=q["id"], gamertag="quoted")).json()["data"]
    cost = 250 + fee_sats(250)
    assert (link["amount"], link["totalCost"]) == (250, cost)
    assert await _balance(client) == (FUNDED - cost, cost)
    used = await _link(client, 409, quoteId=q["id"])
    assert used.json()["data"]["error"] == "QUOTE_USED"
    as_payout = await client.post(
        "/payouts", json={"projectId": PROJECT, "gamertag": "x", "quoteId": q["id"]}
    )
    assert as_payout.status_code == 409 and as_payout.json()["data"]["error"] == "QUOTE_USED"
    both = await client.post(
        "/withdrawals", json={"projectId": PROJECT, "quoteId": q["id"], "amount": 5}
    )
    assert both.status_code == 400
    unknown = await client.post("/withdrawals", json={"projectId": PROJECT, "quoteId": "nope"})
    assert unknown.status_code == 404 and unknown.json()["data"]["error"] == "QUOTE_NOT_FOUND"
    late = await _quote(client, "1.00")
    clock.advance((rt.settings.quote_ttl_s + 1) * 1000)
    expired = await _link(client, 409, quoteId=late["id"])
    assert expired.json()["data"]["error"] == "QUOTE_EXPIRED"
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(quote_uses)) == 1
    assert await _balance(client) == (FUNDED - cost, cost)
    # a quote's link is claimed for exactly its sats
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        assert request["minWithdrawable"] == request["maxWithdrawable"] == 250_000
        assert await _claim(wallet, request, make_invoice(250_000)) == {"status": "OK"}
    final = await _final(client, link["id"])
    assert final["status"] == "completed"
    assert await _node_payments(rt) == [(final["payoutId"], final["paymentHash"], 250)]
    assert await _balance(client) == (FUNDED - cost, 0)
    await _clean(rt)


# ---------------------------------------------------------------- approval holds


async def test_a_held_link_is_claimable_only_once_approved(client, rt):
    await _limits(client, approvalAboveSats=1_000)
    small = (await _link(client, amount=1_000)).json()["data"]
    assert small["status"] == "open" and small["approval"] is None
    answer = await _link(client, 202, amount=3_000, gamertag="bigwinner")
    link = answer.json()["data"]
    assert (link["status"], link["approval"]) == ("awaiting_approval", "required")
    payout_id = link["payoutId"]
    assert payout_id
    cost = 3_000 + fee_sats(3_000)
    reserved = cost + 1_000 + fee_sats(1_000)
    assert await _balance(client) == (FUNDED - reserved, reserved)
    await _clean(rt)  # a held link is a reservation, not a discrepancy
    async with _public(client) as wallet:
        offer = await wallet.get(
            f"/lnurlw/{link['id']}", params={"k1": link["url"].split("k1=")[1]}
        )
        assert offer.json()["status"] == "ERROR" and "approver" in offer.json()["reason"]
        request = {
            "callback": f"http://127.0.0.1:3000/lnurlw/{link['id']}/callback",
            "k1": link["url"].split("k1=")[1],
        }
        early = await _claim(wallet, request, make_invoice(3_000_000))
        assert early["status"] == "ERROR" and "approver" in early["reason"]
        page = await wallet.get(link["url"].replace("http://127.0.0.1:3000", ""))
        assert "awaiting_approval" in page.text and "<svg" not in page.text
        assert await _node_payments(rt) == []
        approved = await client.post(f"/payouts/{payout_id}/approve", headers=ADMIN)
        assert approved.status_code == 200, approved.text
        data = approved.json()["data"]
        assert (data["status"], data["approval"]) == ("pending", "approved")
        assert await _settle_jobs(rt, payout_id) == 0  # nothing to send until a claim
        opened = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
        assert (opened["status"], opened["approval"]) == ("open", "approved")
        assert opened["decidedBy"].startswith("admin:")
        request = await _withdraw_request(wallet, link)
        invoice = make_invoice(3_000_000)
        assert await _claim(wallet, request, invoice) == {"status": "OK"}
    final = await _final(client, link["id"])
    assert final["status"] == "completed" and final["payoutId"] == payout_id
    assert await _node_payments(rt) == [(payout_id, final["paymentHash"], 3_000)]
    small_cost = 1_000 + fee_sats(1_000)
    assert await _balance(client) == (FUNDED - cost - small_cost, small_cost)
    history = (await client.get(f"/payouts/{payout_id}/history")).json()["data"]["events"]
    assert any(e["cause"].startswith("approval: approved by admin:") for e in history)
    await _clean(rt)


async def test_a_rejected_link_is_voided_and_no_wallet_is_paid(client, rt):
    await _limits(client, approvalAboveSats=1_000)
    link = (await _link(client, 202, amount=2_000)).json()["data"]
    made = await client.post(f"/projects/{PROJECT}/keys", json={"role": "approver"}, headers=ADMIN)
    approver = {"apikey": made.json()["data"]["apiKey"]}
    rejected = await client.post(f"/payouts/{link['payoutId']}/reject", headers=approver)
    assert rejected.status_code == 200, rejected.text
    got = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
    assert (got["status"], got["approval"]) == ("rejected", "rejected")
    assert got["decidedBy"] == f"approver:{made.json()['data']['keyId']}"
    assert await _balance(client) == (FUNDED, 0)
    async with _public(client) as wallet:
        k1 = link["url"].split("k1=")[1]
        offer = await wallet.get(f"/lnurlw/{link['id']}", params={"k1": k1})
        assert offer.json() == {
            "status": "ERROR",
            "reason": "This link was rejected by an approver.",
        }
    assert (
        await client.post(f"/payouts/{link['payoutId']}/approve", headers=ADMIN)
    ).status_code == 409
    assert (await client.delete(f"/withdrawals/{link['id']}")).status_code == 409
    assert await _balance(client) == (FUNDED, 0)
    assert await _node_payments(rt) == []
    await _clean(rt)


async def test_a_held_link_not_approved_by_its_expiry_is_voided(client, rt, clock):
    await _limits(client, approvalAboveSats=1_000)
    link = (await _link(client, 202, amount=2_000, expiresInS=60)).json()["data"]
    clock.advance(61_000)
    assert await payouts.expire_due(rt) == 1
    got = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
    assert got["status"] == "expired"
    assert (
        await client.post(f"/payouts/{link['payoutId']}/approve", headers=ADMIN)
    ).status_code == 409
    assert await _balance(client) == (FUNDED, 0)
    await _clean(rt)


async def test_a_held_link_can_be_revoked(client, rt):
    await _limits(client, approvalAboveSats=1_000)
    link = (await _link(client, 202, amount=2_000)).json()["data"]
    revoked = await client.delete(f"/withdrawals/{link['id']}")
    assert revoked.status_code == 200 and revoked.json()["data"]["status"] == "revoked"
    assert (
        await client.post(f"/payouts/{link['payoutId']}/approve", headers=ADMIN)
    ).status_code == 409
    assert await _balance(client) == (FUNDED, 0)
    await _clean(rt)


async def test_zbd_withdrawal_requests_are_held_too(settings, client, rt):
    await _limits(client, approvalAboveSats=1_000)
    app = create_app(settings, runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/v0",
        headers={"apikey": SANDBOX_KEY},
    ) as zbd:
        made = await zbd.post("/withdrawal-requests", json={"amount": "2000000"})
        assert made.status_code == 200, made.text
        data = made.json()["data"]
        assert (data["status"], data["approval"]) == ("pending", "required")
        cost = 2_000 + fee_sats(2_000)
        assert await _balance(client) == (FUNDED - cost, cost)
        link = (await client.get(f"/withdrawals/{data['id']}")).json()["data"]
        rejected = await client.post(f"/payouts/{link['payoutId']}/reject", headers=ADMIN)
        assert rejected.status_code == 200
        fetched = (await zbd.get(f"/withdrawal-requests/{data['id']}")).json()["data"]
        assert (fetched["status"], fetched["approval"]) == ("error", "rejected")
    assert await _balance(client) == (FUNDED, 0)
    await _clean(rt)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_approve_reject_and_revoke_racing_on_held_links_one_wins(client, rt):
    await _limits(client, approvalAboveSats=1_000)
    links = [(await _link(client, 202, amount=1_500)).json()["data"] for _ in range(8)]
    calls = []
    for link in links:
        for verb in ("approve", "reject", "approve", "reject"):
            calls.append(client.post(f"/payouts/{link['payoutId']}/{verb}", headers=ADMIN))
        calls.append(client.delete(f"/withdrawals/{link['id']}"))
    answers = await asyncio.gather(*calls)
    assert all(a.status_code in (200, 409) for a in answers), [a.text for a in answers]
    open_cost = 0
    for link in links:
        got = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
        # revoked (first, or after an approval), rejected; or approved and then revoked
        assert got["status"] in ("revoked", "rejected"), got
        if got["status"] == "rejected":
            assert got["approval"] == "rejected"
    decided = [a for a in answers if a.request.method == "POST" and a.status_code == 200]
    verdicts: dict[str, set[str]] = {}
    for a in decided:
        verdicts.setdefault(a.json()["data"]["id"], set()).add(a.json()["data"]["approval"])
    assert all(len(v) == 1 for v in verdicts.values())  # one decision per payout
    assert await _balance(client) == (FUNDED - open_cost, 0)
    assert await _node_payments(rt) == []
    await _clean(rt)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_claims_racing_a_reject_pay_nothing_and_after_approval_pay_once(client, rt):
    await _limits(client, approvalAboveSats=1_000)
    held = (await _link(client, 202, amount=2_000)).json()["data"]
    k1 = held["url"].split("k1=")[1]
    request = {"callback": f"http://127.0.0.1:3000/lnurlw/{held['id']}/callback", "k1": k1}
    async with _public(client) as wallet:
        claims = [_claim(wallet, request, make_invoice(2_000_000)) for _ in range(20)]
        reject = client.post(f"/payouts/{held['payoutId']}/reject", headers=ADMIN)
        *claimed, rejected = await asyncio.gather(*claims, reject)
        assert rejected.status_code == 200
        assert all(a["status"] == "ERROR" for a in claimed)
        assert await _balance(client) == (FUNDED, 0)
        approved_link = (await _link(client, 202, amount=2_000)).json()["data"]
        ok = await client.post(f"/payouts/{approved_link['payoutId']}/approve", headers=ADMIN)
        assert ok.status_code == 200
        request = await _withdraw_request(wallet, approved_link)
        claims = [_claim(wallet, request, make_invoice(2_000_000)) for _ in range(20)]
        late = client.post(f"/payouts/{approved_link['payoutId']}/reject", headers=ADMIN)
        *claimed, late_reject = await asyncio.gather(*claims, late)
        assert late_reject.status_code == 409  # approved already: only a claim can follow
        assert sum(a == {"status": "OK"} for a in claimed) == 1
    final = await _final(client, approved_link["id"])
    assert final["status"] == "completed"
    assert await _node_payments(rt) == [(final["payoutId"], final["paymentHash"], 2_000)]
    assert await _balance(client) == (FUNDED - 2_000 - fee_sats(2_000), 0)
    await _clean(rt)
