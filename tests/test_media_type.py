"""A body that is not application/json is refused: 415 UNSUPPORTED_MEDIA_TYPE, nothing changes."""

from __future__ import annotations

import json

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "jsonx"],
)
async def test_payout_body_not_json_is_415_and_charges_nothing(client, content_type):
    start = await balance_of(client)
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(
        "/payouts", content=json.dumps(payout_body()).encode(), headers=headers
    )
    assert response.status_code == 415, response.text
    body = response.json()
    assert body["success"] is False
    assert body["data"]["error"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "application/json" in body["message"]
    assert await balance_of(client) == start
    listed = await client.get("/payouts")
    assert listed.json()["data"]["count"] == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_media_types_are_accepted(client, content_type):
    start = await balance_of(client)
    response = await client.post(
        "/payouts",
        content=json.dumps(payout_body(amount=100)).encode(),
        headers={"content-type": content_type},
    )
    assert response.status_code == 201, response.text
    assert await balance_of(client) == start - 102


async def test_fund_with_text_plain_is_415_and_adds_nothing(client):
    start = await balance_of(client)
    response = await client.post(
        f"/projects/{PROJECT}/fund",
        content=b'{"amount": 5000}',
        headers={"content-type": "text/plain", "apikey": ADMIN_KEY},
    )
    assert (response.status_code, response.json()["data"]["error"]) == (
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    assert await balance_of(client) == start


async def test_empty_body_needs_no_content_type(client):
    """Routes whose body is optional (rotation, project creation) still take an empty body."""
    response = await client.post(
        f"/projects/{PROJECT}/webhook-secret/rotate", headers={"apikey": ADMIN_KEY}
    )
    assert response.status_code == 200, response.text


async def test_a_literal_null_body_is_refused_and_creates_nothing(client):
    admin = {"apikey": ADMIN_KEY, "content-type": "application/json"}
    before = (await client.get("/payouts", headers={"apikey": ADMIN_KEY})).json()["data"]
    answer = await client.post("/projects", content=b"null", headers=admin)
    assert answer.status_code == 400, answer.text
    assert answer.json()["data"]["error"] == "VALIDATION_ERROR"
    funded = await client.post(f"/projects/{PROJECT}/fund", content=b"null", headers=admin)
    assert funded.status_code == 400
    assert await balance_of(client) == 100_000
    after = (await client.get("/payouts", headers={"apikey": ADMIN_KEY})).json()["data"]
    assert after == before
