"""The audit trail: every payout transition recorded with its cause, in its own transaction."""

from __future__ import annotations

from conftest import ADMIN_KEY, payout_body
from sqlalchemy import select, text

from payrail.db.tables import payout_events
from payrail.domain.payouts import parse_payout_request
from payrail.entrypoints import worker
from payrail.services import payouts


async def set_faults(client, **knobs):
    response = await client.post("/test/failure-injection", json=knobs)
    assert response.status_code == 200, response.text


async def history(client, payout_id: str) -> list[dict]:
    response = await client.get(f"/payouts/{payout_id}/history")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["payoutId"] == payout_id and data["count"] == len(data["events"])
    return data["events"]


async def test_completed_payout_history_is_created_sent_succeeded_in_order(client):
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 201, response.text
    events = await history(client, response.json()["data"]["id"])
    # The inline path's tx1 writes the payout in flight: it is also the send intent.
    assert [(e["from"], e["to"]) for e in events] == [
        (None, "in_flight"),
        ("in_flight", "completed"),
    ]
    assert [e["toStatus"] for e in events] == ["pending", "completed"]
    assert events[0]["cause"] == "api: payout created; sending to the node"
    assert events[1]["cause"] == "node: payment succeeded"
    assert all(e["at"].endswith("Z") for e in events)


async def test_failed_payout_history_names_the_node_failure_reason(client):
    await set_faults(client, enabled=True, timeoutRate=1.0, timeoutMs=5)
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 504, response.text
    events = await history(client, response.json()["data"]["id"])
    assert events[-1]["to"] == "failed" and events[-1]["toStatus"] == "error"
    assert "timeout" in events[-1]["cause"]


async def test_expiry_and_sandbox_changes_are_audited_with_their_cause(client, rt, clock):
    await set_faults(client, enabled=True, ambiguousRate=1.0, timeoutMs=5, ambiguousSettleMs=60_000)
    pending = await client.post("/payouts", json=payout_body(gamertag="amb"))
    assert pending.status_code == 202, pending.text
    in_flight_id = pending.json()["data"]["id"]
    # A payout never sent (queued, no worker has picked it up): expire it through the sandbox.
    await set_faults(client, enabled=False)
    await payouts.reserve(
        rt, parse_payout_request(payout_body(gamertag="exp")), payouts.PATH_QUEUE
    )
    async with rt.engine.connect() as conn:
        reserved_id = await conn.scalar(
            select(payout_events.c.payout_id).where(
                payout_events.c.to_status == "reserved", payout_events.c.payout_id != in_flight_id
            )
        )
    expired = await client.post(f"/test/expire/{reserved_id}")
    assert expired.status_code == 200, expired.text
    last = (await history(client, reserved_id))[-1]
    assert (last["from"], last["to"], last["cause"]) == (
        "reserved",
        "expired",
        "sandbox: POST /test/expire",
    )
    # The ambiguous one settles later; the worker's transition is audited too.
    clock.advance(61_000)
    await worker.run_until_idle(rt)
    last = (await history(client, in_flight_id))[-1]
    assert (last["from"], last["to"], last["cause"]) == (
        "in_flight",
        "completed",
        "node: payment succeeded",
    )


async def test_a_lost_race_writes_no_audit_row(client, rt):
    """Only the winner of a guarded UPDATE records the transition: no phantom history."""
    response = await client.post("/payouts", json=payout_body())
    payout_id = response.json()["data"]["id"]
    from payrail.services.payouts import settle_payout

    assert await settle_payout(rt, payout_id) is None  # already final: nothing to do
    assert len(await history(client, payout_id)) == 2


async def test_history_of_another_projects_payout_is_404_and_unknown_is_404(client):
    admin = {"apikey": ADMIN_KEY}
    created = await client.post("/projects", json={"id": "studio_h"}, headers=admin)
    other_key = {"apikey": created.json()["data"]["apiKey"]}
    response = await client.post("/payouts", json=payout_body())
    payout_id = response.json()["data"]["id"]
    hidden = await client.get(f"/payouts/{payout_id}/history", headers=other_key)
    assert hidden.status_code == 404 and hidden.json()["data"]["error"] == "PAYOUT_NOT_FOUND"
    missing = await client.get("/payouts/nope/history")
    assert missing.status_code == 404 and missing.json()["success"] is False


async def test_a_state_change_made_behind_the_services_back_is_still_in_the_trail(client, rt):
    """The trail is written by the database (triggers), so raw SQL cannot escape it either."""
    response = await client.post("/payouts", json=payout_body())
    payout_id = response.json()["data"]["id"]
    async with rt.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE payouts SET state = 'expired', updated_at = updated_at + 1 WHERE id = :id"
            ),
            {"id": payout_id},
        )
        # A write that leaves the state alone adds nothing.
        await conn.execute(
            text("UPDATE payouts SET state = 'expired', description = 'x' WHERE id = :id"),
            {"id": payout_id},
        )
    events = await history(client, payout_id)
    assert [(e["from"], e["to"]) for e in events][-2:] == [
        ("in_flight", "completed"),
        ("completed", "expired"),
    ]
    # That UPDATE set no cause: the trail says so rather than repeat the previous one.
    assert events[-1]["cause"] == "unattributed: state changed without a cause"
