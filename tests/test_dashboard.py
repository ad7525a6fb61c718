"""The operator dashboard over HTTP (ASGI, SQLite and PostgreSQL): sessions, CSRF, scope, pages.

The browser-level walk through the same pages is tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, payout_body
from sqlalchemy import select, update
from test_callbacks import Receiver, rows_of

from payrail.db.tables import callbacks, dashboard_sessions, flag_changes, jobs, projects
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH
from payrail.entrypoints import worker
from payrail.entrypoints.http import dashboard
from payrail.jobs import queue
from payrail.services import flags
from payrail.services.dashboard import pages, sessions

ROOT = Path(__file__).resolve().parents[1]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


async def sign_in(dash: httpx.AsyncClient, key: str, name: str = "alice") -> httpx.Response:
    form = await dash.get("/dashboard/login")
    token = CSRF_RE.search(form.text).group(1)
    return await dash.post("/dashboard/login", data={"key": key, "name": name, "csrf": token})


async def csrf_of(dash: httpx.AsyncClient, page: str = "/dashboard") -> str:
    return CSRF_RE.search((await dash.get(page)).text).group(1)


async def flag_now(rt) -> flags.Flag:
    rt.flag_cache.clear()
    return await flags.get_flag(rt, SETTLEMENT_QUEUE_PATH)


# ---------------------------------------------------------------- sessions


async def test_sign_in_sets_an_opaque_httponly_samesite_cookie_and_no_page_shows_a_key(
    dash, client, rt
):
    signed = await sign_in(dash, ADMIN_KEY)
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    cookie = next(
        c for c in signed.headers.get_list("set-cookie") if c.startswith("payrail_session=")
    )
    token = cookie.split(";")[0].split("=", 1)[1]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert ADMIN_KEY not in cookie and len(token) >= 40
    (row,) = await rows_of(rt, dashboard_sessions)
    assert token not in row.values() and ADMIN_KEY not in row.values()  # stored hashed
    await client.post("/payouts", json=payout_body())
    for page in ("", "/payouts", "/orders", "/dead", "/flags", "/reconciliation"):
        answer = await dash.get(f"/dashboard{page}")
        assert answer.status_code == 200, (page, answer.text)
        for secret in (ADMIN_KEY, SANDBOX_KEY, token, rt.settings.sandbox_webhook_secret):
            assert secret not in answer.text, page
        assert "script-src" not in answer.headers["content-security-policy"]  # no script at all
        assert answer.headers["x-frame-options"] == "DENY"


async def test_a_wrong_key_opens_no_session_and_pages_redirect_to_sign_in(dash, rt):
    refused = await sign_in(dash, "not-a-key")
    assert refused.status_code == 401 and "not an admin or project API key" in refused.text
    assert "not-a-key" not in refused.text
    assert await rows_of(rt, dashboard_sessions) == []
    page = await dash.get("/dashboard/payouts")
    assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"


async def test_sign_in_without_the_login_form_token_is_refused(dash, rt):
    forged = await dash.post("/dashboard/login", data={"key": ADMIN_KEY, "csrf": "guess"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert await rows_of(rt, dashboard_sessions) == []


async def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(dash, rt):
    await sign_in(dash, ADMIN_KEY)
    copied = dict(dash.cookies)
    out = await dash.post("/dashboard/logout", data={"csrf": await csrf_of(dash)})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert await rows_of(rt, dashboard_sessions) == []
    dash.cookies.clear()
    dash.cookies.update(copied)
    replayed = await dash.get("/dashboard")
    assert replayed.status_code == 303 and replayed.headers["location"] == "/dashboard/login"


async def test_an_idle_session_ends_after_its_idle_limit(dash, clock):
    await sign_in(dash, ADMIN_KEY)
    clock.advance(sessions.SESSION_IDLE_MS - 1_000)
    assert (await dash.get("/dashboard")).status_code == 200  # used: the idle clock restarts
    clock.advance(sessions.SESSION_IDLE_MS - 1_000)
    assert (await dash.get("/dashboard")).status_code == 200
    clock.advance(sessions.SESSION_IDLE_MS)
    assert (await dash.get("/dashboard")).status_code == 303


async def test_a_changed_key_ends_the_sessions_opened_with_it(dash, rt):
    await sign_in(dash, ADMIN_KEY)
    rt.settings = dataclasses.replace(rt.settings, admin_key="rotated-admin-key")
    assert (await dash.get("/dashboard")).status_code == 303
    await sign_in(dash, SANDBOX_KEY)
    assert (await dash.get("/dashboard")).status_code == 200
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(projects).where(projects.c.id == PROJECT).values(api_key_hash="0" * 64)
        )
    assert (await dash.get("/dashboard")).status_code == 303
    assert await rows_of(rt, dashboard_sessions) == []


# ---------------------------------------------------------------- CSRF on actions


async def test_a_flag_change_without_the_csrf_token_changes_nothing(dash, rt):
    await sign_in(dash, ADMIN_KEY)
    form = {"enabled": "on", "rolloutPercent": "40", "reason": "forged"}
    for forged in (form, form | {"csrf": "wrong"}):
        refused = await dash.post(f"/dashboard/flags/{SETTLEMENT_QUEUE_PATH}", data=forged)
        assert refused.status_code == 403 and "CSRF" in refused.text
    other_origin = await dash.post(
        f"/dashboard/flags/{SETTLEMENT_QUEUE_PATH}",
        data=form | {"csrf": await csrf_of(dash)},
        headers={"origin": "http://evil.example"},
    )
    assert other_origin.status_code == 403
    assert (await flag_now(rt)).rollout_percent == 0
    assert await rows_of(rt, flag_changes) == []


async def test_a_flag_change_from_the_form_is_applied_and_audited_with_the_operator_name(dash, rt):
    await sign_in(dash, ADMIN_KEY, name="carol")
    token = await csrf_of(dash, "/dashboard/flags")
    url = f"/dashboard/flags/{SETTLEMENT_QUEUE_PATH}"
    for bad in ({"rolloutPercent": "150"}, {"rolloutPercent": "abc"}, {"reason": ""}):
        body = {"csrf": token, "rolloutPercent": "30", "reason": "canary"} | bad
        assert (await dash.post(url, data=body)).status_code == 400, bad
    assert await rows_of(rt, flag_changes) == []
    done = await dash.post(
        url, data={"csrf": token, "enabled": "on", "rolloutPercent": "30", "reason": "canary"}
    )
    assert done.status_code == 303 and "notice=flag-changed" in done.headers["location"]
    flag = await flag_now(rt)
    assert (flag.enabled, flag.rollout_percent) == (True, 30)
    (change,) = await rows_of(rt, flag_changes)
    assert (change["actor"], change["reason"]) == ("dashboard:carol", "canary")
    page = await dash.get("/dashboard/flags")
    assert "30%" in page.text and "dashboard:carol" in page.text


# ---------------------------------------------------------------- project scope


async def test_a_project_key_sees_only_its_project(dash, client, rt, receiver):
    receiver.respond = lambda n: 410
    theirs = await client.post("/payouts", json=payout_body(callbackUrl=receiver.url))
    await worker.run_until_idle(rt)
    dead = await rows_of(rt, callbacks, callbacks.c.status == "dead")
    assert dead
    created = await client.post("/projects", json={"id": "studio_b"}, headers={"apikey": ADMIN_KEY})
    await sign_in(dash, created.json()["data"]["apiKey"])
    overview = await dash.get("/dashboard")
    assert overview.status_code == 200 and "studio_b" in overview.text
    assert PROJECT not in overview.text
    assert (await dash.get("/dashboard", params={"project": PROJECT})).status_code == 403
    other_payout = theirs.json()["data"]["id"]
    assert (await dash.get(f"/dashboard/payouts/{other_payout}")).status_code == 404
    listed = await dash.get("/dashboard/payouts")
    assert other_payout not in listed.text
    assert (await dash.get("/dashboard/payouts", params={"project": PROJECT})).status_code == 403
    dead_page = await dash.get("/dashboard/dead")
    assert dead[0]["id"] not in dead_page.text and "Dead jobs" not in dead_page.text
    token = await csrf_of(dash)
    replay = await dash.post(f"/dashboard/callbacks/{dead[0]['id']}/replay", data={"csrf": token})
    assert replay.status_code == 404
    (still,) = await rows_of(rt, callbacks, callbacks.c.id == dead[0]["id"])
    assert still["status"] == "dead"
    assert (await dash.get("/dashboard/reconciliation")).status_code == 403
    flag = await dash.post(
        f"/dashboard/flags/{SETTLEMENT_QUEUE_PATH}",
        data={"csrf": token, "rolloutPercent": "100", "reason": "x"},
    )
    assert flag.status_code == 403 and (await flag_now(rt)).rollout_percent == 0


# ---------------------------------------------------------------- pages show the money


def _figure(html: str) -> dict[str, str]:
    tag = re.search(r'<figure class="chart" id="outcome-chart"([^>]*)>', html).group(1)
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))


def _tile(html: str, name: str) -> str:
    return re.search(rf'id="{name}">([^<]*)<', html).group(1)


async def test_overview_shows_balance_reserved_outcomes_and_rates_against_thresholds(
    dash, client, rt
):
    await sign_in(dash, SANDBOX_KEY)
    before = await dash.get("/dashboard", params={"window": "1h"})
    assert _tile(before.text, "balance") == "100,000" and _figure(before.text)["total"] == "0"
    assert (await client.post("/payouts", json=payout_body(gamertag="ok1"))).status_code == 201
    faults = {"enabled": True, "timeoutRate": 1, "rollbackOnTimeout": True}
    await client.post("/test/failure-injection", json=faults)
    timed_out = await client.post("/payouts", json=payout_body(gamertag="slow1"))
    assert timed_out.status_code == 504
    after = await dash.get("/dashboard", params={"window": "1h"})
    assert _tile(after.text, "balance") == "98,980"  # 100,000 − 1,020; the timeout rolled back
    assert _tile(after.text, "reserved") == "0"
    chart = _figure(after.text)
    assert (chart["total"], chart["success"], chart["timed-out"]) == ("2", "1", "1")
    assert _tile(after.text, "success-rate") == "50.0%"
    assert _tile(after.text, "timeout-rate") == "50.0%"
    assert after.text.count('class="tile bad"') == 2  # both rates past their alert thresholds
    assert "<title>success" in after.text and "<title>timed out" in after.text


async def test_payout_filters_find_by_gamertag_status_and_time_and_refuse_bad_input(
    dash, client, rt
):
    await sign_in(dash, ADMIN_KEY)
    ids = {}
    for tag in ("anna", "bert"):
        ids[tag] = (await client.post("/payouts", json=payout_body(gamertag=tag))).json()["data"][
            "id"
        ]
    by_tag = await dash.get("/dashboard/payouts", params={"gamertag": "anna"})
    assert ids["anna"] in by_tag.text and ids["bert"] not in by_tag.text
    none_yet = await dash.get("/dashboard/payouts", params={"status": "error"})
    assert "No payouts match" in none_yet.text
    future = await dash.get("/dashboard/payouts", params={"from": "2999-01-01T00:00"})
    assert "No payouts match" in future.text
    detail = await dash.get(f"/dashboard/payouts/{ids['anna']}")
    assert detail.status_code == 200
    history = detail.text.split('id="history"')[1]
    # an inline payout is written in flight by its reservation (the send intent), then paid
    assert re.findall(r"<tr><td>[^<]*</td><td>[^<]*</td><td>([a-z_]+)</td>", history) == [
        "in_flight",
        "completed",
    ]
    for bad in ({"status": "lost"}, {"gamertag": "a b"}, {"from": "yesterday"}, {"cursor": "x"}):
        answer = await dash.get("/dashboard/payouts", params=bad)
        assert answer.status_code == 400 and 'class="error"' in answer.text, bad
    assert (await dash.get("/dashboard", params={"window": "1y"})).status_code == 400
    assert (await dash.get("/dashboard/payouts/nope")).status_code == 404


async def test_reconciliation_runs_from_the_dashboard_and_its_last_result_is_kept(dash, client):
    await sign_in(dash, ADMIN_KEY)
    assert "No result kept yet" in (await dash.get("/dashboard/reconciliation")).text
    await client.post("/payouts", json=payout_body())
    ran = await dash.post("/dashboard/reconciliation/run", data={"csrf": await csrf_of(dash)})
    assert ran.status_code == 303
    page = await dash.get("/dashboard/reconciliation")
    assert "Clean" in page.text and "1 payouts" in page.text


async def test_a_dead_job_is_listed_and_replayed_from_its_button(dash, rt):
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await queue.enqueue(conn, "expire_payouts", {}, now, job_id="job-dash-1")
        await queue.bury(conn, "job-dash-1", now, "boom")
    await sign_in(dash, ADMIN_KEY)
    page = await dash.get("/dashboard/dead")
    assert "job-dash-1" in page.text and "boom" in page.text
    token = CSRF_RE.search(page.text).group(1)
    refused = await dash.post("/dashboard/jobs/job-dash-1/replay", data={})
    assert refused.status_code == 403
    replayed = await dash.post("/dashboard/jobs/job-dash-1/replay", data={"csrf": token})
    assert replayed.status_code == 303
    async with rt.engine.connect() as conn:
        state = await conn.scalar(select(jobs.c.state).where(jobs.c.id == "job-dash-1"))
    assert state == "queued"
    again = await dash.post("/dashboard/jobs/job-dash-1/replay", data={"csrf": token})
    assert again.status_code == 409


# ---------------------------------------------------------------- one source of truth


def test_rate_thresholds_are_the_alert_rules_thresholds():
    rules = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert exprs["PayrailNodeTimeoutRateHigh"].strip().endswith(f"> {pages.TIMEOUT_RATE_MAX}")
    assert exprs["PayrailPayoutSuccessRateLow"].strip().endswith(f"< {pages.SUCCESS_RATE_MIN}")


def test_outcomes_map_expired_to_failed_and_gateway_timeouts_to_timed_out():
    assert pages.outcome_of("in_flight", None) == "pending"
    assert pages.outcome_of("completed", None) == "success"
    assert pages.outcome_of("failed", "GATEWAY_TIMEOUT") == "timed out"
    assert pages.outcome_of("failed", "PAYMENT_FAILED") == "failed"
    assert pages.outcome_of("expired", None) == "failed"


async def test_dashboard_routes_are_not_in_the_openapi_schema(client):
    schema = (await client.get("/openapi.json")).json()
    assert not [p for p in schema["paths"] if p.startswith(dashboard.PREFIX)]
