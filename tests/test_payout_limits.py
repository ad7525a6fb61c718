"""Amount caps per project (GET/PUT /projects/{id}/limits) and playerId, through the API.

Each refusal is checked for what it writes (nothing: the balance, the payout rows and the
ledger are unchanged) as well as its answer; the PostgreSQL races check that 50 concurrent
requests for the last room under a cap never overshoot it by one sat. The rules themselves
are checked against a model in tests/test_payout_engine_model.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from sqlalchemy import func, select

from payrail.config import Settings
from payrail.db.tables import payouts as payouts_table
from payrail.db.tables import project_limit_changes
from payrail.domain.money import fee_sats
from payrail.domain.payout_engine import DAY_MS, SPENT_BUCKET_MS
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}


async def put_limits(client, project=PROJECT, **caps):
    response = await client.put(f"/projects/{project}/limits", json=caps, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def payout_count(rt, project=PROJECT) -> int:
    async with rt.engine.connect() as conn:
        where = payouts_table.c.project_id == project
        return int(await conn.scalar(select(func.count()).where(where)))


async def charged(rt, project=PROJECT) -> int:
    """Sats of the project's payouts that are not voided (what a daily cap counts)."""
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    payouts_table.c.amount, payouts_table.c.state, payouts_table.c.charge_posted
                ).where(payouts_table.c.project_id == project)
            )
        ).all()
    return sum(
        r.amount for r in rows if not (r.state in ("failed", "expired") and not r.charge_posted)
    )


def _ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


async def test_limits_are_read_by_the_project_set_by_the_admin_and_audited(client, rt):
    got = await client.get(f"/projects/{PROJECT}/limits")  # the project's own key
    assert got.status_code == 200, got.text
    data = got.json()["data"]
    assert [data[k] for k in ("perPayoutMaxSats", "perPlayerDailyMaxSats")] == [None, None]
    assert data["projectDailyMaxSats"] is None and data["changes"] == []

    refused = await client.put(f"/projects/{PROJECT}/limits", json={"perPayoutMaxSats": 1})
    assert refused.status_code == 403, refused.text  # a project key reads, never sets
    for bad in (
        {"perPayoutMaxSats": -1},
        {"perPayoutMaxSats": "5"},
        {"perPayoutMaxSats": 1.5},
        {"perPayoutMaxSats": True},
        {"nope": 1},
        {},
        [],
    ):
        answer = await client.put(f"/projects/{PROJECT}/limits", json=bad, headers=ADMIN)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["data"]["error"] == "VALIDATION_ERROR"
    missing = await client.put("/projects/nope/limits", json={"perPayoutMaxSats": 1}, headers=ADMIN)
    assert missing.status_code == 404
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(project_limit_changes)) == 0

    first = await put_limits(client, perPayoutMaxSats=5_000, projectDailyMaxSats=100_000)
    assert (first["perPayoutMaxSats"], first["projectDailyMaxSats"]) == (5_000, 100_000)
    second = await put_limits(client, perPayoutMaxSats=None, perPlayerDailyMaxSats=2_000)
    # The fields a PUT does not name keep their value.
    assert (second["perPayoutMaxSats"], second["projectDailyMaxSats"]) == (None, 100_000)
    assert second["perPlayerDailyMaxSats"] == 2_000
    newest, oldest = second["changes"]
    assert oldest["old"]["perPayoutMaxSats"] is None and oldest["new"]["perPayoutMaxSats"] == 5_000
    assert newest["old"]["perPayoutMaxSats"] == 5_000 and newest["new"]["perPayoutMaxSats"] is None
    assert newest["actor"].startswith("admin:")


async def test_a_payout_above_the_per_payout_cap_is_refused_and_writes_nothing(client, rt):
    await put_limits(client, perPayoutMaxSats=5_000)
    before, count = await balance_of(client), await payout_count(rt)
    refused = await client.post("/payouts", json=payout_body(amount=5_001))
    assert refused.status_code == 403, refused.text
    data = refused.json()["data"]
    assert data["error"] == "PAYOUT_LIMIT_EXCEEDED"
    assert (data["limit"], data["limitSats"], data["amount"]) == ("perPayoutMaxSats", 5_000, 5_001)
    assert await balance_of(client) == before and await payout_count(rt) == count
    paid = await client.post("/payouts", json=payout_body(amount=5_000))
    assert paid.status_code == 201, paid.text
    assert await balance_of(client) == before - 5_000 - fee_sats(5_000)
    assert (await reconcile(rt)).clean


