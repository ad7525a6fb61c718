"""DELETE /recipients/{gamertag} racing a PUT answers 200 or 404, never 500 (issue 24, 4).

Before: the DELETE that found no entry looked again outside its transaction, found the
entry the racing PUT had just registered, and failed an assertion (10 of 20 races on SQLite);
on PostgreSQL a PUT updating a row a DELETE had just removed failed another (1 of 20).
Every race here is checked against the audit trail: each answer has its one change row, and
the entry exists exactly when its last change is not a deletion.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from payrail.db.tables import recipient_changes, recipients

RACES = 100
ENTRY = {"lightningAddress": "racer@example.com"}
OTHER = {"lightningAddress": "racer2@example.com"}
STAGGER_S = 0.0005


async def _after(delay_s: float, call):
    await asyncio.sleep(delay_s)
    return await call


async def _changes(rt) -> dict[str, int]:
    C = recipient_changes.c
    async with rt.engine.connect() as conn:
        rows = await conn.execute(select(C.action, func.count()).group_by(C.action))
        return {action: n for action, n in rows.all()}


async def test_a_hundred_deletes_racing_puts_never_answer_500(client, rt):
    answers: dict[str, list[int]] = {"put": [], "delete": []}
    present = 0
    for i in range(RACES):
        tag = f"racer{i}"
        registered, put_first, lag_s = i % 2 == 0, (i // 2) % 2 == 0, (i // 4) % 8 * STAGGER_S
        if registered:  # half the races start from a registered entry, half from none
            before = await client.put(f"/recipients/{tag}", json=ENTRY)
            assert before.status_code == 201, before.text
        put_call = client.put(f"/recipients/{tag}", json=OTHER if i % 3 else ENTRY)
        delete_call = client.delete(f"/recipients/{tag}")
        # Which one starts first alternates, and the second starts 0-3.5 ms later: in-process
        # requests otherwise run in one fixed order and never meet in the window that failed.
        if put_first:
            put, removed = await asyncio.gather(put_call, _after(lag_s, delete_call))
        else:
            removed, put = await asyncio.gather(delete_call, _after(lag_s, put_call))
        assert put.status_code in (200, 201), put.text
        assert removed.status_code in (200, 404), removed.text
        if removed.status_code == 404:
            assert removed.json()["data"]["error"] == "RECIPIENT_NOT_FOUND"
        answers["put"].append(put.status_code)
        answers["delete"].append(removed.status_code)
        # Whoever won, the entry and its audit trail agree.
        history = (await client.get(f"/recipients/{tag}/history")).json()["data"]["events"]
        now = await client.get(f"/recipients/{tag}")
        assert now.status_code == (404 if history[-1]["action"] == "deleted" else 200), history
        present += now.status_code == 200

    changes = await _changes(rt)
    setup_puts = RACES // 2
    assert changes.get("deleted", 0) == answers["delete"].count(200)
    assert changes.get("created", 0) + changes.get("updated", 0) == RACES + setup_puts
    async with rt.engine.connect() as conn:
        live = await conn.scalar(select(func.count()).select_from(recipients))
    assert live == present  # one entry per race that ended registered, none twice
    print(
        f"{RACES} races: PUT {answers['put'].count(201)}×201 {answers['put'].count(200)}×200, "
        f"DELETE {answers['delete'].count(200)}×200 {answers['delete'].count(404)}×404"
    )
