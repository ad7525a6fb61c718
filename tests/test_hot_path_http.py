"""The hot path (services/hot_path) against the general path: same answers, rows and balances.

The same requests go through two servers on one database, one with the hot path (each of a
payout's transactions as one unit) and one without (SQLAlchemy, statement by statement: the
reference), each on a project of its own, and every answer, every row written and every
balance must match, refusals included (which must write nothing). On PostgreSQL the hot path
is the PL/pgSQL functions of migration 0011; on SQLite, its unit where there is one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN_KEY
from sqlalchemy import func, select

from payrail.bootstrap import Runtime, build_runtime
from payrail.config import Settings
from payrail.db.tables import (
    accounts,
    callbacks,
    gamertag_locks,
    jobs,
    payout_events,
    payouts,
    transfers,
)
from payrail.domain.money import fee_sats
from payrail.entrypoints.http.app import create_app
from payrail.services import projects
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}
FUNDS = 50_000
COUNTED = (payouts, payout_events, jobs, transfers, gamertag_locks, callbacks)


@pytest.fixture
async def paths(settings: Settings, clock) -> AsyncIterator[dict[str, tuple[Runtime, Any]]]:
    """{"hot": (runtime, client), "general": (runtime, client)} on the same database."""
    made: dict[str, tuple[Runtime, Any]] = {}
    clients = []
    for name, on in (("hot", True), ("general", False)):
        rt = build_runtime(dataclasses.replace(settings, hot_path=on), clock=clock)
        if name == "hot":
            await projects.seed_sandbox(rt)
        app = create_app(rt.settings, runtime=rt, migrate_db=False)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test/api/v1",
            headers={"apikey": ADMIN_KEY},
        )
        clients.append(client)
        made[name] = (rt, client)
    yield made
    for client in clients:
        await client.aclose()
    for rt, _ in made.values():
        await rt.aclose()


async def _project(client, project_id: str) -> None:
    created = await client.post("/projects", json={"id": project_id}, headers=ADMIN)
    assert created.status_code == 201, created.text
    funded = await client.post(
        f"/projects/{project_id}/fund", json={"amount": FUNDS}, headers=ADMIN
    )
    assert funded.status_code == 200, funded.text


async def _counts(rt: Runtime) -> dict[str, int]:
    async with rt.engine.connect() as conn:
        return {t.name: await conn.scalar(select(func.count()).select_from(t)) for t in COUNTED}


async def _balance(rt: Runtime, project_id: str) -> tuple[int, int, int]:
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    accounts.c.debits_pending, accounts.c.debits_posted, accounts.c.credits_posted
                ).where(accounts.c.id == f"project:{project_id}")
            )
        ).one()
    return tuple(row)


def _shape(answer: httpx.Response) -> tuple[int, dict[str, Any]]:
    """An answer without what differs between two payouts (ids, times, project)."""
    data = dict(answer.json().get("data") or {})
    for key in (
        "id",
        "createdAt",
        "updatedAt",
        "settledAt",
        "expiresAt",
        "projectId",
        "idempotencyKey",
    ):
        data.pop(key, None)
    return answer.status_code, {"message": answer.json()["message"], **data}


async def _rows(rt: Runtime, payout_id: str) -> dict[str, Any]:
    """What a payout wrote, without its ids and times."""
    async with rt.engine.connect() as conn:
        row = dict(
            (await conn.execute(select(payouts).where(payouts.c.id == payout_id))).one()._mapping
        )
        events = (
            await conn.execute(
                select(
                    payout_events.c.from_status, payout_events.c.to_status, payout_events.c.cause
                )
                .where(payout_events.c.payout_id == payout_id)
                .order_by(payout_events.c.at_ms, payout_events.c.id)
            )
        ).all()
        moved = (
            await conn.execute(
                select(
                    transfers.c.id,
                    transfers.c.kind,
                    transfers.c.amount,
                    transfers.c.credit_account_id,
                )
                .where(transfers.c.id.like(f"{payout_id}:%"))
                .order_by(transfers.c.id)
            )
        ).all()
        job = (
            await conn.execute(
                select(jobs.c.state, jobs.c.kind, jobs.c.max_attempts).where(
                    jobs.c.id == f"settle:{payout_id}"
                )
            )
        ).one()
        sent = (
            await conn.execute(
                select(callbacks.c.sequence, callbacks.c.status, callbacks.c.url)
                .where(callbacks.c.payout_id == payout_id)
                .order_by(callbacks.c.sequence)
            )
        ).all()
    for key in (
        "id",
        "project_id",
        "created_at",
        "updated_at",
        "settled_at",
        "expires_at",
        "idempotency_key",
        "request_hash",
    ):
        row.pop(key)
    return {
        "payout": row,
        "events": [tuple(e) for e in events],
        "transfers": [
            (t.id.split(":", 1)[1], t.kind, t.amount, t.credit_account_id.rsplit(":", 1)[0])
            for t in moved
        ],
        "job": tuple(job),
        "callbacks": [tuple(c) for c in sent],
    }


async def _both(paths, send) -> dict[str, Any]:
    """Run `send(client, project_id)` on both paths, each on its own new project."""
    out = {}
    for name, (_rt, client) in paths.items():
        project_id = f"hp_{name}"
        if (await client.get(f"/projects/{project_id}/balance", headers=ADMIN)).status_code == 404:
            await _project(client, project_id)
        out[name] = await send(client, project_id)
    return out


async def test_the_hot_path_is_in_use_where_the_database_has_one(paths, database_url):
    rt, client = paths["hot"]
    general_rt, _ = paths["general"]
    assert general_rt.hot_path is None
    if database_url.startswith("postgresql"):
        assert rt.hot_path is not None
        await _project(client, "hp_used")
        before = rt.hot_path.calls
        response = await client.post(
            "/payouts", json={"gamertag": "u1", "amount": 10, "projectId": "hp_used"}
        )
        assert response.status_code == 201, response.text
        assert rt.hot_path.calls - before == 3  # the key/directory read, tx1, tx2


async def test_a_completed_payout_writes_the_same_rows_and_moves_the_same_money(paths):
    async def pay(client, project_id):
        return await client.post(
            "/payouts",
            json={
                "gamertag": "Same",
                "amount": 1_234,
                "projectId": project_id,
                "internalId": "i-1",
                "description": "prize",
            },
            headers={"Idempotency-Key": f"k-{project_id}"},
        )

    answers = await _both(paths, pay)
    assert _shape(answers["hot"]) == _shape(answers["general"])
    assert answers["hot"].status_code == 201
    rows = {name: await _rows(paths[name][0], answers[name].json()["data"]["id"]) for name in paths}
    assert rows["hot"] == rows["general"]
    for name, (rt, _) in paths.items():
        total = 1_234 + fee_sats(1_234)
        assert await _balance(rt, f"hp_{name}") == (0, total, FUNDS)
        assert (await reconcile(rt)).clean


async def test_a_failed_payout_is_voided_alike(paths):
    async def fail(client, project_id):
        await client.post("/test/failure-injection", json={"enabled": True, "failureRate": 1.0})
        try:
            return await client.post(
                "/payouts", json={"gamertag": "f1", "amount": 500, "projectId": project_id}
            )
        finally:
            await client.post("/test/failure-injection", json={"enabled": False})

    answers = await _both(paths, fail)
    assert _shape(answers["hot"]) == _shape(answers["general"])
    assert answers["hot"].status_code == 502
    for name, (rt, _) in paths.items():
        assert await _balance(rt, f"hp_{name}") == (0, 0, FUNDS)


async def test_a_payout_with_a_callback_url_queues_the_same_events(paths):
    async def pay(client, project_id):
        return await client.post(
            "/payouts",
            json={
                "gamertag": "cb",
                "amount": 100,
                "projectId": project_id,
                "callbackUrl": "http://127.0.0.1:9/hook",
            },
        )

    answers = await _both(paths, pay)
    assert _shape(answers["hot"]) == _shape(answers["general"])
    rows = {name: await _rows(paths[name][0], answers[name].json()["data"]["id"]) for name in paths}
    assert rows["hot"] == rows["general"]
    assert [c[0] for c in rows["hot"]["callbacks"]] == [1, 2]  # created, then completed


@pytest.mark.parametrize(
    "case",
    ["no_project", "insufficient", "rate_limited", "blocked", "replay", "key_reused"],
)
async def test_each_refusal_gets_the_same_answer_and_writes_nothing(paths, case):
    async def attempt(client, project_id):
        body = {"gamertag": "r1", "amount": 100, "projectId": project_id}
        key = {"Idempotency-Key": f"{case}-{project_id}"}
        if case == "no_project":
            body["projectId"] = "no_such_project"
        elif case == "insufficient":
            body["amount"] = FUNDS
        elif case == "rate_limited":
            for _ in range(10):
                assert (await client.post("/payouts", json=body)).status_code == 201
        elif case == "blocked":
            await client.post("/test/failure-injection", json={"enabled": True, "failureRate": 1.0})
            for _ in range(3):
                assert (await client.post("/payouts", json=body)).status_code == 502
            await client.post("/test/failure-injection", json={"enabled": False})
        elif case in ("replay", "key_reused"):
            assert (await client.post("/payouts", json=body, headers=key)).status_code == 201
            if case == "key_reused":
                body = {**body, "amount": 101}
        rt = paths["hot" if project_id == "hp_hot" else "general"][0]
        before, balance = await _counts(rt), await _balance(rt, project_id)
        answer = await client.post("/payouts", json=body, headers=key)
        assert await _counts(rt) == before, f"{case}: a refusal wrote rows"
        assert await _balance(rt, project_id) == balance
        return answer

    answers = await _both(paths, attempt)
    expected = {
        "no_project": 404,
        "insufficient": 402,
        "rate_limited": 429,
        "blocked": 429,
        "replay": 200,
        "key_reused": 422,
    }[case]
    assert answers["hot"].status_code == expected, answers["hot"].text
    hot, general = _shape(answers["hot"]), _shape(answers["general"])
    for data in (hot[1], general[1]):
        data.pop("payoutId", None)  # key_reused names the payout, whose id differs
    assert hot == general


async def test_concurrent_payouts_finish_in_shared_calls_with_exact_balances(paths, database_url):
    """Finalizations that meet in one process share a call (PostgreSQL): completed, failed and
    callback payouts mixed in one group each end as they would alone, the money exact."""
    rt, client = paths["hot"]
    await _project(client, "hp_group")
    grouped = database_url.startswith("postgresql")  # SQLite's unit shares COMMITs, not calls
    before = rt.hot_path.calls if grouped else 0
    await client.post("/test/failure-injection", json={"enabled": True, "failureRate": 0.3})
    bodies = [
        {"gamertag": f"grp{i}", "amount": 100 + i, "projectId": "hp_group"}
        | ({"callbackUrl": "http://127.0.0.1:9/hook"} if i % 7 == 0 else {})
        for i in range(40)
    ]
    answers = await asyncio.gather(*(client.post("/payouts", json=b) for b in bodies))
    await client.post("/test/failure-injection", json={"enabled": False})
    codes = Counter(a.status_code for a in answers)
    assert set(codes) <= {201, 502} and codes[201] > 0, codes
    paid = sum(
        b["amount"] + fee_sats(b["amount"])
        for b, a in zip(bodies, answers, strict=True)
        if a.status_code == 201
    )
    assert await _balance(rt, "hp_group") == (0, paid, FUNDS)
    for body, answer in zip(bodies, answers, strict=True):
        row = await _rows(rt, answer.json()["data"].get("id") or answer.json()["data"]["payoutId"])
        assert row["payout"]["state"] == ("completed" if answer.status_code == 201 else "failed")
        assert row["job"][0] == "done"
        assert [c[0] for c in row["callbacks"]] == ([1, 2] if "callbackUrl" in body else [])
    if grouped:  # without grouping: 40 lookups, 40 reservations, 40 finalizations
        assert rt.hot_path.calls - before < 3 * 40
    assert (await reconcile(rt)).clean


async def test_concurrent_reservations_in_shared_calls_are_each_decided_as_alone(
    paths, database_url
):
    """Reservations that meet in one process share a call (PostgreSQL): refusals of every kind
    mixed with payouts in the same groups, each answered as alone, nothing charged twice or
    for a refusal, the rate limit exact."""
    rt, client = paths["hot"]
    funds = 15 * (1_000 + fee_sats(1_000))  # room for 15 of the 20 below
    created = await client.post("/projects", json={"id": "hp_mix"}, headers=ADMIN)
    assert created.status_code == 201
    await client.post("/projects/hp_mix/fund", json={"amount": funds}, headers=ADMIN)
    await _project(client, "hp_mix2")
    grouped = database_url.startswith("postgresql")  # SQLite's unit shares COMMITs, not calls
    before = rt.hot_path.calls if grouped else 0
    requests = (
        [({"gamertag": f"mix{i}", "amount": 1_000, "projectId": "hp_mix"}, None) for i in range(20)]
        + [({"gamertag": "Hot", "amount": 10, "projectId": "hp_mix2"}, None) for _ in range(12)]
        + [
            ({"gamertag": f"twice{k}", "amount": 20, "projectId": "hp_mix2"}, f"twice-{k}")
            for k in range(5)
            for _ in range(2)
        ]
        + [({"gamertag": "nobody", "amount": 10, "projectId": "hp_none"}, None)] * 3
    )
    answers = await asyncio.gather(
        *(
            client.post("/payouts", json=body, headers={"Idempotency-Key": key} if key else {})
            for body, key in requests
        )
    )
    by_kind = Counter(
        (body["projectId"], body["gamertag"][:3], a.status_code)
        for (body, _), a in zip(requests, answers, strict=True)
    )
    assert by_kind[("hp_mix", "mix", 201)] == 15 and by_kind[("hp_mix", "mix", 402)] == 5
    assert by_kind[("hp_mix2", "Hot", 201)] == 10 and by_kind[("hp_mix2", "Hot", 429)] == 2
    assert by_kind[("hp_none", "nob", 404)] == 3
    for k in range(5):
        pair = [a for (b, key), a in zip(requests, answers, strict=True) if key == f"twice-{k}"]
        assert sorted(a.status_code for a in pair) in ([200, 201], [201, 201]), pair
        assert pair[0].json()["data"]["id"] == pair[1].json()["data"]["id"]
    assert await _balance(rt, "hp_mix") == (0, funds, funds)
    spent2 = 10 * (10 + fee_sats(10)) + 5 * (20 + fee_sats(20))
    assert await _balance(rt, "hp_mix2") == (0, spent2, FUNDS)
    if grouped:
        assert rt.hot_path.calls - before < 3 * len(requests)
    assert (await reconcile(rt)).clean