async def test_the_player_cap_follows_the_player_id_across_gamertags(client, rt, clock):
    await put_limits(client, perPlayerDailyMaxSats=3_000)
    first = await client.post(
        "/payouts", json=payout_body(gamertag="alt1", amount=2_000, playerId="P-7")
    )
    assert first.status_code == 201, first.text
    assert first.json()["data"]["playerId"] == "P-7"
    created = _ms(first.json()["data"]["createdAt"])
    before, count = await balance_of(client), await payout_count(rt)
    # A new gamertag does not get the player around the cap.
    refused = await client.post(
        "/payouts", json=payout_body(gamertag="alt2", amount=1_500, playerId="P-7")
    )
    assert refused.status_code == 429, refused.text
    data = refused.json()["data"]
    assert data["error"] == "PLAYER_DAILY_LIMIT"
    assert (data["limitSats"], data["usedSats"], data["amount"]) == (3_000, 2_000, 1_500)
    retry_at = _ms(data["retryAt"])
    assert created + DAY_MS <= retry_at <= created + DAY_MS + SPENT_BUCKET_MS  # never early
    assert int(refused.headers["Retry-After"]) == data["retryAfter"] >= 1
    assert await balance_of(client) == before and await payout_count(rt) == count
    # Without a playerId a payout counts per recipient: alt1's own day is empty.
    other = await client.post("/payouts", json=payout_body(gamertag="alt1", amount=1_500))
    assert other.status_code == 201, other.text
    # Another player is not this one.
    again = await client.post(
        "/payouts", json=payout_body(gamertag="alt2", amount=2_500, playerId="P-8")
    )
    assert again.status_code == 201, again.text
    listed = await client.get("/payouts", params={"playerId": "P-7"})
    assert [p["playerId"] for p in listed.json()["data"]["payouts"]] == ["P-7"]
    # Once the first payout has left the rolling day, P-7 has room again.
    clock.advance(retry_at - clock.now_ms() + 1)
    later = await client.post(
        "/payouts", json=payout_body(gamertag="alt2", amount=1_500, playerId="P-7")
    )
    assert later.status_code == 201, later.text
    assert (await reconcile(rt)).clean


async def test_the_rate_limit_counts_per_player_id(client, rt):
    rate = rt.settings.rate_limit_per_hour
    for i in range(rate):
        ok = await client.post(
            "/payouts", json=payout_body(gamertag=f"g{i}", amount=10, playerId="R")
        )
        assert ok.status_code == 201, ok.text
    refused = await client.post(
        "/payouts", json=payout_body(gamertag="fresh", amount=10, playerId="R")
    )
    assert refused.status_code == 429 and refused.json()["data"]["error"] == "RATE_LIMIT_EXCEEDED"
    ok = await client.post("/payouts", json=payout_body(gamertag="fresh", amount=10))
    assert ok.status_code == 201, ok.text


async def test_a_bad_player_id_is_a_400_and_changes_nothing(client, rt):
    before = await balance_of(client)
    for bad in ("", "x" * 129, 7, "a\x00b", "a\nb"):
        answer = await client.post("/payouts", json=payout_body(playerId=bad))
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["data"]["error"] == "VALIDATION_ERROR"
    listed = await client.get("/payouts", params={"playerId": "x" * 129})
    assert listed.status_code == 400
    assert await balance_of(client) == before and await payout_count(rt) == 0


async def test_the_project_cap_answers_each_batch_item_as_alone(client, rt):
    await put_limits(client, projectDailyMaxSats=5_000)
    before = await balance_of(client)
    items = [{"gamertag": f"b{i}", "amount": 2_000, "playerId": f"bp{i}"} for i in range(4)]
    answer = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": items},
        headers={"Idempotency-Key": "capped-batch"},
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()["data"]["items"]
    assert [i["httpStatus"] for i in got] == [201, 201, 429, 429], got
    assert {i["data"]["error"] for i in got[2:]} == {"PROJECT_DAILY_LIMIT"}
    assert got[2]["data"]["usedSats"] == 4_000
    assert [i["data"]["playerId"] for i in got[:2]] == ["bp0", "bp1"]
    assert await balance_of(client) == before - 2 * (2_000 + fee_sats(2_000))
    assert await charged(rt) == 4_000
    # A replay of the batch answers the same items, refusals included, and charges nothing.
    replay = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": items},
        headers={"Idempotency-Key": "capped-batch"},
    )
    assert replay.status_code == 200, replay.text
    again = replay.json()["data"]["items"]
    assert [i["httpStatus"] for i in again] == [200, 200, 429, 429], again  # 200: replayed
    assert again[3]["data"]["error"] == "PROJECT_DAILY_LIMIT"
    assert await charged(rt) == 4_000
    assert (await reconcile(rt)).clean


