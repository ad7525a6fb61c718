"""Feature flags: sticky percentage rollout, instant rollback, audited changes, guards.

The flag under test is real: settlement_queue_path sends a project's payouts through the
job queue (a worker calls the node) instead of inline in the API process. Each payout row
records the path it took, so the tests see where traffic went.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random

import pytest
from conftest import ADMIN_KEY, payout_body
from sqlalchemy import select
from typer.testing import CliRunner

from payrail.bootstrap import is_lock_timeout
from payrail.db.tables import payouts
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH, Flag, bucket
from payrail.entrypoints import worker
from payrail.entrypoints.cli.app import app as cli_app
from payrail.jobs import queue
from payrail.services import flags

FLAG = SETTLEMENT_QUEUE_PATH
ADMIN = {"apikey": ADMIN_KEY}


@pytest.fixture
def settings(settings):
    return dataclasses.replace(settings, worker_poll_ms=20)


@pytest.fixture
async def running_worker(rt):
    """A worker loop in the background, as a separate worker process would run it."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_forever(rt, stop))
    yield
    stop.set()
    await task


async def put_flag(client, body, name=FLAG, **headers):
    response = await client.put(f"/admin/flags/{name}", json=body, headers=ADMIN | headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def new_project(client, project_id: str) -> dict[str, str]:
    created = await client.post("/projects", json={"id": project_id}, headers=ADMIN)
    assert created.status_code == 201, created.text
    funded = await client.post(
        f"/projects/{project_id}/fund", json={"amount": 50_000}, headers=ADMIN
    )
    assert funded.status_code == 200, funded.text
    return {"apikey": created.json()["data"]["apiKey"]}


async def pay(client, project_id: str, key: dict[str, str], tag: str) -> tuple[int, str]:
    """One payout; returns (HTTP status, the settlement path recorded on its row)."""
    response = await client.post(
        "/payouts", json=payout_body(projectId=project_id, gamertag=tag), headers=key
    )
    assert response.status_code in (201, 502), response.text
    return response.status_code, response.json()["data"]["id"]


async def path_of(rt, payout_id: str) -> str:
    async with rt.engine.connect() as conn:
        return await conn.scalar(select(payouts.c.settle_path).where(payouts.c.id == payout_id))


# ---------------------------------------------------------------- sticky rollout (pure)


def test_ten_percent_rollout_takes_about_ten_percent_and_growth_only_adds_projects():
    seed = random.randrange(2**32)
    print(f"project id seed: {seed}")
    rng = random.Random(seed)
    ids = [f"studio_{rng.getrandbits(64):x}" for _ in range(5_000)]
    on = {p: [Flag(FLAG, True, pct).on_for(p) for pct in (0, 10, 50, 100)] for p in ids}
    share_10 = sum(v[1] for v in on.values()) / len(ids)
    share_50 = sum(v[2] for v in on.values()) / len(ids)
    # Bounds at 5 standard deviations of the binomial share (n = 5,000): about one false
    # alarm in a million runs, while a rollout that is off by even a few points still fails.
    assert 0.079 <= share_10 <= 0.121, share_10
    assert 0.465 <= share_50 <= 0.535, share_50
    for p, (at0, at10, at50, at100) in on.items():
        assert not at0 and at100
        assert at50 or not at10, f"{p} left the new path when the rollout grew"
    # The same projects every time: the bucket is a pure function of (flag, project).
    assert bucket(FLAG, "project_test_001") == bucket(FLAG, "project_test_001")
    assert bucket(FLAG, "project_test_001") == 4054, "bucket hash changed: cohorts would move"


def test_off_is_off_for_everyone_and_allow_list_is_on_at_zero_percent():
    assert Flag(FLAG, True, 0, ("vip",)).on_for("vip")
    assert not Flag(FLAG, True, 0, ("vip",)).on_for("other")
    assert not Flag(FLAG, False, 100, ("vip",)).on_for("vip")


# ---------------------------------------------------------------- end to end


def _cohorts(pct: int, n: int) -> tuple[list[str], list[str]]:
    """n project ids inside the pct% cohort and n outside it."""
    inside, outside = [], []
    for i in range(10_000):
        pid = f"studio_{i:04d}"
        (inside if bucket(FLAG, pid) < pct * 100 else outside).append(pid)
        if len(inside) >= n and len(outside) >= n:
            return inside[:n], outside[:n]
    raise AssertionError("not enough ids")


async def test_ten_percent_sends_the_cohort_down_the_queue_path_and_off_rolls_back_at_once(
    client, rt, running_worker
):
    inside, outside = _cohorts(10, 2)
    keys = {p: await new_project(client, p) for p in inside + outside}
    for p in keys:
        _, payout_id = await pay(client, p, keys[p], "before")
        assert await path_of(rt, payout_id) == "inline", "flag absent: the old path"

    data = await put_flag(client, {"enabled": True, "rolloutPercent": 10})
    assert (data["enabled"], data["rolloutPercent"]) == (True, 10)
    for round_ in range(2):  # the same projects, every time
        for p in keys:
            code, payout_id = await pay(client, p, keys[p], f"r{round_}")
            assert code == 201
            assert await path_of(rt, payout_id) == ("queue" if p in inside else "inline"), p

    # ≈10% of many projects, decided by the flag as stored in the database.
    many = [f"load_{i}" for i in range(2_000)]
    share = sum([await flags.is_on(rt, FLAG, p) for p in many]) / len(many)
    assert 0.08 <= share <= 0.12, share

    await put_flag(client, {"enabled": False, "reason": "incident 42"})
    for p in inside:
        _, payout_id = await pay(client, p, keys[p], "after")
        assert await path_of(rt, payout_id) == "inline", "rollback must apply at once"

    history = (await client.get(f"/admin/flags/{FLAG}", headers=ADMIN)).json()["data"]["history"]
    assert [h["new"]["enabled"] for h in history] == [False, True]
    assert history[0]["old"]["enabled"] is True and history[0]["reason"] == "incident 42"
    assert history[1]["old"] is None and history[0]["actor"] == "api:admin"


async def test_flag_change_names_the_actor_and_keeps_fields_not_sent(client):
    await put_flag(client, {"enabled": True, "rolloutPercent": 25, "allow": ["a1", "a2"]})
    data = await put_flag(client, {"rolloutPercent": 50}, **{"x-payrail-actor": "alice"})
    assert (data["enabled"], data["rolloutPercent"], data["allow"]) == (True, 50, ["a1", "a2"])
    assert data["previous"]["rolloutPercent"] == 25
    got = (await client.get(f"/admin/flags/{FLAG}", headers=ADMIN)).json()["data"]
    assert got["history"][0]["actor"] == "api:alice"
    assert got["history"][0]["old"]["rolloutPercent"] == 25
    assert got["history"][0]["new"]["rolloutPercent"] == 50
    listed = (await client.get("/admin/flags", headers=ADMIN)).json()["data"]["flags"]
    assert [f["name"] for f in listed] == [FLAG]


# ---------------------------------------------------------------- rollback guards


async def set_faults(client, **knobs):
    """The global knobs (admin key): these tests pay from projects of their own too."""
    response = await client.post("/test/failure-injection", json=knobs, headers=ADMIN)
    assert response.status_code == 200, response.text


async def test_success_rate_guard_turns_the_flag_off_and_traffic_returns_to_the_old_path(
    client, rt, running_worker
):
    key = await new_project(client, "studio_guard")
    guards = {"minSuccessRate": 0.5, "minSamples": 4, "windowS": 60}
    await put_flag(client, {"enabled": True, "rolloutPercent": 100, "guards": guards})
    await set_faults(client, enabled=True, failureRate=1.0)
    code, payout_id = await pay(client, "studio_guard", key, "bad0")
    assert code == 502 and await path_of(rt, payout_id) == "queue"
    assert await flags.evaluate_guards(rt) == [], "1 payout: below minSamples, no verdict"
    await set_faults(client, enabled=False)
    for i in range(3):
        code, payout_id = await pay(client, "studio_guard", key, f"ok{i}")
        assert code == 201 and await path_of(rt, payout_id) == "queue"
    assert await flags.evaluate_guards(rt) == [], "3 of 4 succeeded: 0.75 >= 0.5"

    await set_faults(client, enabled=True, failureRate=1.0)
    for i in range(1, 4):
        code, payout_id = await pay(client, "studio_guard", key, f"bad{i}")
        assert code == 502 and await path_of(rt, payout_id) == "queue"
    tripped = await flags.evaluate_guards(rt)
    assert tripped == [(FLAG, "success_rate: 0.429 < 0.5 over 60 s (7 payouts on the new path)")]

    got = (await client.get(f"/admin/flags/{FLAG}", headers=ADMIN)).json()["data"]
    assert got["enabled"] is False and got["rolloutPercent"] == 100, "only switched off"
    assert got["history"][0]["actor"] == "guard"
    assert got["history"][0]["old"]["enabled"] is True
    assert got["history"][0]["reason"].startswith("rolled back: success_rate")

    await set_faults(client, enabled=False)
    code, payout_id = await pay(client, "studio_guard", key, "after")
    assert code == 201 and await path_of(rt, payout_id) == "inline"
    assert await flags.evaluate_guards(rt) == [], "an off flag is not turned off twice"


async def test_queue_depth_guard_trips_above_its_limit(client, rt):
    await put_flag(client, {"enabled": True, "rolloutPercent": 10, "guards": {"maxQueueDepth": 2}})
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        for _ in range(2):
            await queue.enqueue(conn, "noop", {}, now)
    assert await flags.evaluate_guards(rt) == []
    async with rt.engine.begin() as conn:
        await queue.enqueue(conn, "noop", {}, now)
    assert [why for _, why in await flags.evaluate_guards(rt)] == ["queue_depth: 3 due jobs > 2"]
    assert (await flags.get_flag(rt, FLAG)).enabled is False


async def test_lock_timeout_guard_trips_on_lock_waits_running_out_and_ignores_other_errors(
    client, rt
):
    await put_flag(client, {"enabled": True, "guards": {"maxLockTimeouts": 2, "windowS": 60}})
    lock_error = RuntimeError("canceling statement due to lock timeout")
    assert is_lock_timeout(lock_error)
    assert not is_lock_timeout(ValueError("no route"))
    for _ in range(5):
        rt.note_error(ValueError("no route"))
    rt.note_error(lock_error)
    rt.note_error(lock_error)
    assert await flags.evaluate_guards(rt) == []
    rt.note_error(lock_error)
    assert [n for n, _ in await flags.evaluate_guards(rt)] == [FLAG]


# ---------------------------------------------------------------- bad input, auth, CLI


@pytest.mark.parametrize(
    "body",
    [
        {"rolloutPercent": 101},
        {"rolloutPercent": "10"},
        {"rolloutPercent": 10.5},
        {"enabled": "yes"},
        {"allow": "p1"},
        {"allow": [1]},
        {"color": "red"},
        {"guards": {"minSuccessRate": 2}},
        {"guards": {"windowS": 1}},
        {"guards": {"sometimes": 1}},
        {"guards": []},
        [],
    ],
)
async def test_bad_flag_bodies_are_400_and_change_nothing(client, rt, body):
    response = await client.put(f"/admin/flags/{FLAG}", json=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["data"]["error"] == "VALIDATION_ERROR"
    assert await flags.history(rt, FLAG) == []


async def test_unknown_flag_is_404_non_admin_is_403_malformed_json_is_400(client):
    unknown = await client.put("/admin/flags/nope", json={"enabled": True}, headers=ADMIN)
    assert unknown.status_code == 404
    assert unknown.json()["data"] == {"error": "FLAG_NOT_FOUND", "knownFlags": [FLAG]}
    assert (await client.get("/admin/flags/nope", headers=ADMIN)).status_code == 404
    assert (await client.put(f"/admin/flags/{FLAG}", json={"enabled": True})).status_code == 403
    assert (await client.get(f"/admin/flags/{FLAG}")).status_code == 403
    bad = await client.put(
        f"/admin/flags/{FLAG}",
        content=b"{nope",
        headers=ADMIN | {"content-type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["success"] is False


def test_cli_sets_a_flag_audited_as_the_cli_user_and_check_runs_the_guards(database_url):
    env = {"PAYRAIL_DATABASE_URL": database_url, "PAYRAIL_MODE": "sandbox"}
    runner = CliRunner()
    result = runner.invoke(
        cli_app,
        [
            "flags",
            "set",
            FLAG,
            "--enabled",
            "--percent",
            "10",
            "--allow",
            "vip",
            "--actor",
            "bob",
            "--reason",
            "canary",
            "--guards",
            '{"maxQueueDepth": 1000}',
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    now = json.loads(result.stdout)["now"]
    assert (now["enabled"], now["rolloutPercent"], now["allow"]) == (True, 10, ["vip"])
    got = runner.invoke(cli_app, ["flags", "get", FLAG], env=env)
    assert got.exit_code == 0, got.output
    history = json.loads(got.stdout)["history"]
    assert (history[0]["actor"], history[0]["reason"]) == ("cli:bob", "canary")
    bad = runner.invoke(cli_app, ["flags", "set", "nope", "--enabled"], env=env)
    assert bad.exit_code == 1
    checked = runner.invoke(cli_app, ["flags", "check"], env=env)
    assert checked.exit_code == 0, checked.output
