"""Concurrency on real PostgreSQL: row locks and conditional updates hold under load.

Every test fires its requests at once with asyncio.gather and then checks the money: the
balance, the reservation, the payout rows and reconciliation, not only the status codes.
A sampler reads the project account while the requests run, so a balance that went
negative for a moment is caught even if it came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from sqlalchemy import func, select

from payrail.bootstrap import Runtime
from payrail.config import Settings
from payrail.db.tables import payouts as payouts_table
from payrail.domain.money import fee_sats
from payrail.domain.payouts import FINAL_STATES
from payrail.entrypoints import worker
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.services.reconcile import reconcile

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

ADMIN = {"apikey": ADMIN_KEY}
SAMPLE_INTERVAL_S = 0.005
SETTLE_ROUNDS_MAX = 20
JOB_BACKOFF_CAP_MS = 60_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Wider windows than conftest's: hundreds of requests share one pool with the simulated
    node, so on a busy host a node call can outlast 2 s, which is an unknown outcome (202),
    not the race these tests are about."""
    return dataclasses.replace(
        settings, settle_wait_ms=30_000, node_timeout_ms=20_000, lease_ms=60_000
    )


class BalanceSampler:
    """The lowest available balance and reservation seen on the account while it ran."""

    def __init__(self) -> None:
        self.samples = 0
        self.min_available: int | None = None
        self.min_debits_pending: int | None = None


@contextlib.asynccontextmanager
async def sampling(rt: Runtime, project_id: str) -> AsyncIterator[BalanceSampler]:
    sampler = BalanceSampler()
    stop = asyncio.Event()
    account = acct.project_account(project_id)

    async def sample_once() -> None:
        async with rt.engine.connect() as conn:
            b = await ledger.balance(conn, account)
        assert b is not None
        sampler.samples += 1
        low = sampler.min_available
        sampler.min_available = b.available if low is None else min(low, b.available)
        low = sampler.min_debits_pending
        sampler.min_debits_pending = b.debits_pending if low is None else min(low, b.debits_pending)

    async def loop() -> None:
        while not stop.is_set():
            await sample_once()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    task = asyncio.create_task(loop())
    try:
        yield sampler
    finally:
        stop.set()
        await task
    await sample_once()


async def account_balance(rt: Runtime, project_id: str) -> ledger.Balance:
    async with rt.engine.connect() as conn:
        b = await ledger.balance(conn, acct.project_account(project_id))
    assert b is not None
    return b


async def fire(client: httpx.AsyncClient, bodies, headers=None) -> list[httpx.Response]:
    return list(
        await asyncio.gather(*(client.post("/payouts", json=b, headers=headers) for b in bodies))
    )


async def project_payouts(
    client: httpx.AsyncClient, project_id: str = PROJECT, headers=None
) -> list[dict]:
    """Every payout of the project, through the paginated list."""
    seen: list[dict] = []
    params: dict[str, object] = {"projectId": project_id, "limit": 100}
    while True:
        response = await client.get("/payouts", params=params, headers=headers)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        seen.extend(data["payouts"])
        if not data["nextCursor"]:
            return seen
        params["cursor"] = data["nextCursor"]


async def settle_all(rt: Runtime, clock) -> None:
    """Let the job worker finish what the inline path left in flight (as a deployment would)."""
    await rt.drain()
    for _ in range(SETTLE_ROUNDS_MAX):
        async with rt.engine.connect() as conn:
            open_ = await conn.scalar(
                select(func.count())
                .select_from(payouts_table)
                .where(payouts_table.c.state.not_in([s.value for s in FINAL_STATES]))
            )
        if not open_:
            return
        clock.advance(JOB_BACKOFF_CAP_MS + 1)  # every rescheduled job is due, every lease over
        await worker.run_until_idle(rt)
    raise AssertionError(f"{open_} payouts still not final after {SETTLE_ROUNDS_MAX} rounds")


def codes(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


async def test_200_concurrent_payouts_charge_exactly_their_total_cost_and_never_overdraw(
    client, rt, clock
):
    fund = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 300_000})
    assert fund.status_code == 200, fund.text
    start = await balance_of(client)
    # Distinct gamertags (the rate limit is per gamertag) and distinct amounts and fees.
    bodies = [payout_body(gamertag=f"crowd{i}", amount=500 + 7 * i) for i in range(200)]
    assert start >= sum(b["amount"] + fee_sats(b["amount"]) for b in bodies)

    async with sampling(rt, PROJECT) as sampler:
        responses = await fire(client, bodies)

    # 202 is a legal answer too: under this load a settlement may outlast the wait window.
    assert set(codes(responses)) <= {201, 202}, [r.text for r in responses if r.status_code >= 300]
    await settle_all(rt, clock)
    accepted = [r.json()["data"] for r in responses]
    assert len({p["id"] for p in accepted}) == 200
    for payout in (p for r, p in zip(responses, accepted, strict=True) if r.status_code == 202):
        got = await client.get(f"/payouts/{payout['id']}")
        assert got.json()["data"]["status"] == "completed", got.text
    assert all(
        p["status"] == "completed"
        for r, p in zip(responses, accepted, strict=True)
        if r.status_code == 201
    )
    for body, payout in zip(bodies, accepted, strict=True):
        assert (payout["gamertag"], payout["amount"]) == (body["gamertag"], body["amount"])
        assert payout["totalCost"] == body["amount"] + fee_sats(body["amount"])
    charged = sum(p["totalCost"] for p in accepted)
    assert await balance_of(client) == start - charged
    b = await account_balance(rt, PROJECT)
    assert (b.debits_pending, b.credits_posted - b.debits_posted) == (0, start - charged)
    assert sampler.samples > 1
    assert sampler.min_available >= start - charged >= 0
    assert sampler.min_debits_pending >= 0
    assert len(await project_payouts(client)) == 200
    report = await reconcile(rt)
    assert report.clean, report.discrepancies
    assert report.payouts_checked == 200


