"""An Idempotency-Key header and a body idempotencyKey that differ are refused (issue 24, 7).

Before, the body's key won silently: a retry layer that set the header got a new payout
where it expected a replay of the header's.
"""

from __future__ import annotations

from conftest import balance_of, payout_body
from sqlalchemy import func, select

from payrail.db.tables import payouts, transfers


async def _counts(rt) -> tuple[int, int]:
    async with rt.engine.connect() as conn:
        n_payouts = await conn.scalar(select(func.count()).select_from(payouts))
        n_transfers = await conn.scalar(select(func.count()).select_from(transfers))
    return n_payouts, n_transfers


async def test_differing_header_and_body_keys_are_a_400_and_create_nothing(client, rt):
    start, before = await balance_of(client), await _counts(rt)
    refused = await client.post(
        "/payouts",
        json=payout_body(idempotencyKey="body-key"),
        headers={"Idempotency-Key": "header-key"},
    )
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["success"] is False and body["data"]["error"] == "IDEMPOTENCY_KEY_MISMATCH"
    assert "differ" in body["message"]
    assert await _counts(rt) == before
    assert await balance_of(client) == start


async def test_after_a_payout_a_mismatched_retry_is_refused_not_paid_again(client, rt):
    """The dangerous case: the header names the payout already made, the body a new key."""
    first = await client.post(
        "/payouts", json=payout_body(), headers={"Idempotency-Key": "order-7"}
    )
    assert first.status_code == 201, first.text
    start, before = await balance_of(client), await _counts(rt)
    retry = await client.post(
        "/payouts",
        json=payout_body(idempotencyKey="order-7-b"),
        headers={"Idempotency-Key": "order-7"},
    )
    assert retry.status_code == 400, retry.text
    assert retry.json()["data"]["error"] == "IDEMPOTENCY_KEY_MISMATCH"
    assert await _counts(rt) == before
    assert await balance_of(client) == start


async def test_the_same_key_in_both_places_is_one_key(client, rt):
    headers = {"Idempotency-Key": "same-1"}
    first = await client.post(
        "/payouts", json=payout_body(idempotencyKey="same-1"), headers=headers
    )
    assert first.status_code == 201, first.text
    start = await balance_of(client)
    replay = await client.post(
        "/payouts", json=payout_body(idempotencyKey="same-1"), headers=headers
    )
    assert replay.status_code == 200, replay.text
    assert replay.json()["data"]["id"] == first.json()["data"]["id"]
    assert await balance_of(client) == start
