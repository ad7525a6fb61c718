"""POST /payouts/batch: each item answered as a single POST would be, and the money to match.

Every test checks balances: each item's own fee, one charge per payout, nothing for a refusal,
nothing for a replay. Runs on SQLite and PostgreSQL; the racing test on PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of
from sqlalchemy import func, select

from payrail.config import Settings
from payrail.db.tables import payouts as payouts_table
from payrail.db.tables import transfers
from payrail.domain.money import fee_sats
from payrail.services import batches
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A batch settles many node calls at once: a wide wait, so every item ends final."""
    return dataclasses.replace(settings, settle_wait_ms=30_000, node_timeout_ms=20_000)


async def post_batch(client, items, key="batch-1", project=PROJECT, **headers):
    return await client.post(
        "/payouts/batch",
        json={"projectId": project, "items": items},
        headers={"Idempotency-Key": key, **headers} if key else headers,
    )


async def new_project(client, project_id: str, fund_sats: int) -> dict[str, str]:
    created = await client.post("/projects", json={"id": project_id}, headers=ADMIN)
    assert created.status_code == 201, created.text
    funded = await client.post(
        f"/projects/{project_id}/fund", json={"amount": fund_sats}, headers=ADMIN
    )
    assert funded.status_code == 200, funded.text
    return {"apikey": created.json()["data"]["apiKey"]}


async def posted_charges(rt, payout_id: str) -> int:
    """How many posting rows the ledger holds for this payout's two transfers."""
    async with rt.engine.connect() as conn:
        return await conn.scalar(
            select(func.count()).where(
                transfers.c.pending_id.like(f"{payout_id}:%"), transfers.c.kind == "post"
            )
        )


async def test_mixed_batch_charges_each_valid_item_its_own_fee_once_and_refuses_the_rest(
    client, rt
):
    start = await balance_of(client)
    items = [
        {"gamertag": "a1", "amount": 1},  # fee 1
        {"gamertag": "a2", "amount": 0},  # 400 INVALID_AMOUNT
        {"gamertag": "a3", "amount": 1_000, "internalId": "t-3"},  # fee 20
        {"gamertag": "bad tag!", "amount": 10},  # 400 VALIDATION_ERROR
        {"gamertag": "a5", "amount": 2_499, "description": "winner"},  # fee 50
        "not an object",  # 400 VALIDATION_ERROR
    ]
    response = await post_batch(client, items)
    assert response.status_code == 200, response.text
    answers = response.json()["data"]["items"]
    assert [a["httpStatus"] for a in answers] == [201, 400, 201, 400, 201, 400]
    assert [a["data"].get("error") for a in answers] == [
        None,
        "INVALID_AMOUNT",
        None,
        "VALIDATION_ERROR",
        None,
        "VALIDATION_ERROR",
    ]
    for answer, amount in zip([answers[0], answers[2], answers[4]], (1, 1_000, 2_499), strict=True):
        data = answer["data"]
        assert data["status"] == "completed" and data["amount"] == amount
        assert data["fee"] == fee_sats(amount) and data["totalCost"] == amount + fee_sats(amount)
        assert await posted_charges(rt, data["id"]) == 2  # amount and fee, posted once each
    assert answers[2]["data"]["internalId"] == "t-3"
    assert await balance_of(client) == start - (1 + 1) - (1_000 + 20) - (2_499 + 50)
    assert (await reconcile(rt)).clean