async def test_rate_limit_is_exact_under_concurrency_ten_accepted_five_refused_with_retry_after(
    client, rt
):
    start = await balance_of(client)
    responses = await fire(client, [payout_body(gamertag="hammered") for _ in range(15)])

    assert codes(responses) == {201: 10, 429: 5}, [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 429):
        data = refused.json()["data"]
        assert data["error"] == "RATE_LIMIT_EXCEEDED"
        retry_after = data["retryAfter"]
        assert type(retry_after) is int and 0 < retry_after <= 3600, retry_after
    accepted = [r.json()["data"] for r in responses if r.status_code == 201]
    assert all(p["status"] == "completed" for p in accepted)
    assert await balance_of(client) == start - 10 * 1020
    assert (await account_balance(rt, PROJECT)).debits_pending == 0
    stored = await project_payouts(client)
    assert sorted(p["id"] for p in stored) == sorted(p["id"] for p in accepted)
    assert (await reconcile(rt)).clean


async def test_50_concurrent_requests_with_one_idempotency_key_make_one_payout_charged_once(
    client, rt
):
    start = await balance_of(client)
    body = payout_body(gamertag="keyed", idempotencyKey="one-key-50")
    responses = await fire(client, [body] * 50)

    assert codes(responses) == {201: 1, 200: 49}, [r.text for r in responses]
    assert len({r.json()["data"]["id"] for r in responses}) == 1
    for replay in (r for r in responses if r.status_code == 200):
        assert "already processed" in replay.json()["message"]
    assert all(r.json()["data"]["status"] == "completed" for r in responses)
    assert await balance_of(client) == start - 1020
    assert (await account_balance(rt, PROJECT)).debits_pending == 0
    stored = await project_payouts(client)
    assert [p["id"] for p in stored] == [responses[0].json()["data"]["id"]]
    assert stored[0]["idempotencyKey"] == "one-key-50"
    assert (await reconcile(rt)).clean


async def test_concurrent_payouts_beyond_the_balance_accept_exactly_what_fits_and_never_overdraw(
    client, rt
):
    created = await client.post("/projects", json={"id": "race_budget"}, headers=ADMIN)
    assert created.status_code == 201, created.text
    key = {"apikey": created.json()["data"]["apiKey"]}
    fund = await client.post("/projects/race_budget/fund", json={"amount": 10_200}, headers=ADMIN)
    assert fund.status_code == 200, fund.text
    assert await balance_of(client, "race_budget") == 10_200
    bodies = [
        payout_body(gamertag=f"racer{i}", amount=1000, projectId="race_budget") for i in range(30)
    ]

    async with sampling(rt, "race_budget") as sampler:
        responses = await fire(client, bodies, headers=key)

    assert codes(responses) == {201: 10, 402: 20}, [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 402):
        data = refused.json()["data"]
        assert data["error"] == "INSUFFICIENT_BALANCE"
        assert (data["requiredAmount"], data["fee"], data["totalCost"]) == (1000, 20, 1020)
        assert 0 <= data["currentBalance"] < 1020
    accepted = [r.json()["data"] for r in responses if r.status_code == 201]
    assert all(p["totalCost"] == 1020 for p in accepted)
    for payout in accepted:
        got = await client.get(f"/payouts/{payout['id']}", headers=key)
        assert got.json()["data"]["status"] == "completed"
    assert await balance_of(client, "race_budget") == 0
    b = await account_balance(rt, "race_budget")
    assert (b.credits_posted, b.debits_posted, b.debits_pending) == (10_200, 10_200, 0)
    assert sampler.min_available == 0  # reached exactly 0, never below
    assert sampler.min_debits_pending >= 0
    stored = await project_payouts(client, "race_budget", headers=key)
    assert sorted(p["id"] for p in stored) == sorted(p["id"] for p in accepted)
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


@pytest.mark.parametrize(
    "difference",
    [{"amount": 7}, {"gamertag": "someone_else"}],
    ids=["same-gamertag-other-amount", "other-gamertag"],
)
async def test_replays_racing_a_different_body_on_one_key_give_it_422_and_never_a_second_payout(
    client, rt, difference
):
    start = await balance_of(client)
    original = payout_body(gamertag="contested", idempotencyKey="raced-key")
    other = {**original, **difference}
    # The different bodies sit among the replays so that they race at every point of tx1.
    bodies = [original] * 10 + [other] * 3 + [original] * 10 + [other] * 3 + [original] * 10
    responses = await fire(client, bodies)

    # Whichever body's request commits first owns the key; normally the first one sent.
    winner = next(r for r in responses if r.status_code == 201)
    winner_id = winner.json()["data"]["id"]
    winning_body = original if winner.json()["data"]["amount"] == original["amount"] else other
    if "gamertag" in difference:
        winning_body = original if winner.json()["data"]["gamertag"] == "contested" else other
    assert codes(responses)[201] == 1, [r.text for r in responses]
    for body, response in zip(bodies, responses, strict=True):
        data = response.json()["data"]
        if body is winning_body:
            assert response.status_code in (200, 201), response.text
            assert data["id"] == winner_id
            assert data["status"] == "completed"
        else:
            assert response.status_code == 422, response.text
            assert data["error"] == "IDEMPOTENCY_KEY_REUSED"
            assert data["payoutId"] == winner_id
    assert await balance_of(client) == start - winner.json()["data"]["totalCost"]
    assert (await account_balance(rt, PROJECT)).debits_pending == 0
    assert [p["id"] for p in await project_payouts(client)] == [winner_id]
    assert (await reconcile(rt)).clean
