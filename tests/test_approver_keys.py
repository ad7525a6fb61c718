"""Project keys with the approver role (issue 29): an approver key approves or rejects its own
project's held payouts, and reads its payouts; every other route refuses it (403), another
project's payout is not found (404), an ordinary project key cannot decide (403). Who
decided is named by the key in the payout's history. Balances and reconcile checked."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body

from payrail.config import Settings
from payrail.domain.money import fee_sats
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, settle_wait_ms=30_000, node_timeout_ms=20_000, lease_ms=60_000
    )


async def approver_key(client, project=PROJECT, label="alice") -> dict:
    body = {"role": "approver"} | ({"label": label} if label else {})
    made = await client.post(f"/projects/{project}/keys", json=body, headers=ADMIN)
    assert made.status_code == 201, made.text
    data = made.json()["data"]
    assert data["role"] == "approver" and data["apiKey"].startswith("ak_")
    return data


async def hold_above(client, sats: int, project=PROJECT) -> None:
    answer = await client.put(
        f"/projects/{project}/limits", json={"approvalAboveSats": sats}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text


async def held(client, amount=1_500, headers=None, **extra) -> dict:
    answer = await client.post(
        "/payouts", json=payout_body(amount=amount, **extra), headers=headers
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["data"]


async def test_an_approver_key_approves_its_projects_held_payout_and_is_named(client, rt):
    await hold_above(client, 1_000)
    key = await approver_key(client)
    approver = {"apikey": key["apiKey"]}
    start = await balance_of(client)
    payout = await held(client)
    assert await balance_of(client) == start - 1_500 - fee_sats(1_500)
    # the project's own key may not decide: 403 in the envelope, nothing changes
    refused = await client.post(f"/payouts/{payout['id']}/approve")
    assert refused.status_code == 403
    assert refused.json()["success"] is False
    assert refused.json()["data"]["error"] == "FORBIDDEN"
    # the approver key sees the queue
    queue = await client.get("/payouts", params={"approval": "required"}, headers=approver)
    assert queue.status_code == 200, queue.text
    assert [p["id"] for p in queue.json()["data"]["payouts"]] == [payout["id"]]
    approved = await client.post(f"/payouts/{payout['id']}/approve", headers=approver)
    assert approved.status_code == 200, approved.text
    data = approved.json()["data"]
    assert (data["status"], data["approval"]) == ("completed", "approved")
    assert data["decidedBy"] == f"approver:{key['keyId']} (alice)"
    history = await client.get(f"/payouts/{payout['id']}/history", headers=approver)
    causes = [e["cause"] for e in history.json()["data"]["events"]]
    assert f"approval: approved by approver:{key['keyId']} (alice)" in causes
    assert await balance_of(client) == start - 1_500 - fee_sats(1_500)
    queue = await client.get("/payouts", params={"approval": "required"}, headers=approver)
    assert queue.json()["data"]["payouts"] == []
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


async def test_an_approver_key_rejects_and_the_money_comes_back(client, rt):
    await hold_above(client, 1_000)
    key = await approver_key(client, label=None)
    start = await balance_of(client)
    payout = await held(client)
    rejected = await client.post(
        f"/payouts/{payout['id']}/reject", headers={"apikey": key["apiKey"]}
    )
    assert rejected.status_code == 200, rejected.text
    data = rejected.json()["data"]
    assert (data["status"], data["failureCode"]) == ("error", "REJECTED_BY_APPROVER")
    assert data["decidedBy"] == f"approver:{key['keyId']}"
    assert await balance_of(client) == start
    assert (await reconcile(rt)).clean


async def test_an_approver_key_does_nothing_else_and_not_for_another_project(client, rt):
    await hold_above(client, 1_000)
    other = await client.post("/projects", json={"id": "other_project"}, headers=ADMIN)
    assert other.status_code == 201, other.text
    other_key = {"apikey": other.json()["data"]["apiKey"]}
    funded = await client.post(
        "/projects/other_project/fund", json={"amount": 50_000}, headers=ADMIN
    )
    assert funded.status_code == 200
    await hold_above(client, 1_000, project="other_project")
    theirs = await held(client, headers=other_key, projectId="other_project")
    key = await approver_key(client)
    approver = {"apikey": key["apiKey"]}
    start, other_start = await balance_of(client), await balance_of(client, "other_project")
    # another project's held payout: not found, still waiting
    for verb in ("approve", "reject"):
        answer = await client.post(f"/payouts/{theirs['id']}/{verb}", headers=approver)
        assert answer.status_code == 404, answer.text
    got = await client.get(f"/payouts/{theirs['id']}", headers=other_key)
    assert got.json()["data"]["approval"] == "required"
    # every route that is not a decision or a read of its payouts: 403
    tries = [
        client.post("/payouts", json=payout_body(), headers=approver),
        client.post("/withdrawals", json={"projectId": PROJECT, "amount": 100}, headers=approver),
        client.get(f"/projects/{PROJECT}/balance", headers=approver),
        client.put(f"/projects/{PROJECT}/limits", json={"approvalAboveSats": 1}, headers=approver),
        client.post(f"/projects/{PROJECT}/keys", json={"role": "approver"}, headers=approver),
    ]
    for answer in await asyncio.gather(*tries):
        assert answer.status_code == 403, answer.text
        assert answer.json()["data"]["error"] == "FORBIDDEN"
    assert await balance_of(client) == start
    assert await balance_of(client, "other_project") == other_start
    listed = await client.get("/payouts", params={"projectId": "other_project"}, headers=approver)
    assert listed.status_code == 403
    assert (await reconcile(rt)).clean


async def test_a_revoked_approver_key_stops_and_the_keys_are_listed(client, rt):
    await hold_above(client, 1_000)
    key = await approver_key(client, label="bob")
    payout = await held(client)
    revoked = await client.delete(f"/projects/{PROJECT}/keys/{key['keyId']}", headers=ADMIN)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["data"]["revokedAt"] is not None
    again = await client.delete(f"/projects/{PROJECT}/keys/{key['keyId']}", headers=ADMIN)
    assert again.status_code == 200
    missing = await client.delete(f"/projects/{PROJECT}/keys/apk_nope", headers=ADMIN)
    assert missing.status_code == 404
    answer = await client.post(
        f"/payouts/{payout['id']}/approve", headers={"apikey": key["apiKey"]}
    )
    assert answer.status_code == 401
    history = await client.get(f"/projects/{PROJECT}/keys", headers=ADMIN)
    listed = history.json()["data"]["approverKeys"]
    assert [(k["keyId"], k["label"]) for k in listed] == [(key["keyId"], "bob")]
    assert "apiKey" not in listed[0]
    # the project's own key still works and was not rotated
    assert (await client.get(f"/payouts/{payout['id']}")).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"role": "owner"},
        {"role": "approver", "gracePeriodSeconds": 10},
        {"role": "approver", "label": ""},
        {"role": "approver", "label": "x" * 41},
        {"role": "approver", "label": "a\nb"},
    ],
)
async def test_a_bad_key_request_is_refused(client, body):
    answer = await client.post(f"/projects/{PROJECT}/keys", json=body, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    history = await client.get(f"/projects/{PROJECT}/keys", headers=ADMIN)
    assert history.json()["data"]["approverKeys"] == []
    assert history.json()["data"]["rotations"] == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_approver_keys_and_admin_racing_on_held_payouts_one_wins(client, rt):
    fund = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 100_000}, headers=ADMIN)
    assert fund.status_code == 200
    await hold_above(client, 1_000)
    key = await approver_key(client)
    approver = {"apikey": key["apiKey"]}
    start = await balance_of(client)
    held_ids = [(await held(client, gamertag=f"r{i}"))["id"] for i in range(8)]
    calls = [
        client.post(f"/payouts/{payout_id}/{verb}", headers=who)
        for payout_id in held_ids
        for verb, who in (("approve", approver), ("reject", ADMIN), ("reject", approver))
    ]
    answers = await asyncio.gather(*calls)
    assert sorted(a.status_code for a in answers) == [200] * 8 + [409] * 16
    approved = 0
    for payout_id in held_ids:
        data = (await client.get(f"/payouts/{payout_id}")).json()["data"]
        assert (data["status"], data["approval"]) in (
            ("completed", "approved"),
            ("error", "rejected"),
        )
        approved += data["approval"] == "approved"
    assert await balance_of(client) == start - approved * (1_500 + fee_sats(1_500))
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


def test_the_cli_creates_an_approver_key(database_url: str) -> None:
    import json

    from typer.testing import CliRunner

    from payrail.bootstrap import build_runtime
    from payrail.entrypoints.cli.app import app
    from payrail.services import project_keys
    from payrail.services.projects import hash_key

    def cli(*args: str):
        return CliRunner().invoke(app, list(args), env={"PAYRAIL_DATABASE_URL": database_url})

    assert cli("projects", "create", "--id", "studio_ak").exit_code == 0
    made = cli("projects", "approver-key", "studio_ak", "--label", "carol")
    assert made.exit_code == 0, made.stderr
    data = json.loads(made.stdout)
    assert data["role"] == "approver" and data["label"] == "carol"
    missing = cli("projects", "approver-key", "nobody")
    assert missing.exit_code == 1

    async def found():
        rt = build_runtime(Settings(database_url=database_url, run_worker=False))
        try:
            return await project_keys.approver_for_key_hash(rt, hash_key(data["apiKey"]))
        finally:
            await rt.aclose()

    key = asyncio.run(found())
    assert key is not None and (key.project_id, key.key_id) == ("studio_ak", data["keyId"])
