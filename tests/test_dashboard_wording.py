"""The dashboard reads as people read (issue 25): an order's amount in its currency's units
(19.99 USD, not 1,999 USD), "1 discrepancy", and a project key's session named after its
project, never "admin"."""

from __future__ import annotations

import re

import httpx
from conftest import ADMIN_KEY, SANDBOX_KEY, payout_body
from sqlalchemy import select

from payrail.db.tables import dashboard_sessions
from payrail.domain.orders import format_amount

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


async def _sign_in(dash: httpx.AsyncClient, key: str, name: str = "") -> None:
    token = CSRF_RE.search((await dash.get("/dashboard/login")).text).group(1)
    signed = await dash.post("/dashboard/login", data={"key": key, "name": name, "csrf": token})
    assert signed.status_code == 303, signed.text


def test_amounts_read_in_the_currency_s_units() -> None:
    assert format_amount(1999, "usd") == "19.99 USD"
    assert format_amount(5, "eur") == "0.05 EUR"
    assert format_amount(123_456_78, "gbp") == "123,456.78 GBP"
    assert format_amount(500, "jpy") == "500 JPY"  # zero-decimal: the unit is the minor unit


async def test_the_orders_page_shows_19_99_usd_for_1999_cents(dash, client) -> None:
    made = await client.post("/orders", json={"amount": 1999, "currency": "usd"})
    assert made.status_code == 201, made.text
    await _sign_in(dash, SANDBOX_KEY)
    listed = (await dash.get("/dashboard/orders")).text
    assert "19.99 USD" in listed and "1,999 USD" not in listed
    one = (await dash.get(f"/dashboard/orders/{made.json()['data']['id']}")).text
    assert "19.99 USD" in one


async def test_a_project_key_session_is_not_named_admin(dash, rt) -> None:
    await _sign_in(dash, SANDBOX_KEY)
    async with rt.engine.connect() as conn:
        actors = list((await conn.execute(select(dashboard_sessions.c.actor))).scalars())
    assert actors == ["project:project_test_001"]


async def test_one_discrepancy_is_singular(dash, client) -> None:
    # the legacy flaw, once: a timed-out payout keeps its charge (charged-not-paid)
    await client.post(
        "/test/failure-injection",
        json={"enabled": True, "timeoutRate": 1, "rollbackOnTimeout": False},
    )
    assert (await client.post("/payouts", json=payout_body())).status_code == 504
    await _sign_in(dash, ADMIN_KEY, "alice")
    csrf = CSRF_RE.search((await dash.get("/dashboard/reconciliation")).text).group(1)
    ran = await dash.post(
        "/dashboard/reconciliation/run", data={"csrf": csrf}, follow_redirects=True
    )
    assert "1 discrepancy found." in ran.text and "1 discrepancies" not in ran.text
