"""Sandbox routes act on the caller's project only (issue 24, finding 1).

Before: `DELETE /test/reset` with one project's key wiped every project, and
`POST /test/failure-injection` with any project key changed the knobs of all projects,
`rollbackOnTimeout: false` included. A sandbox is shared by a studio's team and its CI: one
project's test must not change or erase anything of another's.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of, payout_body
from sqlalchemy import func, select

from payrail.config import Settings
from payrail.db.tables import payouts
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH
from payrail.entrypoints import worker
from payrail.services.faults import FailureInjection

ADMIN = {"apikey": ADMIN_KEY}
A = {"apikey": SANDBOX_KEY}  # project A: the seeded project_test_001
B_ID = "studio_b"
COST = 1020  # 1000 sats + the 2 % fee
LEGACY = {"enabled": True, "timeoutRate": 1.0, "timeoutMs": 5, "rollbackOnTimeout": False}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, settle_wait_ms=2_000)


@pytest.fixture
async def b_key(client) -> str:
    created = await client.post("/projects", json={"id": B_ID, "name": "B"}, headers=ADMIN)
    assert created.status_code == 201, created.text
    funded = await client.post(f"/projects/{B_ID}/fund", json={"amount": 50_000}, headers=ADMIN)
    assert funded.status_code == 200, funded.text
    return created.json()["data"]["apiKey"]


async def _payouts_of(rt, project_id: str) -> int:
    async with rt.engine.connect() as conn:
        return await conn.scalar(
            select(func.count()).select_from(payouts).where(payouts.c.project_id == project_id)
        )


async def test_a_project_key_changes_its_own_knobs_only(client, rt, b_key):
    B = {"apikey": b_key}
    set_ = await client.post("/test/failure-injection", json=LEGACY, headers=A)
    assert set_.status_code == 200, set_.text
    assert set_.json()["data"]["rollbackOnTimeout"] is False

    # B's knobs, and B's payouts, are untouched by A's legacy setting.
    b_knobs = (await client.get("/test/failure-injection", headers=B)).json()["data"]
    assert b_knobs == FailureInjection().to_dict()
    b_start = await balance_of(client, B_ID)
    paid = await client.post("/payouts", json=payout_body(projectId=B_ID), headers=B)
    assert paid.status_code == 201, paid.text
    assert await balance_of(client, B_ID) == b_start - COST

    # A's own payouts do get A's knobs: timed out, and (legacy) charged.
    a_start = await balance_of(client)
    timed_out = await client.post("/payouts", json=payout_body(), headers=A)
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.json()["data"]["chargedAmount"] == COST
    assert await balance_of(client) == a_start - COST
    assert await balance_of(client, B_ID) == b_start - COST


async def test_a_project_key_cannot_name_another_project(client, rt, b_key):
    before = (await client.get("/test/failure-injection", headers={"apikey": b_key})).json()
    for method, path in (
        ("GET", "/test/failure-injection"),
        ("POST", "/test/failure-injection"),
        ("DELETE", "/test/reset"),
    ):
        kwargs = {"json": LEGACY} if method == "POST" else {}
        refused = await client.request(
            method, path, params={"projectId": B_ID}, headers=A, **kwargs
        )
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["data"]["error"] == "FORBIDDEN"
    after = (await client.get("/test/failure-injection", headers={"apikey": b_key})).json()
    assert after["data"] == before["data"]


async def test_a_project_reset_leaves_every_other_project_as_it_was(client, rt, b_key):
    B = {"apikey": b_key}
    assert (await client.post("/test/failure-injection", json=LEGACY, headers=A)).is_success
    b_knobs = {"enabled": True, "failureRate": 0.0, "latencyMs": 1}
    assert (await client.post("/test/failure-injection", json=b_knobs, headers=B)).is_success
    assert (await client.post("/payouts", json=payout_body(projectId=B_ID), headers=B)).is_success
    assert (await client.post("/payouts", json=payout_body(), headers=A)).status_code == 504
    b_balance, b_payouts = await balance_of(client, B_ID), await _payouts_of(rt, B_ID)
    b_view = (await client.get("/test/failure-injection", headers=B)).json()["data"]

    reset = await client.delete("/test/reset", headers=A)
    assert reset.status_code == 200, reset.text
    data = reset.json()["data"]
    assert data["scope"] == "project" and data["projectId"] == PROJECT

    # B: its project, key, balance, payouts and knobs as they were.
    assert await balance_of(client, B_ID) == b_balance
    assert await _payouts_of(rt, B_ID) == b_payouts
    assert (await client.get("/test/failure-injection", headers=B)).json()["data"] == b_view
    # A: its own knobs gone (the global ones apply), its balance back to its first funding.
    a_knobs = (await client.get("/test/failure-injection", headers=A)).json()["data"]
    assert a_knobs == FailureInjection().to_dict()
    assert await balance_of(client) == 100_000
    assert data["addedAmount"] == COST and data["balance"] == 100_000
    again = await client.post("/payouts", json=payout_body(), headers=A)
    assert again.status_code == 201, again.text


async def test_the_global_knobs_and_the_global_reset_need_the_admin_key(client, rt, b_key):
    B = {"apikey": b_key}
    # Global knobs apply to every project without its own; a project's own win for it.
    assert (await client.post("/test/failure-injection", json=LEGACY, headers=ADMIN)).is_success
    own = {"enabled": False}
    assert (await client.post("/test/failure-injection", json=own, headers=B)).is_success
    a_start, b_start = await balance_of(client), await balance_of(client, B_ID)
    assert (await client.post("/payouts", json=payout_body(), headers=A)).status_code == 504
    paid = await client.post("/payouts", json=payout_body(projectId=B_ID), headers=B)
    assert paid.status_code == 201, paid.text
    assert await balance_of(client) == a_start - COST  # the legacy charge, from the global
    assert await balance_of(client, B_ID) == b_start - COST

    # Only the admin key erases everything: B is then gone with the rest.
    wiped = await client.delete("/test/reset", headers=ADMIN)
    assert wiped.status_code == 200 and wiped.json()["data"]["scope"] == "global"
    gone = await client.get(f"/projects/{B_ID}/balance", headers=ADMIN)
    assert gone.status_code == 404
    assert await balance_of(client) == 100_000
    assert (await client.get("/test/failure-injection", headers=A)).json()["data"] == (
        FailureInjection().to_dict()
    )


async def test_card_knobs_are_global_so_a_project_key_cannot_change_them(client):
    before = (await client.get("/test/failure-injection", headers=ADMIN)).json()["data"]
    refused = await client.post(
        "/test/failure-injection", json={"cardCreateErrorRate": 1.0}, headers=A
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["data"]["fields"] == ["cardCreateErrorRate"]
    assert (await client.get("/test/failure-injection", headers=ADMIN)).json()["data"] == before
    assert (await client.get("/test/failure-injection", headers=A)).json()["data"] == before
    # Sending the current value back (a client restoring the knobs it read) is no change.
    same = await client.post("/test/failure-injection", json=before, headers=A)
    assert same.status_code == 200, same.text
    admin = await client.post(
        "/test/failure-injection", json={"cardCreateErrorRate": 1.0}, headers=ADMIN
    )
    assert admin.status_code == 200, admin.text


async def test_the_worker_settles_each_project_with_its_own_knobs(client, rt, b_key):
    """Payouts on the queue path are settled by worker jobs, not the request: each job finds
    its payout's project. The last request before the worker runs is A's, so a job that
    inherited the request's project instead would fail B's payout too."""
    B = {"apikey": b_key}
    flag = {"enabled": True, "rolloutPercent": 100}
    put = await client.put(f"/admin/flags/{SETTLEMENT_QUEUE_PATH}", json=flag, headers=ADMIN)
    assert put.status_code == 200, put.text
    b_start = await balance_of(client, B_ID)
    b_payout = await client.post("/payouts", json=payout_body(projectId=B_ID), headers=B)
    a_failing = {"enabled": True, "failureRate": 1.0}
    assert (await client.post("/test/failure-injection", json=a_failing, headers=A)).is_success
    a_start = await balance_of(client)
    a_payout = await client.post("/payouts", json=payout_body(), headers=A)
    assert {b_payout.status_code, a_payout.status_code} <= {201, 202, 502}
    await worker.run_until_idle(rt)

    a_now = (await client.get(f"/payouts/{a_payout.json()['data']['id']}", headers=A)).json()
    b_now = (await client.get(f"/payouts/{b_payout.json()['data']['id']}", headers=B)).json()
    assert a_now["data"]["status"] == "error", a_now
    assert b_now["data"]["status"] == "completed", b_now
    assert await balance_of(client) == a_start
    assert await balance_of(client, B_ID) == b_start - COST
