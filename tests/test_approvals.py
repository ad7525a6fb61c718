"""Approval holds: a payout above approvalAboveSats is reserved and waits; approve sends it,
reject voids it (error, REJECTED_BY_APPROVER), expiry voids it; exactly one of them wins.
Every path checks the balance and reconcile, not only the answers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from sqlalchemy import func, select

from payrail.config import Settings
from payrail.db.tables import jobs
from payrail.domain.money import fee_sats
from payrail.services import payouts
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, settle_wait_ms=30_000, node_timeout_ms=20_000, lease_ms=60_000
    )


async def hold_above(client, sats: int) -> None:
    answer = await client.put(
        f"/projects/{PROJECT}/limits", json={"approvalAboveSats": sats}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text


async def held(client, amount=1_500, **extra):
    answer = await client.post("/payouts", json=payout_body(amount=amount, **extra))
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert (data["status"], data["approval"]) == ("pending", "required")
    return data


async def causes(client, payout_id) -> list[str]:
    answer = await client.get(f"/payouts/{payout_id}/history")
    return [e["cause"] for e in answer.json()["data"]["events"]]


async def test_a_held_payout_is_reserved_and_sent_only_once_approved(client, rt):
    await hold_above(client, 1_000)
    start = await balance_of(client)
    at_limit = await client.post("/payouts", json=payout_body(amount=1_000, gamertag="small"))
    assert at_limit.status_code == 201, at_limit.text  # not above: paid at once
    start -= 1_000 + fee_sats(1_000)
    payout = await held(client)
    assert await balance_of(client) == start - 1_500 - fee_sats(1_500)  # reserved
    waiting = await reconcile(rt)  # a held payout is a reservation, not a discrepancy
    assert waiting.clean, waiting.discrepancies
    async with rt.engine.connect() as conn:
        settle = payouts.settle_job_id(payout["id"])
        assert await conn.scalar(select(func.count()).where(jobs.c.id == settle)) == 0
    refused = await client.post(f"/payouts/{payout['id']}/approve")  # the project's key
    assert refused.status_code == 403
    approved = await client.post(f"/payouts/{payout['id']}/approve", headers=ADMIN)
    assert approved.status_code == 200, approved.text
    data = approved.json()["data"]
    assert (data["status"], data["approval"]) == ("completed", "approved")
    assert data["decidedBy"].startswith("admin:")
    assert await balance_of(client) == start - 1_500 - fee_sats(1_500)
    assert any(
        c.startswith("approval: approved by admin:") for c in await causes(client, data["id"])
    )
    again = await client.post(f"/payouts/{payout['id']}/reject", headers=ADMIN)
    assert again.status_code == 409
    assert await balance_of(client) == start - 1_500 - fee_sats(1_500)
    assert (await reconcile(rt)).clean


async def test_a_rejected_payout_ends_in_error_and_gives_the_money_back(client, rt):
    await hold_above(client, 1_000)
    start = await balance_of(client)
    payout = await held(client, idempotencyKey="held-1")
    rejected = await client.post(f"/payouts/{payout['id']}/reject", headers=ADMIN)
    assert rejected.status_code == 200, rejected.text
    data = rejected.json()["data"]
    assert (data["status"], data["failureCode"], data["approval"]) == (
        "error",
        "REJECTED_BY_APPROVER",
        "rejected",
    )
    assert await balance_of(client) == start
    assert any(
        c.startswith("approval: rejected by admin:") for c in await causes(client, data["id"])
    )
    replay = await client.post("/payouts", json=payout_body(amount=1_500, idempotencyKey="held-1"))
    assert replay.status_code == 403 and replay.json()["data"]["error"] == "REJECTED_BY_APPROVER"
    late = await client.post(f"/payouts/{payout['id']}/approve", headers=ADMIN)
    assert late.status_code == 409
    assert await balance_of(client) == start
    missing = await client.post("/payouts/nope/approve", headers=ADMIN)
    assert missing.status_code == 404
    assert (await reconcile(rt)).clean


async def test_a_held_payout_not_decided_by_its_expiry_is_voided(client, rt, clock):
    await hold_above(client, 1_000)
    start = await balance_of(client)
    payout = await held(client, expiresIn=60)
    clock.advance(61_000)
    assert await payouts.expire_due(rt) == 1
    got = await client.get(f"/payouts/{payout['id']}")
    assert got.json()["data"]["status"] == "expired"
    assert await balance_of(client) == start
    late = await client.post(f"/payouts/{payout['id']}/approve", headers=ADMIN)
    assert late.status_code == 409
    assert await balance_of(client) == start
    assert (await reconcile(rt)).clean


async def test_batch_items_above_the_threshold_are_held(client, rt):
    await hold_above(client, 1_000)
    start = await balance_of(client)
    items = [{"gamertag": "bsmall", "amount": 500}, {"gamertag": "bbig", "amount": 5_000}]
    answer = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": items},
        headers={"Idempotency-Key": "held-batch"},
    )
    assert answer.status_code == 200, answer.text
    small, big = answer.json()["data"]["items"]
    assert small["httpStatus"] == 201 and small["data"]["approval"] is None
    assert big["httpStatus"] == 202 and big["data"]["approval"] == "required"
    assert await balance_of(client) == start - 500 - fee_sats(500) - 5_000 - fee_sats(5_000)
    got = await client.get(f"/payouts/{big['data']['id']}")
    assert got.json()["data"]["status"] == "pending"  # nothing sent it
    rejected = await client.post(f"/payouts/{big['data']['id']}/reject", headers=ADMIN)
    assert rejected.status_code == 200, rejected.text
    assert await balance_of(client) == start - 500 - fee_sats(500)
    assert (await reconcile(rt)).clean


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_approve_and_reject_racing_on_each_held_payout_one_wins(client, rt):
    fund = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 100_000}, headers=ADMIN)
    assert fund.status_code == 200
    await hold_above(client, 1_000)
    start = await balance_of(client)
    held_ids = [(await held(client, gamertag=f"h{i}"))["id"] for i in range(10)]
    calls = [
        client.post(f"/payouts/{payout_id}/{verb}", headers=ADMIN)
        for payout_id in held_ids
        for verb in ("approve", "reject", "approve", "reject")
    ]
    answers = await asyncio.gather(*calls)
    assert sorted(a.status_code for a in answers) == [200] * 10 + [409] * 30
    finals = {}
    for payout_id in held_ids:
        finals[payout_id] = (await client.get(f"/payouts/{payout_id}")).json()["data"]
    approved = [p for p in finals.values() if p["approval"] == "approved"]
    rejected = [p for p in finals.values() if p["approval"] == "rejected"]
    assert len(approved) + len(rejected) == 10
    assert all(p["status"] == "completed" for p in approved)
    assert all(p["status"] == "error" for p in rejected)
    assert await balance_of(client) == start - len(approved) * (1_500 + fee_sats(1_500))
    report = await reconcile(rt)
    assert report.clean, report.discrepancies
