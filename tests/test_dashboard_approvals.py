"""The dashboard's approvals queue (issue 29): held payouts listed newest first, a page at a
time; Approve / Reject forms behind the session's CSRF token. A form without a valid token
is refused and nothing changes; approving through the form sends the payout (the balance
says so); a project's own key sees the queue but cannot decide; an approver key can, for
its project only. Reconcile is clean after each."""

from __future__ import annotations

import re

from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from test_dashboard import csrf_of, sign_in

from payrail.domain.money import fee_sats
from payrail.entrypoints.http import dashboard
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}
ROW_RE = re.compile(r'href="/dashboard/payouts/([0-9a-f-]{36})"')


async def hold_above(client, sats: int, project: str = PROJECT) -> None:
    answer = await client.put(
        f"/projects/{project}/limits", json={"approvalAboveSats": sats}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text


async def held(client, amount: int = 2_000, **extra) -> str:
    answer = await client.post("/payouts", json=payout_body(amount=amount, **extra))
    assert answer.status_code == 202, answer.text
    return answer.json()["data"]["id"]


async def status_of(client, payout_id: str) -> tuple[str, str | None]:
    data = (await client.get(f"/payouts/{payout_id}")).json()["data"]
    return data["status"], data["approval"]


async def test_a_form_without_a_valid_csrf_token_is_refused_and_nothing_changes(dash, client, rt):
    await hold_above(client, 1_000)
    payout_id = await held(client)
    start = await balance_of(client)
    await sign_in(dash, ADMIN_KEY)
    queue = await dash.get("/dashboard/approvals")
    assert queue.status_code == 200 and payout_id in queue.text
    for verb in ("approve", "reject"):
        url = f"/dashboard/payouts/{payout_id}/{verb}"
        for forged in ({}, {"csrf": "wrong"}, {"csrf": ""}):
            refused = await dash.post(url, data=forged)
            assert refused.status_code == 403 and "CSRF" in refused.text, forged
        other_origin = await dash.post(
            url, data={"csrf": await csrf_of(dash)}, headers={"origin": "http://evil.example"}
        )
        assert other_origin.status_code == 403
        as_json = await dash.post(url, json={"csrf": await csrf_of(dash)})
        assert as_json.status_code == 403
    assert await status_of(client, payout_id) == ("pending", "required")
    assert await balance_of(client) == start
    history = (await client.get(f"/payouts/{payout_id}/history")).json()["data"]["events"]
    assert not any(e["cause"].startswith("approval:") for e in history)
    assert (await reconcile(rt)).clean


async def test_approving_through_the_form_sends_the_payout(dash, client, rt):
    await hold_above(client, 1_000)
    before = await balance_of(client)
    payout_id = await held(client, amount=2_000)
    cost = 2_000 + fee_sats(2_000)
    assert await balance_of(client) == before - cost  # reserved while it waits
    await sign_in(dash, ADMIN_KEY, name="dana")
    token = await csrf_of(dash, "/dashboard/approvals")
    done = await dash.post(f"/dashboard/payouts/{payout_id}/approve", data={"csrf": token})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/dashboard/approvals?notice=approved"
    assert await status_of(client, payout_id) == ("completed", "approved")
    assert await balance_of(client) == before - cost  # charged once, not twice
    payout = (await client.get(f"/payouts/{payout_id}")).json()["data"]
    assert payout["decidedBy"] == "dashboard:dana"
    page = await dash.get("/dashboard/approvals?notice=approved")
    assert payout_id not in page.text and "was approved" in page.text
    again = await dash.post(f"/dashboard/payouts/{payout_id}/reject", data={"csrf": token})
    assert again.status_code == 409
    assert await balance_of(client) == before - cost
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


async def test_rejecting_through_the_form_gives_the_money_back(dash, client, rt):
    await hold_above(client, 1_000)
    before = await balance_of(client)
    payout_id = await held(client)
    await sign_in(dash, ADMIN_KEY)
    token = await csrf_of(dash, "/dashboard/approvals")
    done = await dash.post(f"/dashboard/payouts/{payout_id}/reject", data={"csrf": token})
    assert done.status_code == 303
    assert await status_of(client, payout_id) == ("error", "rejected")
    assert await balance_of(client) == before
    assert (await reconcile(rt)).clean


async def test_the_queue_is_paged_newest_first(dash, client, rt, monkeypatch):
    monkeypatch.setattr(dashboard, "APPROVALS_PAGE_MAX", 2)
    await hold_above(client, 1_000)
    ids = []
    for i in range(5):
        ids.append(await held(client, gamertag=f"q{i}"))
        await client.post("/payouts", json=payout_body(amount=500, gamertag=f"s{i}"))
    await sign_in(dash, ADMIN_KEY)
    seen, url = [], "/dashboard/approvals"
    while url:
        page = await dash.get(url)
        assert page.status_code == 200
        rows = ROW_RE.findall(page.text)
        assert len(rows) <= 2
        seen += rows
        more = re.search(r'href="(/dashboard/approvals\?[^"]+)"', page.text)
        url = more.group(1).replace("&amp;", "&") if more else None
    assert seen == list(reversed(ids))  # newest first, none skipped or repeated


async def test_a_project_key_sees_the_queue_but_only_an_approver_key_decides(dash, client, rt):
    await hold_above(client, 1_000)
    before = await balance_of(client)
    payout_id = await held(client)
    await sign_in(dash, client.headers["apikey"])  # the project's own key
    page = await dash.get("/dashboard/approvals")
    assert payout_id in page.text and "/approve" not in page.text
    refused = await dash.post(
        f"/dashboard/payouts/{payout_id}/approve", data={"csrf": await csrf_of(dash)}
    )
    assert refused.status_code == 403
    assert await status_of(client, payout_id) == ("pending", "required")
    made = await client.post(f"/projects/{PROJECT}/keys", json={"role": "approver"}, headers=ADMIN)
    key = made.json()["data"]
    await sign_in(dash, key["apiKey"], name="erin")
    page = await dash.get("/dashboard/approvals")
    assert "approver" in page.text and "/approve" in page.text
    token = await csrf_of(dash, "/dashboard/approvals")
    done = await dash.post(f"/dashboard/payouts/{payout_id}/approve", data={"csrf": token})
    assert done.status_code == 303, done.text
    payout = (await client.get(f"/payouts/{payout_id}")).json()["data"]
    assert payout["status"] == "completed"
    assert payout["decidedBy"] == f"approver:{key['keyId']} (dashboard:erin)"
    assert await balance_of(client) == before - 2_000 - fee_sats(2_000)
    # an approver session replays nothing and sees no other project
    assert (await dash.get("/dashboard/approvals", params={"project": "x"})).status_code == 403
    revoked = await client.delete(f"/projects/{PROJECT}/keys/{key['keyId']}", headers=ADMIN)
    assert revoked.status_code == 200
    assert (await dash.get("/dashboard/approvals")).status_code == 303  # its session is over
    assert (await reconcile(rt)).clean


async def test_an_approver_key_cannot_decide_another_projects_payout(dash, client, rt):
    created = await client.post("/projects", json={"id": "studio_c"}, headers=ADMIN)
    other = {"apikey": created.json()["data"]["apiKey"]}
    await client.post("/projects/studio_c/fund", json={"amount": 10_000}, headers=ADMIN)
    await hold_above(client, 1_000, project="studio_c")
    theirs = await client.post(
        "/payouts", json=payout_body(amount=2_000, projectId="studio_c"), headers=other
    )
    assert theirs.status_code == 202
    payout_id = theirs.json()["data"]["id"]
    made = await client.post(f"/projects/{PROJECT}/keys", json={"role": "approver"}, headers=ADMIN)
    await sign_in(dash, made.json()["data"]["apiKey"])
    assert payout_id not in (await dash.get("/dashboard/approvals")).text
    token = await csrf_of(dash, "/dashboard/approvals")
    refused = await dash.post(f"/dashboard/payouts/{payout_id}/approve", data={"csrf": token})
    assert refused.status_code == 404
    got = (await client.get(f"/payouts/{payout_id}", headers=other)).json()["data"]
    assert got["approval"] == "required"
    assert (await reconcile(rt)).clean
