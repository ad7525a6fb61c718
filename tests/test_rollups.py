"""The dashboard's hourly charts come from payout_rollups (services/rollups.py): the rollup
counts what the payouts say, follows a pending payout until it finishes, and is what the
overview reads for its 24-hour and 7-day windows."""

from __future__ import annotations

from collections import Counter

from conftest import PROJECT, payout_body
from sqlalchemy import select, text

from payrail.db.tables import payout_rollups, reconcile_checkpoints
from payrail.services import rollups
from payrail.services.dashboard import pages

HOUR_MS = rollups.HOUR_MS


async def _rows(rt) -> dict[tuple[int, str], int]:
    R = payout_rollups.c
    async with rt.engine.connect() as conn:
        found = await conn.execute(
            select(R.hour_ms, R.outcome, R.payouts).where(R.project_id == PROJECT)
        )
        return {(int(h), o): int(n) for h, o, n in found}


async def test_closed_hours_are_counted_once_and_a_pending_payout_is_followed(client, rt, clock):
    ids = []
    for i in range(4):
        response = await client.post("/payouts", json=payout_body(gamertag=f"roll{i}"))
        assert response.status_code == 201, response.text
        ids.append(response.json()["data"]["id"])
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE payouts SET state = 'in_flight' WHERE id = :id"), {"id": ids[0]}
        )
        created = dict((await conn.execute(text("SELECT id, created_at FROM payouts"))).all())
    hours = Counter(int(c) // HOUR_MS * HOUR_MS for c in created.values())
    pending_hour = int(created[ids[0]]) // HOUR_MS * HOUR_MS
    assert (await rollups.run(rt)) == 0, "the payouts' hour is not over yet"
    clock.advance(2 * HOUR_MS)
    assert (await rollups.run(rt)) == 4
    rows = await _rows(rt)
    assert sum(n for (_, o), n in rows.items() if o == "success") == 3
    assert sum(n for (_, o), n in rows.items() if o == "pending") == 1
    assert {h for h, _ in rows} == set(hours)
    # The pending payout finishes: the next run rolls its hour up again, and only that hour.
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE payouts SET state = 'completed' WHERE id = :id"), {"id": ids[0]}
        )
    assert (await rollups.run(rt)) == hours[pending_hour]
    rows = await _rows(rt)
    assert sum(n for (_, o), n in rows.items() if o == "success") == 4
    assert "pending" not in {o for _, o in rows}
    assert (await rollups.run(rt)) == 0, "nothing pending, no new hour: nothing read"


async def test_the_overview_reads_the_rollup_for_hourly_windows_and_agrees_with_the_payouts(
    client, rt, clock
):
    for i in range(3):
        response = await client.post("/payouts", json=payout_body(gamertag=f"ov{i}"))
        assert response.status_code == 201, response.text
    clock.advance(2 * HOUR_MS)
    live = await pages.overview(rt, PROJECT, "24h")  # before any rollup: all live
    assert live["totals"]["success"] == 3
    await rollups.run(rt)
    rolled = await pages.overview(rt, PROJECT, "24h")
    assert rolled["totals"] == live["totals"]
    assert rolled["chart"] == live["chart"]
    # It is the rollup that is read: a row changed there shows in the chart's totals.
    async with rt.engine.begin() as conn:
        await conn.execute(text("UPDATE payout_rollups SET payouts = payouts + 10"))
    assert (await pages.overview(rt, PROJECT, "7d"))["totals"]["success"] == 13
    # The 1-hour window's 5-minute buckets still come from the payouts themselves.
    recent = await client.post("/payouts", json=payout_body(gamertag="ov-new"))
    assert recent.status_code == 201, recent.text
    assert (await pages.overview(rt, PROJECT, "1h"))["totals"]["success"] == 1


async def test_a_first_run_on_a_long_history_rolls_up_the_charts_week_at_once(client, rt, clock):
    """A server started on months of payouts: the first run covers the last 7 days (the longest
    chart), not the oldest week, so no chart reads the payouts themselves after it."""
    old = await client.post("/payouts", json=payout_body(gamertag="roll_old"))
    assert old.status_code == 201, old.text
    clock.advance(30 * 24 * HOUR_MS)
    recent = await client.post("/payouts", json=payout_body(gamertag="roll_recent"))
    assert recent.status_code == 201, recent.text
    clock.advance(2 * 24 * HOUR_MS)
    async with rt.engine.connect() as conn:
        created = await conn.scalar(
            text("SELECT created_at FROM payouts WHERE id = :id"),
            {"id": recent.json()["data"]["id"]},
        )
    assert (await rollups.run(rt)) == 1, "only the payout of the last 7 days"
    assert await _rows(rt) == {(int(created) // HOUR_MS * HOUR_MS, "success"): 1}
    async with rt.engine.connect() as conn:
        watermark = await conn.scalar(
            select(reconcile_checkpoints.c.watermark_ms).where(
                reconcile_checkpoints.c.name == rollups.CHECKPOINT
            )
        )
    now = rt.clock.now_ms()
    assert watermark == (now - rollups.LAG_MS) // HOUR_MS * HOUR_MS, "caught up in one run"