async def test_replay_of_the_batch_key_answers_the_same_items_and_charges_nothing(client, rt):
    start = await balance_of(client)
    items = [{"gamertag": f"r{i}", "amount": 100 + i} for i in range(5)]
    items.append({"gamertag": "r5", "amount": -1})
    first = await post_batch(client, items, key="replay-me")
    assert first.status_code == 200, first.text
    after_first = await balance_of(client)
    assert after_first == start - sum(100 + i + fee_sats(100 + i) for i in range(5))

    again = await post_batch(client, items, key="replay-me")
    assert again.status_code == 200, again.text
    assert again.json()["message"] == "Batch already processed"
    one, two = first.json()["data"]["items"], again.json()["data"]["items"]
    assert [a["data"].get("id") for a in one] == [a["data"].get("id") for a in two]
    assert [a["httpStatus"] for a in two] == [200] * 5 + [400]
    assert two[5]["data"]["error"] == "INVALID_AMOUNT"
    assert await balance_of(client) == after_first
    async with rt.engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(payouts_table))
    assert count == 5

    changed = await post_batch(client, items[:4], key="replay-me")
    assert changed.status_code == 422, changed.text
    assert changed.json()["data"]["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert await balance_of(client) == after_first


async def test_insufficient_balance_midway_pays_what_fits_and_refuses_the_rest_on_replay_too(
    client, rt
):
    key = await new_project(client, "studio_b", fund_sats=3 * 1_020)
    items = [{"gamertag": f"m{i}", "amount": 1_000} for i in range(5)]
    response = await post_batch(client, items, project="studio_b", **key)
    assert response.status_code == 200, response.text
    answers = response.json()["data"]["items"]
    assert [a["httpStatus"] for a in answers] == [201, 201, 201, 402, 402]
    refusal = answers[3]["data"]
    assert refusal["error"] == "INSUFFICIENT_BALANCE"
    assert (refusal["totalCost"], refusal["currentBalance"]) == (1_020, 0)
    assert await balance_of(client, "studio_b") == 0

    # Funds arrive; a replay still answers the refusals it gave, and pays nobody more.
    await client.post("/projects/studio_b/fund", json={"amount": 10_000}, headers=ADMIN)
    again = await post_batch(client, items, project="studio_b", **key)
    assert [a["httpStatus"] for a in again.json()["data"]["items"]] == [200, 200, 200, 402, 402]
    assert await balance_of(client, "studio_b") == 10_000
    assert (await reconcile(rt)).clean


async def test_rate_limit_counts_items_of_the_same_batch(client, rt):
    start = await balance_of(client)
    items = [{"gamertag": "same", "amount": 10} for _ in range(rt.settings.rate_limit_per_hour + 2)]
    response = await post_batch(client, items)
    statuses = [a["httpStatus"] for a in response.json()["data"]["items"]]
    limit = rt.settings.rate_limit_per_hour
    assert statuses == [201] * limit + [429, 429]
    assert response.json()["data"]["items"][-1]["data"]["error"] == "RATE_LIMIT_EXCEEDED"
    assert await balance_of(client) == start - limit * (10 + fee_sats(10))


async def test_an_item_key_already_used_by_a_single_payout_is_a_replay_not_a_second_charge(
    client, rt
):
    single = await client.post(
        "/payouts",
        json={"gamertag": "k", "amount": 500, "projectId": PROJECT, "idempotencyKey": "k-1"},
    )
    assert single.status_code == 201, single.text
    after_single = await balance_of(client)
    items = [
        {"gamertag": "k", "amount": 500, "idempotencyKey": "k-1"},  # the same payout
        {"gamertag": "k", "amount": 501, "idempotencyKey": "k-1"},  # another body: 422
        {"gamertag": "k2", "amount": 500, "idempotencyKey": "k-2"},
        {"gamertag": "k2", "amount": 500, "idempotencyKey": "k-2"},  # twice in one batch
    ]
    response = await post_batch(client, items, key="keys")
    answers = response.json()["data"]["items"]
    assert [a["httpStatus"] for a in answers] == [200, 422, 201, 200]
    assert answers[0]["data"]["id"] == single.json()["data"]["id"]
    assert answers[1]["data"]["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert answers[3]["data"]["id"] == answers[2]["data"]["id"]
    assert answers[3]["data"]["status"] == "completed"
    assert await balance_of(client) == after_single - 510
    assert (await reconcile(rt)).clean


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ({"projectId": PROJECT, "items": [{"gamertag": "x", "amount": 1}]}, {}, 400, None),
        ({"projectId": PROJECT, "items": []}, {"Idempotency-Key": "v"}, 400, "VALIDATION_ERROR"),
        ({"projectId": PROJECT, "items": "x"}, {"Idempotency-Key": "v"}, 400, "VALIDATION_ERROR"),
        ({"items": [{"gamertag": "x", "amount": 1}]}, {"Idempotency-Key": "v"}, 400, None),
        (
            {"projectId": PROJECT, "items": [{"gamertag": "x", "amount": 1}] * 1_001},
            {"Idempotency-Key": "v"},
            400,
            "VALIDATION_ERROR",
        ),
        (
            {"projectId": "nope", "items": [{"gamertag": "x", "amount": 1}]},
            {"Idempotency-Key": "v", "apikey": ADMIN_KEY},
            404,
            "PROJECT_NOT_FOUND",
        ),
        (
            {"projectId": "other", "items": [{"gamertag": "x", "amount": 1}]},
            {"Idempotency-Key": "v"},
            403,
            "FORBIDDEN",
        ),
    ],
)
async def test_a_malformed_batch_is_a_4xx_in_the_envelope_and_moves_nothing(
    client, body, headers, status, code
):
    start = await balance_of(client)
    response = await client.post("/payouts/batch", json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["success"] is False
    if code:
        assert response.json()["data"]["error"] == code
    assert await balance_of(client) == start


async def test_a_batch_of_1000_items_fits_the_body_limit_and_each_is_charged_once(client, rt):
    key = await new_project(client, "studio_k", fund_sats=1_000 * 102)
    items = [{"gamertag": f"p{i}", "amount": 100, "description": "x" * 40} for i in range(1_000)]
    response = await post_batch(client, items, project="studio_k", **key)
    assert response.status_code == 200, response.text
    answers = response.json()["data"]["items"]
    assert {a["httpStatus"] for a in answers} == {201}
    assert len({a["data"]["id"] for a in answers}) == 1_000
    assert await balance_of(client, "studio_k") == 0
    assert (await reconcile(rt)).clean


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_same_batch_sent_three_times_at_once_pays_each_item_once(client, rt):
    start = await balance_of(client)
    items = [{"gamertag": f"c{i}", "amount": 200} for i in range(30)]
    responses = await asyncio.gather(*(post_batch(client, items, key="race") for _ in range(3)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    ids = [[a["data"]["id"] for a in r.json()["data"]["items"]] for r in responses]
    assert ids[0] == ids[1] == ids[2]
    assert await balance_of(client) == start - 30 * (200 + fee_sats(200))
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(payouts_table)) == 30
    assert (await reconcile(rt)).clean


def test_item_keys_are_derived_from_the_batch_key_unless_given():
    assert batches.item_key("b", 3, None) == "b#3"
    assert batches.item_key("b", 3, "own") == "own"


@pytest.mark.parametrize("crashpoint", ["after_mark_in_flight", "after_node_call"])
async def test_a_batch_that_dies_mid_settlement_is_recovered_per_payout_and_paid_once(
    client, rt, clock, crashpoint, monkeypatch
):
    """The batch's reservations committed; the process dies before or after the node calls.
    The group job's lease runs out, the worker hands each payout its own settle job, and each
    asks the node first: paid once, charged once."""
    from payrail.bootstrap import SimulatedCrash
    from payrail.domain.payouts import parse_payout_request
    from payrail.entrypoints.worker import run_until_idle

    start = await balance_of(client)
    items = [
        parse_payout_request(
            {"gamertag": f"d{i}", "amount": 300, "projectId": PROJECT}, f"crash-batch#{i}"
        )
        for i in range(5)
    ]
    monkeypatch.setattr(batches, "SETTLE_CONCURRENCY_MAX", 2)  # 5 items: 3 waves of calls
    rt.crashpoints.add(crashpoint)
    with pytest.raises(SimulatedCrash):
        await batches.create_batch(rt, PROJECT, "crash-batch", items)
    await rt.drain()
    rt.crashpoints.clear()
    assert await balance_of(client) == start - 5 * 306  # reserved, not yet settled
    from payrail.db.tables import jobs

    async with rt.engine.connect() as conn:
        held = (await conn.execute(select(jobs.c.lease_until - jobs.c.created_at))).scalars()
        # the group's one job, leased through its 3 waves of node calls
        assert list(held) == [rt.settings.lease_ms + 2 * rt.settings.node_timeout_ms]
    rt.worker_id = "restarted-worker"
    clock.advance(rt.settings.lease_ms + 2 * rt.settings.node_timeout_ms + 1)
    # The group's one job (its lease ran out: it hands each payout its own), then the five.
    assert await run_until_idle(rt) == 6
    async with rt.engine.connect() as conn:
        ids = list(await conn.scalars(select(payouts_table.c.id)))
    assert len(ids) == 5
    for payout_id in ids:
        assert await posted_charges(rt, payout_id) == 2
    assert await balance_of(client) == start - 5 * 306
    assert (await reconcile(rt)).clean
    # The batch never answered, so nothing is stored: sending it again creates nothing new.
    again = await batches.create_batch(rt, PROJECT, "crash-batch", items)
    assert [a.replay for a in again.items] == [True] * 5
    assert await balance_of(client) == start - 5 * 306


async def test_a_batch_item_with_a_callback_url_gets_its_created_and_completed_events(client, rt):
    from payrail.entrypoints import worker

    url = "https://studio.example/batch-hook"
    items = [
        {"gamertag": "cb1", "amount": 100, "callbackUrl": url},
        {"gamertag": "cb2", "amount": 1},
    ]
    response = await post_batch(client, items, key="callbacks")
    answers = response.json()["data"]["items"]
    assert [a["httpStatus"] for a in answers] == [201, 201]
    await worker.run_until_idle(rt)
    log = (await client.get("/test/callbacks")).json()["data"]["callbacks"]
    assert {entry["url"] for entry in log} == {url}
    seen = sorted((e["payload"]["sequence"], e["payload"]["data"]["status"]) for e in log)
    assert seen == [(1, "pending"), (2, "completed")]
    assert all(e["payload"]["data"]["id"] == answers[0]["data"]["id"] for e in log)


async def test_batch_items_get_the_recipient_guard_and_directory_answers_of_single_payouts(
    client, rt
):
    """Read for the whole batch at once (one directory read, one failed-payout read): a blocked
    recipient, a suspended one and a registered keysend recipient each answered as alone."""
    pubkey = "02" + "ab" * 32
    assert (await client.put("/recipients/Keyed", json={"nodePubkey": pubkey})).status_code in (
        200,
        201,
    )
    suspended = await client.put(
        "/recipients/frozen", json={"nodePubkey": pubkey, "suspended": True}
    )
    assert suspended.status_code in (200, 201), suspended.text
    await client.post("/test/failure-injection", json={"enabled": True, "failureRate": 1.0})
    for spelling in ("blocky", "Blocky", "BLOCKY"):
        failed = await client.post(
            "/payouts", json={"gamertag": spelling, "amount": 10, "projectId": PROJECT}
        )
        assert failed.status_code == 502, failed.text
    await client.post("/test/failure-injection", json={"enabled": False})
    start = await balance_of(client)

    items = [
        {"gamertag": "bLoCkY", "amount": 100},
        {"gamertag": "keyed", "amount": 100},  # the directory's "Keyed", any case
        {"gamertag": "FROZEN", "amount": 100},
        {"gamertag": "newcomer", "amount": 100},  # sandbox: paid by name
    ]
    response = await post_batch(client, items, key="guarded-batch")
    assert response.status_code == 200, response.text
    answers = response.json()["data"]["items"]
    assert [a["httpStatus"] for a in answers] == [429, 201, 403, 201]
    assert answers[0]["data"]["error"] == "RECIPIENT_TEMPORARILY_BLOCKED"
    assert 590 <= answers[0]["data"]["retryAfter"] <= 600
    assert answers[2]["data"]["error"] == "RECIPIENT_SUSPENDED"
    keyed = await client.get(f"/payouts/{answers[1]['data']['id']}")
    assert keyed.json()["data"]["destinationKind"] == "keysend", keyed.text
    assert await balance_of(client) == start - 2 * (100 + fee_sats(100))
    assert (await reconcile(rt)).clean


async def _jobs(rt) -> list[tuple[str, str, str]]:
    from payrail.db.tables import jobs

    async with rt.engine.connect() as conn:
        rows = await conn.execute(select(jobs.c.kind, jobs.c.state, jobs.c.id).order_by(jobs.c.id))
        return [tuple(r) for r in rows]


async def test_a_settled_group_leaves_one_job_done_and_no_job_per_payout(client, rt):
    """The inline batch writes one job per reservation group, not one per payout; once every
    answer is recorded there is nothing left for the worker."""
    items = [{"gamertag": f"j{i}", "amount": 50} for i in range(batches.RESERVE_GROUP_MAX + 1)]
    start = await balance_of(client)
    response = await post_batch(client, items, key="one-job")
    assert [a["httpStatus"] for a in response.json()["data"]["items"]] == [201] * len(items)
    assert await balance_of(client) == start - len(items) * (50 + fee_sats(50))
    found = await _jobs(rt)
    assert [(kind, state) for kind, state, _ in found] == [
        (batches.SETTLE_GROUP_JOB, "done"),
        (batches.SETTLE_GROUP_JOB, "done"),
    ]


def test_a_group_job_lease_covers_each_wave_of_node_calls(rt):
    """A group of more payouts than SETTLE_CONCURRENCY_MAX calls its node in waves, each call
    bounded by node_timeout_ms: the lease outlasts them all, or a worker would take the group
    over while its calls are still running."""
    s, per_wave = rt.settings, batches.SETTLE_CONCURRENCY_MAX
    assert batches.group_lease_ms(rt, 1) == s.lease_ms
    assert batches.group_lease_ms(rt, per_wave) == s.lease_ms
    assert batches.group_lease_ms(rt, per_wave + 1) == s.lease_ms + s.node_timeout_ms
    waves = -(-batches.RESERVE_GROUP_MAX // per_wave)
    assert batches.group_lease_ms(rt, batches.RESERVE_GROUP_MAX) == (
        s.lease_ms + (waves - 1) * s.node_timeout_ms
    )


async def test_unknown_answers_in_a_batch_are_handed_to_their_own_jobs_and_paid_once(
    client, rt, clock
):
    """The node's answer is unknown for every item: each payout stays in flight, gets its own
    settle job, and the worker asks the node later: charged once, the rest of the group done."""
    from payrail.entrypoints.worker import run_until_idle

    await client.post(
        "/test/failure-injection",
        json={"enabled": True, "ambiguousRate": 1.0, "timeoutMs": 5, "ambiguousSettleMs": 1_000},
    )
    rt.settings = dataclasses.replace(rt.settings, settle_wait_ms=200)  # nothing to wait for
    start = await balance_of(client)
    items = [{"gamertag": f"u{i}", "amount": 200} for i in range(3)]
    response = await post_batch(client, items, key="unknown-answers")
    answers = response.json()["data"]["items"]
    assert [a["data"]["status"] for a in answers] == ["pending"] * 3
    assert await balance_of(client) == start - 3 * (200 + fee_sats(200))  # reserved, not charged
    found = await _jobs(rt)
    ids = sorted(a["data"]["id"] for a in answers)
    assert sorted(job_id for kind, _, job_id in found if kind == "settle_payout") == [
        f"settle:{i}" for i in ids
    ]
    assert [state for kind, state, _ in found if kind == batches.SETTLE_GROUP_JOB] == ["done"]
    await client.post("/test/failure-injection", json={"enabled": False})
    clock.advance(2_000)  # past the first retry's backoff, and the node has settled them
    assert await run_until_idle(rt) == 3
    for payout_id in ids:
        assert await posted_charges(rt, payout_id) == 2
    assert await balance_of(client) == start - 3 * (200 + fee_sats(200))
    assert (await reconcile(rt)).clean
