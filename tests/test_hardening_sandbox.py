"""Sandbox PATCH /payouts/{id}/status: only the node's answer may end a payout it may pay.

Before: an in-flight payout set to error voided its reservation and the node paid it later
(paid, not charged); a reserved payout set to completed was charged with no node payment.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ADMIN_KEY, balance_of, payout_body

from payrail.config import Settings
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH
from payrail.services.payouts import get_payout
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}
TOTAL_COST = 1020  # 1000 + the 2 % fee


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, settle_wait_ms=0)  # answer at once, even unsettled


async def _patch(client, payout_id: str, status: str):
    return await client.patch(f"/payouts/{payout_id}/status", json={"status": status})


async def _state(rt, payout_id: str) -> str:
    return (await get_payout(rt, payout_id))["state"]


async def test_an_in_flight_payout_cannot_be_ended_by_the_sandbox_endpoint(client, rt):
    knobs = {"enabled": True, "ambiguousRate": 1.0, "timeoutMs": 10, "ambiguousSettleMs": 60_000}
    assert (await client.post("/test/failure-injection", json=knobs)).status_code == 200
    start = await balance_of(client)
    created = await client.post("/payouts", json=payout_body())
    assert created.status_code == 202, created.text
    payout_id = created.json()["data"]["id"]
    assert await _state(rt, payout_id) == "in_flight"

    for status in ("error", "completed", "expired"):
        refused = await _patch(client, payout_id, status)
        assert refused.status_code == 409, refused.text
        assert refused.json()["data"]["error"] == "INVALID_STATUS_TRANSITION"
        assert "only the node's answer" in refused.json()["message"]
    assert await _state(rt, payout_id) == "in_flight"
    assert await balance_of(client) == start - TOTAL_COST  # still held for the node's answer
    assert (await reconcile(rt)).clean


async def test_a_reserved_payout_cannot_be_completed_without_a_node_payment(client, rt):
    flag = {"enabled": True, "rolloutPercent": 100}
    put = await client.put(f"/admin/flags/{SETTLEMENT_QUEUE_PATH}", json=flag, headers=ADMIN)
    assert put.status_code == 200, put.text
    start = await balance_of(client)
    created = await client.post("/payouts", json=payout_body())  # queued; no worker runs
    assert created.status_code == 202, created.text
    payout_id = created.json()["data"]["id"]
    assert await _state(rt, payout_id) == "reserved"

    refused = await _patch(client, payout_id, "completed")
    assert refused.status_code == 409, refused.text
    assert "never sent to the Lightning node" in refused.json()["message"]
    assert await _state(rt, payout_id) == "reserved"
    assert await balance_of(client) == start - TOTAL_COST

    voided = await _patch(client, payout_id, "error")  # never sent: ending it is safe
    assert voided.status_code == 200, voided.text
    assert voided.json()["data"]["status"] == "error"
    assert await balance_of(client) == start
    assert (await reconcile(rt)).clean