# ---------------------------------------------------------------- races


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Wide windows: 50 requests share one pool with the simulated node on a busy host."""
    return dataclasses.replace(
        settings, settle_wait_ms=30_000, node_timeout_ms=20_000, lease_ms=60_000
    )


async def test_50_requests_racing_the_last_room_under_the_project_cap_never_overshoot(client, rt):
    """On both databases: PostgreSQL's row lock, SQLite's one writer."""
    fund = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 200_000}, headers=ADMIN)
    assert fund.status_code == 200, fund.text
    cap = 20_500
    await put_limits(client, projectDailyMaxSats=cap)
    warm = await client.post("/payouts", json=payout_body(gamertag="early", amount=10_000))
    assert warm.status_code == 201, warm.text
    before = await balance_of(client)
    bodies = [payout_body(gamertag=f"racer{i}", amount=1_000) for i in range(50)]
    responses = await asyncio.gather(*(client.post("/payouts", json=b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 10 + [429] * 40, [r.text for r in responses if r.status_code >= 500]
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["data"]["error"] == "PROJECT_DAILY_LIMIT"
        assert refused.json()["data"]["usedSats"] + 1_000 > cap
    assert await charged(rt) == 20_000 <= cap
    assert await balance_of(client) == before - 10 * (1_000 + fee_sats(1_000))
    assert await payout_count(rt) == 11
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_50_requests_of_one_player_racing_its_cap_never_overshoot(client, rt):
    fund = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 200_000}, headers=ADMIN)
    assert fund.status_code == 200, fund.text
    await put_limits(client, perPlayerDailyMaxSats=7_000)
    before = await balance_of(client)
    # Distinct gamertags and amounts, one player: the cap, not the rate limit, is reached.
    bodies = [payout_body(gamertag=f"alt{i}", amount=900 + i, playerId="whale") for i in range(50)]
    responses = await asyncio.gather(*(client.post("/payouts", json=b) for b in bodies))
    accepted = [r.json()["data"] for r in responses if r.status_code == 201]
    refused = [r.json()["data"] for r in responses if r.status_code != 201]
    assert {d["error"] for d in refused} == {"PLAYER_DAILY_LIMIT"}, refused[:3]
    total = sum(p["amount"] for p in accepted)
    assert total <= 7_000 and all(d["usedSats"] + d["amount"] > 7_000 for d in refused)
    assert await charged(rt) == total
    assert await balance_of(client) == before - sum(p["totalCost"] for p in accepted)
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


async def test_a_directory_entry_names_the_player_of_payouts_to_its_gamertag(client, rt):
    await put_limits(client, perPlayerDailyMaxSats=3_000)
    for gamertag in ("main_acc", "alt_acc"):
        entry = await client.put(
            f"/recipients/{gamertag}",
            json={"lightningAddress": f"{gamertag}@example.com", "playerId": "P-dir"},
        )
        assert entry.status_code in (200, 201), entry.text
        assert entry.json()["data"]["playerId"] == "P-dir"
    first = await client.post(
        "/payouts", json=payout_body(gamertag="main_acc", amount=2_000, idempotencyKey="d-1")
    )
    assert first.status_code == 201, first.text
    assert first.json()["data"]["playerId"] == "P-dir"
    # A retry of the same body replays it (the directory's player is not in its fingerprint).
    again = await client.post(
        "/payouts", json=payout_body(gamertag="main_acc", amount=2_000, idempotencyKey="d-1")
    )
    assert again.status_code == 200, again.text
    before = await balance_of(client)
    alt = await client.post("/payouts", json=payout_body(gamertag="alt_acc", amount=1_500))
    assert alt.status_code == 429 and alt.json()["data"]["error"] == "PLAYER_DAILY_LIMIT"
    # A batch item to the alt account is the same player too.
    batch = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": [{"gamertag": "alt_acc", "amount": 1_500}]},
        headers={"Idempotency-Key": "dir-batch"},
    )
    assert batch.json()["data"]["items"][0]["data"]["error"] == "PLAYER_DAILY_LIMIT"
    # The payout's own playerId wins over the directory's.
    own = await client.post(
        "/payouts", json=payout_body(gamertag="alt_acc", amount=1_500, playerId="P-own")
    )
    assert own.status_code == 201 and own.json()["data"]["playerId"] == "P-own"
    assert await balance_of(client) == before - 1_500 - fee_sats(1_500)
    bad = await client.put(
        "/recipients/x1", json={"lightningAddress": "x1@example.com", "playerId": ""}
    )
    assert bad.status_code == 400
    assert (await reconcile(rt)).clean
