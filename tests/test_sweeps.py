"""Background sweeps run once per deployment (services/sweeps.py), and pruning keeps what must
be kept (services/retention.py).

Two runtimes on one database stand for two server processes: each has its own worker id, as
two processes would, and each runs the same sweep loop.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import payout_body
from sqlalchemy import insert, select

from payrail.bootstrap import build_runtime
from payrail.db.tables import callback_attempts, callbacks, jobs, payout_batches
from payrail.services import retention, sweeps
from payrail.support import metrics

DAY_MS = retention.DAY_MS


@pytest.fixture
async def other(settings, clock):
    """A second 'process' on the same database."""
    runtime = build_runtime(settings, clock=clock)
    yield runtime
    await runtime.aclose()


def _ran(report_rows: list[str]) -> list[str]:
    return sorted(report_rows)


async def test_a_sweep_runs_in_one_process_and_moves_when_its_holder_stops(
    client, rt, other, clock
):
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 201, response.text
    mine, theirs = sweeps.sweeps_of(rt), sweeps.sweeps_of(other)
    assert _ran(await sweeps.run_due(rt, mine)) == ["reconcile", "retention", "rollup"]
    assert await sweeps.run_due(other, theirs) == [], "the other process holds no lease"
    assert metrics.SWEEP_ROWS.labels(sweep="reconcile")._value.get() == 1  # one payout read
    # Due again: the holder runs it again, the other still does not.
    for s in mine + theirs:
        s.due_at = 0
    assert _ran(await sweeps.run_due(rt, mine)) == ["reconcile", "retention", "rollup"]
    assert await sweeps.run_due(other, theirs) == []
    # The holder stops cleanly (its leases given back): the other takes the sweeps at once.
    for s in mine:
        await sweeps.release_lease(rt, s.name)
    for s in theirs:
        s.due_at = 0
    assert _ran(await sweeps.run_due(other, theirs)) == ["reconcile", "retention", "rollup"]
    for s in mine:
        s.due_at = 0
    assert await sweeps.run_due(rt, mine) == []


async def test_a_lease_of_a_process_that_died_runs_out_and_is_taken_over(rt, other, clock):
    assert await sweeps.take_lease(rt, "reconcile", 60_000)
    assert not await sweeps.take_lease(other, "reconcile", 60_000)
    assert await sweeps.take_lease(rt, "reconcile", 60_000), "the holder renews"
    clock.advance(60_001)  # rt died without giving it back
    assert await sweeps.take_lease(other, "reconcile", 60_000)
    assert not await sweeps.take_lease(rt, "reconcile", 60_000)


async def test_the_sweeps_run_in_the_worker_loop_not_in_the_server_lifespan(rt):
    """The server starts no reconciliation of its own: its worker loop's sweeps do it."""
    import inspect

    from payrail.entrypoints import worker
    from payrail.entrypoints.http import app

    assert "reconcile" not in inspect.getsource(app.create_app)
    assert "sweeps.run_forever" in inspect.getsource(worker.run_forever)


def _job(job_id: str, state: str, updated_at: int) -> dict:
    return {
        "id": job_id,
        "kind": "settle_payout",
        "payload": "{}",
        "state": state,
        "run_at": updated_at,
        "attempts": 1,
        "max_attempts": 5,
        "lease_until": None,
        "locked_by": None,
        "last_error": None,
        "created_at": updated_at,
        "updated_at": updated_at,
    }


def _callback(callback_id: str, status: str, created_at: int) -> dict:
    return {
        "id": callback_id,
        "project_id": "p",
        "payout_id": callback_id,
        "url": "https://example.test/cb",
        "payload": "{}",
        "status": status,
        "attempts": 1,
        "created_at": created_at,
        "sequence": 1,
    }


async def test_pruning_deletes_only_what_is_past_its_retention(rt, clock):
    now = clock.now_ms()
    old, recent = now - 8 * DAY_MS, now - 6 * DAY_MS
    very_old = now - 31 * DAY_MS
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(jobs),
            [
                *(_job(f"done-old-{i}", "done", old) for i in range(5)),
                _job("done-recent", "done", recent),
                _job("queued-old", "queued", old),  # not done: never pruned
                _job("dead-old", "dead", very_old),  # dead: an operator's to replay
            ],
        )
        await conn.execute(
            insert(callbacks),
            [
                *(_callback(f"cb-old-{i}", "delivered", very_old) for i in range(3)),
                _callback("cb-recent", "delivered", recent),
                _callback("cb-pending-old", "pending", very_old),
                _callback("cb-dead-old", "dead", very_old),
            ],
        )
        await conn.execute(
            insert(callback_attempts),
            [
                {"callback_id": cid, "attempt": 1, "outcome": "delivered", "started_at": t}
                for cid, t in (("cb-old-0", very_old), ("cb-recent", recent))
            ],
        )
        await conn.execute(
            insert(payout_batches),
            [
                {
                    "project_id": "p",
                    "idempotency_key": key,
                    "request_hash": "h",
                    "items_json": "[]",
                    "created_at": t,
                }
                for key, t in (("old", very_old), ("recent", recent))
            ],
        )
    pruned = await retention.prune(rt, batch_rows=2)  # several batches per table
    assert (pruned.jobs, pruned.callbacks, pruned.batch_keys) == (5, 3, 1)
    async with rt.engine.connect() as conn:
        kept_jobs = set((await conn.execute(select(jobs.c.id))).scalars())
        kept_callbacks = set((await conn.execute(select(callbacks.c.id))).scalars())
        kept_attempts = set((await conn.execute(select(callback_attempts.c.callback_id))).scalars())
        kept_keys = set((await conn.execute(select(payout_batches.c.idempotency_key))).scalars())
    assert kept_jobs == {"done-recent", "queued-old", "dead-old"}
    assert kept_callbacks == {"cb-recent", "cb-pending-old", "cb-dead-old"}
    assert kept_attempts == {"cb-recent"}
    assert kept_keys == {"recent"}
    assert (await retention.prune(rt)).rows == 0


async def test_a_retention_of_zero_days_keeps_everything(rt, clock):
    rt.settings = dataclasses.replace(rt.settings, retention_jobs_days=0)
    async with rt.engine.begin() as conn:
        await conn.execute(insert(jobs), [_job("ancient", "done", clock.now_ms() - 999 * DAY_MS)])
    assert (await retention.prune(rt)).jobs == 0
