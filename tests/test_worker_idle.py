"""An idle server's background loops (issue 30): they back off while they find nothing, are
woken at once by work made in their own process, and still see, within their bounded maximum
poll, what nobody tells them of (a lease that ran out).

No timed assertion: each wait below is a bound on polling. The wake-up tests make the loop's
idle sleep 60 s and give up after 30 s, so each fails if its wake-up is taken away.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from cardkit import Cards, open_cards
from conftest import payout_body, until
from sqlalchemy import insert, select

from payrail.db.tables import jobs
from payrail.entrypoints import worker
from payrail.jobs import queue
from payrail.psp import simulator
from payrail.services import sweeps

LONG_SLEEP_MS = 60_000  # longer than WAIT_MAX_S: only a wake-up ends it in time


async def _true(value: bool) -> bool:
    return value


def test_the_idle_poll_doubles_up_to_its_maximum_and_never_sleeps_past_a_due_job():
    waits = [worker.idle_wait_ms(n, 200, 2_000, None) for n in range(1, 8)]
    assert waits == [200, 400, 800, 1_600, 2_000, 2_000, 2_000]
    assert worker.idle_wait_ms(10_000, 200, 2_000, None) == 2_000  # no overflow, still bounded
    assert worker.idle_wait_ms(6, 200, 2_000, 350) == 350  # a retry due sooner: wake for it
    assert worker.idle_wait_ms(6, 200, 2_000, 0) == 1  # due now: look again, without spinning
    assert worker.idle_wait_ms(1, 500, 100, None) == 500  # a maximum below the poll: the poll


def test_the_sweep_loop_sleeps_until_the_next_sweep_is_due():
    async def nothing() -> int:
        return 0

    due = [sweeps.Sweep("a", 60, nothing, due_at=130.0), sweeps.Sweep("b", 300, nothing, 400.0)]
    assert sweeps.next_wait_s(due, now=100.0) == 30.0
    assert sweeps.next_wait_s(due, now=129.9) == sweeps.TICK_S  # never a busy loop


async def test_next_run_at_is_the_earliest_job_scheduled_later(rt, clock):
    now = clock.now_ms()

    def row(job_id: str, state: str, run_at: int) -> dict:
        return queue.job_row(job_id, "settle_payout", {}, now, run_at_ms=run_at) | {"state": state}

    assert await queue.next_run_at(rt.engine, now) is None
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(jobs),
            [
                row("due-now", "queued", now),  # claimable now: not "later"
                row("done-soon", "done", now + 1_000),
                row("dead-soon", "dead", now + 1_000),
                row("later", "queued", now + 5_000),
                row("much-later", "queued", now + 60_000),
            ],
        )
    assert await queue.next_run_at(rt.engine, now) == now + 5_000


async def test_a_request_that_writes_wakes_the_worker_and_a_read_does_not(client, rt):
    assert (await client.get("/health")).status_code == 200
    assert not rt.work_ready.is_set()
    assert (await client.post("/payouts", json=payout_body())).status_code == 201
    assert rt.work_ready.is_set()


class Receiver:
    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def settings(settings):
    return dataclasses.replace(settings, worker_poll_ms=20, worker_idle_poll_max_ms=200)


async def test_a_callback_made_while_the_worker_sleeps_is_delivered_at_once(
    client, rt, monkeypatch
):
    """The payout engine writes the callback's job itself; the request that made it wakes the
    worker, which would otherwise sleep a minute."""
    monkeypatch.setattr(worker, "idle_wait_ms", lambda *_: LONG_SLEEP_MS)
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run_forever(rt, stop))
    try:
        await until(lambda: _true(rt.work_ready.waiting), "the worker to fall asleep")
        body = payout_body(callbackUrl=f"http://127.0.0.1:{port}/cb")
        answer = await client.post("/payouts", json=body)
        assert answer.status_code == 201, answer.text
        await until(lambda: _true(receiver.requests >= 1), "the callback")
    finally:
        stop.set()
        await loop
        server.close()


async def test_a_lease_that_runs_out_is_seen_by_a_sleeping_worker_with_no_wake_up(
    rt, clock, monkeypatch
):
    """Nothing in the process is told when a dead holder's lease runs out: the bounded idle
    poll (worker_idle_poll_max_ms) is what finds the job again (the chaos tests rely on it)."""
    ran: list[str] = []

    async def noop(_rt, job: queue.Job) -> None:
        ran.append(job.id)

    monkeypatch.setitem(worker.HANDLERS, "test_noop", noop)
    now = clock.now_ms()
    job = queue.job_row("orphan", "test_noop", {}, now, leased_by="dead-worker", lease_ms=60_000)
    async with rt.engine.begin() as conn:
        await conn.execute(insert(jobs).values(job))
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run_forever(rt, stop))
    try:
        await until(lambda: _true(rt.work_ready.waiting), "the worker to fall asleep")
        assert ran == []  # leased by its (dead) holder
        clock.advance(60_001)
        await until(lambda: _true(ran == ["orphan"]), "the orphaned job")
        async with rt.engine.connect() as conn:
            state = await conn.scalar(select(jobs.c.state).where(jobs.c.id == "orphan"))
        assert state == "done"
    finally:
        stop.set()
        await loop


@pytest.fixture
async def cards(settings, rt, clock):
    async for harness in open_cards(settings, rt, clock):
        yield harness


async def test_the_stripe_simulator_delivers_a_webhook_it_records_while_asleep(
    cards: Cards, monkeypatch
):
    monkeypatch.setattr(simulator, "DELIVERY_IDLE_POLL_MAX_MS", LONG_SLEEP_MS)
    stop = asyncio.Event()
    loop = asyncio.create_task(cards.sim.run(stop))
    try:
        await until(lambda: _true(cards.sim._recorded.waiting), "the simulator to fall asleep")
        order = await cards.order()
        assert (await cards.pay(order["id"], "pay-1")).status_code == 200
        await until(lambda: _event_stored(cards), "the payment's webhook")
    finally:
        stop.set()
        await loop


async def _event_stored(cards: Cards) -> bool:
    return await cards.events_stored() >= 1
