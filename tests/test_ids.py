"""Payout ids are time-ordered (support/ids.py): new rows land at the right edge of every index
a payout keys (its row, its transfers, its settle job, the node's record), whatever the history."""

from __future__ import annotations

import uuid

from conftest import PROJECT, payout_body
from sqlalchemy import select

from payrail.db.tables import withdrawals
from payrail.support.ids import time_ordered_uuid


def test_a_time_ordered_uuid_is_a_version_7_uuid_of_the_time_given():
    made = uuid.UUID(time_ordered_uuid(1_765_000_000_123))
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert made.int >> 80 == 1_765_000_000_123


def test_ids_sort_by_their_millisecond_and_do_not_collide_within_one():
    same_ms = {time_ordered_uuid(1_000) for _ in range(10_000)}
    assert len(same_ms) == 10_000
    later = time_ordered_uuid(1_001)
    assert all(earlier < later for earlier in same_ms)  # as text too: the index's order


async def test_every_way_of_making_a_payout_gives_it_a_time_ordered_id(client, rt):
    single = await client.post("/payouts", json=payout_body(gamertag="ids1"))
    assert single.status_code == 201, single.text
    batch = await client.post(
        "/payouts/batch",
        json={"projectId": PROJECT, "items": [{"gamertag": "ids2", "amount": 10}]},
        headers={"Idempotency-Key": "ids-batch"},
    )
    assert batch.status_code == 200, batch.text
    link = await client.post("/withdrawals", json={"projectId": PROJECT, "amount": 10})
    assert link.status_code == 201, link.text
    async with rt.engine.connect() as conn:  # a link's payout id is shown once it is claimed
        reserved_for_link = await conn.scalar(
            select(withdrawals.c.payout_id).where(withdrawals.c.id == link.json()["data"]["id"])
        )
    ids = [
        single.json()["data"]["id"],
        batch.json()["data"]["items"][0]["data"]["id"],
        reserved_for_link,
    ]
    assert None not in ids, ids
    assert [uuid.UUID(i).version for i in ids] == [7, 7, 7], ids
    assert ids == sorted(ids), "made one after the other, they sort in that order"
