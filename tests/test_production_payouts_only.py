"""Production without Stripe: payouts work, the card routes answer 503 CARD_PAYMENTS_DISABLED."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT

from payrail.bootstrap import build_runtime
from payrail.entrypoints.http.app import create_app


@pytest.fixture
async def payouts_only(settings, rt, clock):
    prod = dataclasses.replace(settings, mode="production", stripe_backend="disabled")
    prod_rt = build_runtime(prod, clock=clock, node=rt.node, engine=rt.engine)
    app = create_app(prod, runtime=prod_rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/api/v1",
        headers={"apikey": ADMIN_KEY},
    ) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/orders"),
        ("GET", "/orders"),
        ("GET", "/orders/ord_1"),
        ("POST", "/orders/ord_1/pay"),
        ("POST", "/webhooks/stripe"),
    ],
)
async def test_card_routes_answer_503_card_payments_disabled(payouts_only, method, path):
    response = await payouts_only.request(method, path, json={"amount": 100, "currency": "usd"})
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["data"]["error"] == "CARD_PAYMENTS_DISABLED"
    assert "PAYRAIL_STRIPE_API_KEY" in body["message"]


async def test_payouts_still_work_without_stripe(payouts_only, client):
    await client.put("/recipients/kate", json={"nodePubkey": "02" + "ab" * 32})
    response = await payouts_only.post(
        "/payouts", json={"gamertag": "kate", "amount": 100, "projectId": PROJECT}
    )
    assert response.status_code == 201, response.text
