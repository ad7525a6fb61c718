"""The recipient guard: the rate limit counts a gamertag whatever its case, and three failed
payouts to one gamertag within ten minutes block it for ten minutes (429
RECIPIENT_TEMPORARILY_BLOCKED with retryAfter), configurable per project."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body

from payrail.domain.payout_engine import Policy, blocked_until_ms
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}
COST = 1020  # 1000 sats + the 2 % fee
SPELLINGS = ["ratey", "Ratey", "RATEY", "rAtEy", "RaTeY"]


async def _faults(client, **knobs) -> None:
    response = await client.post("/test/failure-injection", json=knobs)
    assert response.status_code == 200, response.text


async def _guard(client, body, project=PROJECT):
    return await client.put(f"/projects/{project}/recipient-guard", json=body, headers=ADMIN)


async def _fail_payouts(client, gamertags: list[str]) -> None:
    """Payouts the node refuses at once: 502 PAYMENT_FAILED, reservation voided."""
    await _faults(client, enabled=True, failureRate=1.0)
    for gamertag in gamertags:
        response = await client.post("/payouts", json=payout_body(gamertag=gamertag))
        assert response.status_code == 502, response.text
    await _faults(client, enabled=False)


async def test_the_rate_limit_counts_a_gamertag_whatever_its_case(client, rt):
    start = await balance_of(client)
    responses = await asyncio.gather(
        *(client.post("/payouts", json=payout_body(gamertag=SPELLINGS[i % 5])) for i in range(15))
    )
    assert Counter(r.status_code for r in responses) == {201: 10, 429: 5}
    for refused in (r for r in responses if r.status_code == 429):
        body = refused.json()
        assert body["data"]["error"] == "RATE_LIMIT_EXCEEDED"
        assert "Maximum 10 payouts per gamertag per hour" in body["message"]
        assert 0 < body["data"]["retryAfter"] <= 3600
    assert await balance_of(client) == start - 10 * COST
    other = await client.post("/payouts", json=payout_body(gamertag="someone_else"))
    assert other.status_code == 201
    assert (await reconcile(rt)).clean


async def test_three_failures_to_one_gamertag_block_it_for_ten_minutes_in_any_case(
    client, rt, clock
):
    start = await balance_of(client)
    await _fail_payouts(client, ["victim", "Victim", "VICTIM"])
    assert await balance_of(client) == start  # failures roll back

    blocked = await client.post("/payouts", json=payout_body(gamertag="vIcTiM"))
    assert blocked.status_code == 429, blocked.text
    data = blocked.json()["data"]
    assert data["error"] == "RECIPIENT_TEMPORARILY_BLOCKED"
    assert 590 <= data["retryAfter"] <= 600
    assert blocked.headers["Retry-After"] == str(data["retryAfter"])
    assert await balance_of(client) == start  # nothing reserved, nothing charged
    assert (
        await client.post("/payouts", json=payout_body(gamertag="bystander"))
    ).status_code == 201

    clock.advance(data["retryAfter"] * 1000)
    after = await client.post("/payouts", json=payout_body(gamertag="victim"))
    assert after.status_code == 201, after.text
    assert await balance_of(client) == start - 2 * COST
    assert (await reconcile(rt)).clean


async def test_failures_spread_wider_than_the_window_do_not_block(client, clock):
    await _fail_payouts(client, ["spread", "spread"])
    clock.advance(601_000)
    await _fail_payouts(client, ["spread"])
    assert (await client.post("/payouts", json=payout_body(gamertag="spread"))).status_code == 201


async def test_a_project_can_tighten_or_turn_off_the_block(client):
    tightened = await _guard(client, {"failuresMax": 2, "blockS": 60})
    assert tightened.status_code == 200, tightened.text
    assert tightened.json()["data"]["effective"] == {
        "failuresMax": 2,
        "failureWindowS": 600,
        "blockS": 60,
    }
    await _fail_payouts(client, ["twice", "twice"])
    blocked = await client.post("/payouts", json=payout_body(gamertag="twice"))
    assert blocked.json()["data"]["error"] == "RECIPIENT_TEMPORARILY_BLOCKED"
    assert 0 < blocked.json()["data"]["retryAfter"] <= 60

    off = await _guard(client, {"failuresMax": 0})
    assert off.json()["data"]["effective"]["failuresMax"] == 0
    assert (await client.post("/payouts", json=payout_body(gamertag="twice"))).status_code == 201

    reset = await _guard(client, {"failuresMax": None, "blockS": None})
    assert reset.json()["data"]["overrides"]["failuresMax"] is None
    assert reset.json()["data"]["effective"] == reset.json()["data"]["defaults"]


async def test_recipient_guard_settings_are_admin_only_and_validated(client):
    assert (
        await client.put(f"/projects/{PROJECT}/recipient-guard", json={"blockS": 5})
    ).status_code == 403
    for bad in ({"failuresMax": -1}, {"blockS": 0}, {"blockS": "60"}, {"nope": 1}, {}, [1]):
        response = await _guard(client, bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["data"]["error"] == "VALIDATION_ERROR"
    missing = await _guard(client, {"blockS": 5}, project="no_such_project")
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("failed_at_s", "until_s"),
    [
        ([], None),
        ([0, 100], None),
        ([0, 100, 600], 1200),  # three within 600 s: blocked 600 s from the third
        ([0, 100, 601], None),  # the first and third 601 s apart
        ([0, 100, 601, 650], 1250),
        ([0, 10, 20, 5000, 5010, 5020], 5620),  # the latest trio decides
    ],
)
def test_block_starts_at_the_failure_completing_a_trio_within_the_window(failed_at_s, until_s):
    policy = Policy(failures_max=3, failure_window_s=600, block_s=600)
    until = blocked_until_ms([t * 1000 for t in failed_at_s], policy)
    assert until == (None if until_s is None else until_s * 1000)
    assert blocked_until_ms([0, 1, 2], Policy(0, 600, 600)) is None
