"""Identifiers are validated with full-match semantics (issue 24, finding 2).

The checks used `^…$` with `re.match`, and Python's `$` also matches before a final "\\n":
"ratey\\n" was a new gamertag beside "ratey" (its rate limit bypassed), `PUT /recipients/bob%0A`
created a second entry beside `bob`, and an admin could create the project "nlp2\\n". Every
identifier field is fed a trailing newline, carriage return, NUL and lone surrogate, in bodies
and in route parameters: each is a 400 in the envelope, and nothing changes.
"""

from __future__ import annotations

import json

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from sqlalchemy import func, select

from payrail.db.tables import orders, payouts, projects, recipients, transfers
from payrail.domain import orders as order_rules
from payrail.domain import recipients as recipient_rules
from payrail.services import projects as project_service
from payrail.services.dashboard import sessions

ADMIN = {"apikey": ADMIN_KEY}
# What may follow a valid identifier and must not pass: each was, or could have been, a
# second identity beside the valid one (or text PostgreSQL cannot store).
TAILS = {"newline": "\n", "carriage-return": "\r", "nul": "\x00", "lone-surrogate": "\ud800"}
# The same tails in a URL path, percent-encoded (a lone surrogate has no UTF-8 form: its
# would-be bytes are invalid UTF-8).
URL_TAILS = {
    "newline": "%0A",
    "carriage-return": "%0D",
    "nul": "%00",
    "lone-surrogate": "%ED%A0%80",
}


async def _counts(rt) -> dict[str, int]:
    async with rt.engine.connect() as conn:
        return {
            t.name: (await conn.execute(select(func.count()).select_from(t))).scalar_one()
            for t in (payouts, transfers, recipients, projects, orders)
        }


def _raw(body: dict, **headers: str) -> dict:
    """httpx's json= cannot send a lone surrogate; the API must still refuse one."""
    return {
        "content": json.dumps(body).encode(),
        "headers": {"content-type": "application/json", **headers},
    }


def _refused(response) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["data"]["error"] == "VALIDATION_ERROR", body
    assert body["message"]


@pytest.mark.parametrize("tail", TAILS.values(), ids=TAILS.keys())
def test_the_rules_refuse_a_valid_identifier_with_a_tail(tail):
    for parse in (recipient_rules.parse_gamertag, sessions.parse_actor):
        with pytest.raises(Exception) as refused:
            parse("bob" + tail)
        assert getattr(refused.value, "code", None) == "VALIDATION_ERROR"
    assert not project_service.PROJECT_ID_RE.fullmatch("nlp2" + tail)
    assert not order_rules.ID_RE.fullmatch("cust_1" + tail)


@pytest.mark.parametrize("tail", TAILS.values(), ids=TAILS.keys())
async def test_a_payout_to_a_gamertag_with_a_tail_is_refused_and_charges_nothing(client, rt, tail):
    before, start = await _counts(rt), await balance_of(client)
    single = await client.post("/payouts", **_raw(payout_body(gamertag="ratey" + tail)))
    _refused(single)
    batch_body = {"projectId": PROJECT, "items": [{"gamertag": "ratey" + tail, "amount": 100}]}
    batch = await client.post("/payouts/batch", **_raw(batch_body, **{"Idempotency-Key": "b1"}))
    if batch.status_code != 400:  # a lone surrogate fails the whole body; others, the item
        assert batch.status_code == 200, batch.text
        [item] = batch.json()["data"]["items"]
        assert (item["httpStatus"], item["data"]["error"]) == (400, "VALIDATION_ERROR"), item
    assert await _counts(rt) == before
    assert await balance_of(client) == start


async def test_ten_payouts_to_a_gamertag_then_its_newline_twin_is_refused_not_paid(client, rt):
    """The measured bypass: the eleventh payout to `ratey` spelled `ratey\\n` was a 201."""
    for i in range(10):
        paid = await client.post("/payouts", json=payout_body(gamertag="ratey", amount=100 + i))
        assert paid.status_code == 201, paid.text
    before, start = await _counts(rt), await balance_of(client)
    twin = await client.post("/payouts", json=payout_body(gamertag="ratey\n", amount=100))
    _refused(twin)
    assert await _counts(rt) == before
    assert await balance_of(client) == start


@pytest.mark.parametrize("tail", URL_TAILS.values(), ids=URL_TAILS.keys())
async def test_a_recipient_route_with_a_tail_in_its_gamertag_is_refused(client, rt, tail):
    entry = {"lightningAddress": "bob@example.com"}
    assert (await client.put("/recipients/bob", json=entry)).status_code == 201
    before = await _counts(rt)
    _refused(await client.put(f"/recipients/bob{tail}", json=entry))
    _refused(await client.get(f"/recipients/bob{tail}"))
    _refused(await client.get(f"/recipients/bob{tail}/history"))
    _refused(await client.delete(f"/recipients/bob{tail}"))
    assert await _counts(rt) == before  # no second entry beside bob, and bob still there
    assert (await client.get("/recipients/bob")).status_code == 200


@pytest.mark.parametrize("tail", TAILS.values(), ids=TAILS.keys())
async def test_an_admin_cannot_create_a_project_whose_id_has_a_tail(client, rt, tail):
    before = await _counts(rt)
    _refused(await client.post("/projects", **_raw({"id": "nlp2" + tail}, apikey=ADMIN_KEY)))
    assert await _counts(rt) == before


@pytest.mark.parametrize("tail", TAILS.values(), ids=TAILS.keys())
async def test_an_order_whose_customer_id_has_a_tail_is_refused(client, rt, tail):
    before = await _counts(rt)
    body = {"amount": 500, "currency": "usd", "customerId": "cust_1" + tail}
    _refused(await client.post("/orders", **_raw(body)))
    assert await _counts(rt) == before


@pytest.mark.parametrize("tail", URL_TAILS.values(), ids=URL_TAILS.keys())
async def test_a_project_route_with_a_tail_in_its_id_finds_nothing(client, rt, tail):
    """`/projects/project_test_001%0A` is not the sandbox project (nor a 500)."""
    answer = await client.get(f"/projects/{PROJECT}{tail}/balance", headers=ADMIN)
    assert answer.status_code in (400, 404), answer.text
    assert answer.json()["data"]["error"] in ("VALIDATION_ERROR", "PROJECT_NOT_FOUND")


FORM_TAILS = {
    "newline": "%0A",
    "carriage-return": "%0D",
    "nul": "%00",
    "lone-surrogate": "%ED%A0%80",
}


@pytest.mark.parametrize("tail", FORM_TAILS.values(), ids=FORM_TAILS.keys())
async def test_a_dashboard_sign_in_name_with_a_tail_opens_no_session(settings, rt, tail):
    """The name was trimmed of any whitespace, so "bob\\n" signed in as "bob"; now only
    spaces are trimmed and the name must match in full."""
    import httpx
    from test_dashboard import CSRF_RE

    from payrail.db.tables import dashboard_sessions
    from payrail.entrypoints.http.app import create_app

    app = create_app(settings, runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as dash:
        token = CSRF_RE.search((await dash.get("/dashboard/login")).text).group(1)
        form = f"key={ADMIN_KEY}&name=bob{tail}&csrf={token}"
        signed = await dash.post(
            "/dashboard/login",
            content=form.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert signed.status_code == 400, signed.text
    assert "payrail_session=" not in signed.headers.get("set-cookie", "")
    async with rt.engine.connect() as conn:
        opened = await conn.scalar(select(func.count()).select_from(dashboard_sessions))
    assert opened == 0
