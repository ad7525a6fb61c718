"""Rewards priced in dollars: POST /quotes, payouts and batch items paid with quoteId, and the
rate sources (the operator's fixed rate; an HTTP JSON source, here a fake rate server on
127.0.0.1). Every money path checks the balance and reconcile, not only the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from sqlalchemy import func, select

from payrail.config import Settings
from payrail.db.tables import payouts as payouts_table
from payrail.db.tables import quote_uses
from payrail.domain.money import fee_sats
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}


async def quote(client, amount="0.10", project=PROJECT, **extra):
    body = {"projectId": project, "currency": "USD", "amount": amount, **extra}
    return await client.post("/quotes", json=body)


async def rows(rt, table) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)))


def quoted_payout(quote_id: str, **overrides):
    body = payout_body(**overrides)
    del body["amount"]
    return body | {"quoteId": quote_id}


async def test_a_quote_pays_exactly_its_sats_once(client, rt):
    made = await quote(client, "0.10")
    assert made.status_code == 201, made.text
    q = made.json()["data"]
    # The sandbox's fixed rate: 100,000 US dollars per bitcoin, so $0.10 is 100 sats.
    assert (q["sats"], q["rate"], q["currency"], q["amount"], q["source"]) == (
        100,
        "100000",
        "USD",
        "0.10",
        "fixed",
    )
    before = await balance_of(client)
    paid = await client.post("/payouts", json=quoted_payout(q["id"], idempotencyKey="k-q1"))
    assert paid.status_code == 201, paid.text
    assert paid.json()["data"]["amount"] == 100
    assert await balance_of(client) == before - 100 - fee_sats(100)
    # A retry with the same key replays the payout; it is not a second use.
    replay = await client.post("/payouts", json=quoted_payout(q["id"], idempotencyKey="k-q1"))
    assert replay.status_code == 200 and replay.json()["data"]["id"] == paid.json()["data"]["id"]
    again = await client.post("/payouts", json=quoted_payout(q["id"], gamertag="other"))
    assert again.status_code == 409, again.text
    data = again.json()["data"]
    assert data["error"] == "QUOTE_USED" and data["payoutId"] == paid.json()["data"]["id"]
    assert await balance_of(client) == before - 100 - fee_sats(100)
    assert await rows(rt, quote_uses) == 1 and await rows(rt, payouts_table) == 1
    assert (await reconcile(rt)).clean


async def test_an_expired_quote_charges_nothing(client, rt, clock):
    q = (await quote(client, "1.00")).json()["data"]
    assert q["sats"] == 1_000
    before = await balance_of(client)
    clock.advance(rt.settings.quote_ttl_s * 1000)
    late = await client.post("/payouts", json=quoted_payout(q["id"]))
    assert late.status_code == 409, late.text
    assert late.json()["data"]["error"] == "QUOTE_EXPIRED"
    assert late.json()["data"]["expiresAt"] == q["expiresAt"]
    assert await balance_of(client) == before
    assert await rows(rt, quote_uses) == 0 and await rows(rt, payouts_table) == 0


async def test_bad_quotes_and_quoted_payouts_are_4xx_and_change_nothing(client, rt):
    for body in (
        {"projectId": PROJECT, "currency": "EUR", "amount": "1.00"},
        {"projectId": PROJECT, "currency": "USD", "amount": 0.1},
        {"projectId": PROJECT, "currency": "USD", "amount": "0.101"},
        {"projectId": PROJECT, "currency": "USD", "amount": "1e3"},
        {"projectId": PROJECT, "currency": "USD", "amount": "-1"},
        {"projectId": PROJECT, "currency": "USD", "amount": "0.00"},
        {"projectId": PROJECT, "currency": "USD"},
        {"projectId": PROJECT, "currency": "USD", "amount": "99999999.99"},  # above a payout
        [],
    ):
        answer = await client.post("/quotes", json=body)
        assert answer.status_code == 400, (body, answer.text)
    other = await client.post("/projects", json={"id": "other_studio"}, headers=ADMIN)
    assert other.status_code == 201
    theirs = await client.post(
        "/quotes", json={"projectId": "other_studio", "currency": "USD", "amount": "1.00"}
    )
    assert theirs.status_code == 403  # the sandbox key is not theirs
    made = await client.post(
        "/quotes",
        json={"projectId": "other_studio", "currency": "USD", "amount": "1.00"},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    before = await balance_of(client)
    not_ours = await client.post("/payouts", json=quoted_payout(made.json()["data"]["id"]))
    assert not_ours.status_code == 404 and not_ours.json()["data"]["error"] == "QUOTE_NOT_FOUND"
    unknown = await client.post("/payouts", json=quoted_payout("no-such-quote"))
    assert unknown.status_code == 404
    both = await client.post(
        "/payouts", json=payout_body() | {"quoteId": made.json()["data"]["id"]}
    )
    assert both.status_code == 400
    assert await balance_of(client) == before and await rows(rt, payouts_table) == 0


async def test_batch_items_pay_their_quotes_once_each(client, rt):
    first = (await quote(client, "0.10")).json()["data"]
    second = (await quote(client, "0.25")).json()["data"]
    before = await balance_of(client)
    items = [
        {"gamertag": "qa", "quoteId": first["id"]},
        {"gamertag": "qb", "quoteId": second["id"]},
        {"gamertag": "qc", "quoteId": first["id"]},
        {"gamertag": "qd", "quoteId": "missing"},
    ]
    answer = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": items},
        headers={"Idempotency-Key": "quoted-batch"},
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()["data"]["items"]
    assert [i["httpStatus"] for i in got] == [201, 201, 409, 404], got
    assert [got[0]["data"]["amount"], got[1]["data"]["amount"]] == [100, 250]
    assert got[2]["data"]["error"] == "QUOTE_USED"
    assert await balance_of(client) == before - 100 - fee_sats(100) - 250 - fee_sats(250)
    replay = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": items},
        headers={"Idempotency-Key": "quoted-batch"},
    )
    assert [i["httpStatus"] for i in replay.json()["data"]["items"]] == [200, 200, 409, 404]
    assert await rows(rt, quote_uses) == 2
    assert (await reconcile(rt)).clean


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, settle_wait_ms=30_000, node_timeout_ms=20_000, lease_ms=60_000
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_20_payouts_racing_for_one_quote_pay_it_once(client, rt):
    q = (await quote(client, "0.50")).json()["data"]
    before = await balance_of(client)
    bodies = [quoted_payout(q["id"], gamertag=f"race{i}") for i in range(20)]
    answers = await asyncio.gather(*(client.post("/payouts", json=b) for b in bodies))
    assert sorted(a.status_code for a in answers) == [201] + [409] * 19
    assert {a.json()["data"]["error"] for a in answers if a.status_code == 409} == {"QUOTE_USED"}
    assert await balance_of(client) == before - 500 - fee_sats(500)
    assert await rows(rt, quote_uses) == 1 and await rows(rt, payouts_table) == 1
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


# ---------------------------------------------------------------- the HTTP rate source


class FakeRates:
    """A rate server on 127.0.0.1: answers `document` as JSON, or `status` if not 200."""

    def __init__(self) -> None:
        self.document: object = {"data": {"price": "50000.50"}}
        self.status = 200
        self.calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.calls += 1
                body = json.dumps(fake.document).encode()
                self.send_response(fake.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rate"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rates() -> Iterator[FakeRates]:
    fake = FakeRates()
    yield fake
    fake.close()


def _http(settings: Settings, rates: FakeRates, **extra: object) -> Settings:
    return dataclasses.replace(
        settings,
        fx_source="http",
        fx_http_url=rates.url,
        fx_http_field="data.price",
        fx_max_age_s=60,
        **extra,
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_http_source_prices_with_decimals_and_refuses_a_stale_rate(
    client, rt, clock, rates
):
    rt.settings = _http(rt.settings, rates)
    made = await quote(client, "1.00")
    assert made.status_code == 201, made.text
    q = made.json()["data"]
    # $1.00 at 50,000.50 $/BTC = 1,999.98 sats: 2,000, to the nearest sat.
    assert (q["sats"], q["rate"], q["source"]) == (2_000, "50000.5", "http")
    # A number in the JSON is read as a decimal too, never a float.
    rates.document = {"data": {"price": 33333.33}}
    clock.advance(10_000)
    assert (await quote(client, "1.00")).json()["data"]["sats"] == 3_000  # 2,999.99…
    # The source fails: the last rate is used while it is fresh …
    rates.status = 500
    clock.advance(30_000)
    kept = await quote(client, "1.00")
    assert kept.status_code == 201 and kept.json()["data"]["rate"] == "33333.33"
    # … and no longer: no guess, 503.
    clock.advance(31_000)
    stale = await quote(client, "1.00")
    assert stale.status_code == 503, stale.text
    assert stale.json()["data"]["error"] == "RATE_UNAVAILABLE"
    # An answer without the field is no rate either.
    rates.status, rates.document = 200, {"data": {}}
    assert (await quote(client, "1.00")).status_code == 503
    rates.document = {"data": {"price": "-5"}}
    assert (await quote(client, "1.00")).status_code == 503
    rates.document = {"data": {"price": "40000"}}
    assert (await quote(client, "1.00")).json()["data"]["sats"] == 2_500


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_http_source_refuses_a_rate_the_source_says_is_old(client, rt, clock, rates):
    rt.settings = _http(rt.settings, rates, fx_http_time_field="data.time")
    now_s = clock.now_ms() // 1000
    rates.document = {"data": {"price": "60000", "time": now_s - 120}}
    old = await quote(client, "1.00")
    assert old.status_code == 503 and old.json()["data"]["error"] == "RATE_UNAVAILABLE"
    rates.document = {"data": {"price": "60000", "time": now_s - 5}}
    fresh = await quote(client, "0.60")
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["data"]["sats"] == 1_000
    before = await balance_of(client)
    paid = await client.post("/payouts", json=quoted_payout(fresh.json()["data"]["id"]))
    assert paid.status_code == 201 and paid.json()["data"]["amount"] == 1_000
    assert await balance_of(client) == before - 1_000 - fee_sats(1_000)
    assert (await reconcile(rt)).clean
