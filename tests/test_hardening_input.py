"""Bad input is a 400 in the envelope and changes nothing: NUL characters (PostgreSQL text
cannot hold them), lone surrogates, a cursor naming an impossible time, JSON nested deeper
than any request of ours, a NUL in a signed Stripe event, a reused funding key, a Stripe
signature dated in the future. Each case once answered a 500 or was accepted."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from cardkit import open_cards
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from payrail.db.tables import payouts, transfers
from payrail.domain import errors
from payrail.domain.text import check_json, text_refusal
from payrail.entrypoints.http.errors import read_json
from payrail.webhooks import sign

ADMIN = {"apikey": ADMIN_KEY}


async def _state(client, rt) -> tuple[int, int, int]:
    """What bad input must not change: the balance, the payouts, the ledger transfers."""
    async with rt.engine.connect() as conn:
        n_payouts = (await conn.execute(select(func.count()).select_from(payouts))).scalar_one()
        n_transfers = (await conn.execute(select(func.count()).select_from(transfers))).scalar_one()
    return await balance_of(client), n_payouts, n_transfers


def _refused(response, code: str = "VALIDATION_ERROR") -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["data"]["error"] == code, body
    assert body["message"]


RAW_BODIES = {
    "nul-in-gamertag": json.dumps(payout_body(gamertag="pla\u0000yer")),
    "nul-in-description": json.dumps(payout_body(description="a\u0000b")),
    "nul-in-project-id": json.dumps(payout_body(projectId="project\u0000")),
    "nul-in-callback-url": json.dumps(payout_body(callbackUrl="https://x.example/\u0000")),
    "nul-in-a-key": json.dumps({**payout_body(), "x\u0000": 1}),
    "lone-surrogate": json.dumps(payout_body(description="\ud800")),
    "lone-low-surrogate-in-key": json.dumps({**payout_body(), "\udc00": 1}),
    "nested-20000-deep": '{"gamertag": ' + "[" * 20_000 + "]" * 20_000 + "}",
    "nested-40-deep": json.dumps({**payout_body(), "x": json.loads("[" * 40 + "]" * 40)}),
}


@pytest.mark.parametrize("name", list(RAW_BODIES))
async def test_bad_text_or_nesting_in_a_payout_body_is_a_400_with_no_state_change(client, rt, name):
    before = await _state(client, rt)
    response = await client.post(
        "/payouts",
        content=RAW_BODIES[name].encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json", "idempotency-key": "k-" + name},
    )
    _refused(response)
    assert await _state(client, rt) == before


@pytest.mark.parametrize(
    "path",
    [
        "/payouts/po_%00abc",
        "/payouts/po_%00abc/history",
        "/payouts/by-internal-id/a%00b",
        f"/projects/{PROJECT}%00/balance",
        "/orders/ord_%00",
        "/payouts?cursor=%00",
        "/payouts?status=%00",
        f"/payouts?projectId={PROJECT}%00",
        "/payouts/%ED%A0%80",
        "/payouts?cursor=MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDp4",  # b64 of "10000000000000000000000:x"
        "/orders?cursor=MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDp4",
        "/callbacks?cursor=MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDp4",
        "/payouts?cursor=" + "LTEwMDAwMDAwMDAwMDAwMDAwMDAwMDA6eA==",  # "-10^22:x"
    ],
)
async def test_nul_surrogate_or_huge_cursor_in_path_or_query_is_a_400(client, rt, path):
    before = await _state(client, rt)
    for headers in ({}, ADMIN):
        _refused(await client.get(path, headers=headers))
    assert await _state(client, rt) == before


async def test_nul_in_a_post_path_parameter_is_a_400_and_funds_nothing(client, rt):
    before = await _state(client, rt)
    response = await client.post(f"/projects/{PROJECT}%00/fund", json={"amount": 5}, headers=ADMIN)
    _refused(response)
    assert await _state(client, rt) == before


async def test_a_huge_cursor_is_a_400_but_a_real_cursor_still_pages(client):
    for i in range(3):
        assert (
            await client.post("/payouts", json=payout_body(gamertag=f"c{i}"))
        ).status_code == 201
    first = (await client.get("/payouts?limit=2")).json()["data"]
    assert first["hasMore"] is True
    second = await client.get(f"/payouts?limit=2&cursor={first['nextCursor']}")
    assert second.status_code == 200 and second.json()["data"]["count"] == 1


# ------------------------------------------------------------------- funding key reuse


async def test_funding_key_reused_with_another_amount_is_422_and_adds_nothing(client):
    headers = {**ADMIN, "idempotency-key": "fund-once"}
    start = await balance_of(client)
    first = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 500}, headers=headers)
    assert first.status_code == 200 and first.json()["data"]["addedAmount"] == 500
    replay = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 500}, headers=headers)
    assert replay.status_code == 200 and replay.json()["data"]["replayed"] is True
    reused = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 900}, headers=headers)
    assert reused.status_code == 422, reused.text
    assert reused.json()["data"]["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert "500" in reused.json()["message"]
    assert await balance_of(client) == start + 500


# ------------------------------------------------------------------- Stripe events


@pytest.fixture
async def cards(settings, rt, clock):
    async for harness in open_cards(settings, rt, clock):
        yield harness


def _event(**object_fields) -> dict:
    return {
        "id": "evt_hardening_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 0,
        "data": {
            "object": {
                "id": "pi_x",
                "object": "payment_intent",
                "status": "succeeded",
                "amount": 100,
                "currency": "usd",
                "metadata": {"orderId": "ord_x"},
                **object_fields,
            }
        },
    }


async def _post_signed(cards, event: dict, at_s: int):
    body = json.dumps(event).encode()
    signature = sign([cards.rt.settings.stripe_webhook_secret], body, at_s)
    return await cards.client.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": signature}
    )


@pytest.mark.parametrize(
    "event",
    [
        {**_event(), "id": "evt_\u0000"},
        {**_event(), "type": "payment_intent.\u0000"},
        _event(id="pi_\u0000"),
        _event(metadata={"orderId": "ord_\u0000"}),
    ],
    ids=["event-id", "type", "intent-id", "order-id"],
)
async def test_a_nul_in_a_signed_stripe_event_is_a_400_and_nothing_is_stored(cards, event):
    response = await _post_signed(cards, event, int(time.time()))
    _refused(response)
    assert await cards.events_stored() == 0


async def test_a_stripe_signature_dated_beyond_the_tolerance_in_the_future_is_refused(cards):
    future = await _post_signed(cards, _event(), int(time.time()) + 3_600)
    _refused(future, "INVALID_SIGNATURE")
    assert await cards.events_stored() == 0
    near = await _post_signed(cards, {**_event(), "id": "evt_near"}, int(time.time()) + 5)
    assert near.status_code == 200, near.text
    assert await cards.events_stored() == 1


# ------------------------------------------------------------------- the body parser, fuzzed

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


class _Body:
    """The parts of a Starlette Request that read_json uses: a JSON body and its bytes."""

    headers = {"content-type": "application/json"}

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def body(self) -> bytes:
        return self.raw


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=256) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_read_json_answers_a_value_or_a_validation_error_never_anything_else(raw):
    try:
        value = asyncio.run(read_json(_Body(raw)))
    except errors.ValidationError:
        return
    # What it accepts is storable text all the way down.
    assert check_json(value) is value
    assert text_refusal(json.dumps(value, ensure_ascii=False)) is None
