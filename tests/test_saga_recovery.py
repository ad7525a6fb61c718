"""The payout saga under unknown outcomes, crashes and duplicate workers (service layer).

Every test ends on invariant 3 (docs/architecture.md): the node paid a payout at most once, and the
ledger posted it iff the node says it succeeded; otherwise the reservation was voided.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from conftest import PROJECT
from sqlalchemy import select

from payrail.bootstrap import Runtime, SimulatedCrash, build_runtime
from payrail.db.tables import jobs, sim_node_payments, transfers
from payrail.domain.payouts import PUBLIC_STATUS, State, Status, parse_payout_request
from payrail.entrypoints.worker import run_once, run_until_idle
from payrail.jobs import queue
from payrail.lightning.backend import NodeStatus
from payrail.services import payouts, projects
from payrail.services.faults import FailureInjection
from payrail.services.reconcile import reconcile

AMOUNT_SATS = 1_000
TOTAL_COST_SATS = 1_020  # amount + ceil(2%) fee
AMBIGUOUS_SETTLE_MS = 3_600_000  # far beyond expiresIn and every backoff used below
WAIT_FOR_NODE_MAX_S = 5.0
CRASHPOINTS = ("after_reserve", "after_mark_in_flight", "after_node_call")


def request(internal_id: str, **overrides: object):
    body: dict[str, object] = {
        "gamertag": "player1",
        "amount": AMOUNT_SATS,
        "projectId": PROJECT,
        "internalId": internal_id,
    }
    body.update(overrides)
    return parse_payout_request(body)


async def state_of(rt: Runtime, payout_id: str) -> State:
    return State((await payouts.get_payout(rt, payout_id))["state"])


async def node_rows(rt: Runtime, payout_id: str) -> list:
    async with rt.engine.connect() as conn:
        return list(
            await conn.execute(
                select(sim_node_payments).where(sim_node_payments.c.payment_id == payout_id)
            )
        )


async def resolutions(rt: Runtime, payout_id: str) -> dict[str, list[str]]:
    """Each pending transfer of the payout → the kinds of the rows that resolved it."""
    ids = payouts.transfer_ids(payout_id)
    async with rt.engine.connect() as conn:
        rows = list(
            await conn.execute(
                select(transfers.c.pending_id, transfers.c.kind).where(
                    transfers.c.pending_id.in_(ids)
                )
            )
        )
    found: dict[str, list[str]] = {i: [] for i in ids}
    for row in rows:
        found[row.pending_id].append(row.kind)
    return found


async def resolution(rt: Runtime, payout_id: str) -> str | None:
    """'post', 'void' or None (open); fails if the payout was ever both voided and paid."""
    found = await resolutions(rt, payout_id)
    assert all(len(kinds) <= 1 for kinds in found.values()), found
    kinds = {kinds[0] if kinds else None for kinds in found.values()}
    assert len(kinds) == 1, f"the amount and fee transfers were resolved apart: {found}"
    return kinds.pop()


async def job_state(rt: Runtime, payout_id: str) -> str:
    async with rt.engine.connect() as conn:
        return await conn.scalar(
            select(jobs.c.state).where(jobs.c.id == payouts.settle_job_id(payout_id))
        )


async def assert_final(
    rt: Runtime, payout_id: str, start_sats: int, *, paid: bool, node_saw_it: bool = True
) -> None:
    """The payout is final; the node, the ledger and the balance agree on whether it was paid."""
    final = State.COMPLETED if paid else State.FAILED
    assert await state_of(rt, payout_id) == final
    rows = await node_rows(rt, payout_id)
    assert len(rows) == (1 if node_saw_it else 0), rows
    if rows:
        expected = NodeStatus.SUCCEEDED if paid else NodeStatus.FAILED
        assert NodeStatus(rows[0].status) == expected
    assert await resolution(rt, payout_id) == ("post" if paid else "void")
    balance = await projects.balance(rt, PROJECT)
    assert balance["reserved"] == 0
    assert balance["balance"] == start_sats - (TOTAL_COST_SATS if paid else 0)
    assert await job_state(rt, payout_id) == "done"
    report = await reconcile(rt)
    assert report.clean, report.discrepancies


async def assert_pending_and_held(rt: Runtime, payout_id: str, start_sats: int) -> None:
    row = await payouts.get_payout(rt, payout_id)
    assert PUBLIC_STATUS[State(row["state"])] == Status.PENDING
    assert await resolution(rt, payout_id) is None
    balance = await projects.balance(rt, PROJECT)
    assert balance["reserved"] == TOTAL_COST_SATS
    assert balance["balance"] == start_sats - TOTAL_COST_SATS


async def start_balance(rt: Runtime) -> int:
    return (await projects.balance(rt, PROJECT))["balance"]


async def crash_create(rt: Runtime, clock, crashpoint: str, **overrides: object) -> str:
    """create_payout 'dies' at the crashpoint; returns the payout id it left behind."""
    rt.crashpoints.add(crashpoint)
    with pytest.raises(SimulatedCrash):
        await payouts.create_payout(rt, request(f"crash-{crashpoint}", **overrides))
    row = await payouts.get_by_internal_id(rt, PROJECT, f"crash-{crashpoint}")
    return row["id"]


def restart(rt: Runtime, clock, worker_id: str = "restarted-worker") -> None:
    """The crashed process is gone: no crashpoints, a new worker id, and its lease runs out."""
    rt.crashpoints.clear()
    rt.worker_id = worker_id
    clock.advance(rt.settings.lease_ms + 1)


@pytest.fixture
async def rt2(rt: Runtime, clock) -> AsyncIterator[Runtime]:
    """A second process on the same database: its own engine, node client and worker id."""
    other = build_runtime(rt.settings, clock=clock)
    other.worker_id = "second-worker"
    yield other
    await other.aclose()


async def wait_for_node_row(rt: Runtime, payout_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_FOR_NODE_MAX_S
    while not await node_rows(rt, payout_id):
        assert asyncio.get_running_loop().time() < deadline, "the node never received the payment"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- 1. ambiguous timeout


@pytest.mark.parametrize("settles_by", ["settle_at_passes", "forced"])
async def test_ambiguous_timeout_stays_pending_until_the_node_settles_then_charges_once(
    rt, clock, settles_by
):
    start = await start_balance(rt)
    await rt.faults.put(
        FailureInjection(
            enabled=True, ambiguousRate=1.0, timeoutMs=10, ambiguousSettleMs=AMBIGUOUS_SETTLE_MS
        )
    )
    created = await payouts.create_payout(rt, request("ambiguous"))
    payout_id = created.payout["id"]
    assert created.payout["state"] == State.IN_FLIGHT
    assert payouts.view(created.payout)["status"] == "pending"
    await assert_pending_and_held(rt, payout_id, start)

    # Six rounds of asking a node that still says in flight, past the payout's expiresIn too.
    for _ in range(6):
        clock.advance(queue.BACKOFF_CAP_MS + 1)
        assert await run_until_idle(rt) == 1
        assert await state_of(rt, payout_id) == State.IN_FLIGHT
        await assert_pending_and_held(rt, payout_id, start)
        rows = await node_rows(rt, payout_id)
        assert [NodeStatus(r.status) for r in rows] == [NodeStatus.IN_FLIGHT]
        assert await job_state(rt, payout_id) == "queued"
        assert (await reconcile(rt)).clean

    if settles_by == "settle_at_passes":
        clock.advance(AMBIGUOUS_SETTLE_MS)
    else:
        await rt.node.force(payout_id, NodeStatus.SUCCEEDED)
        clock.advance(queue.BACKOFF_CAP_MS + 1)
    assert await run_until_idle(rt) == 1
    await assert_final(rt, payout_id, start, paid=True)
    assert (await payouts.get_payout(rt, payout_id))["settled_at"] is not None


async def test_ambiguous_timeout_that_the_node_finally_fails_is_voided_and_balance_restored(
    rt, clock
):
    start = await start_balance(rt)
    await rt.faults.put(
        FailureInjection(
            enabled=True, ambiguousRate=1.0, timeoutMs=10, ambiguousSettleMs=AMBIGUOUS_SETTLE_MS
        )
    )
    payout_id = (await payouts.create_payout(rt, request("ambiguous-fail"))).payout["id"]
    await assert_pending_and_held(rt, payout_id, start)
    clock.advance(queue.BACKOFF_CAP_MS + 1)
    assert await run_until_idle(rt) == 1
    await assert_pending_and_held(rt, payout_id, start)

    await rt.node.force(payout_id, NodeStatus.FAILED)
    clock.advance(queue.BACKOFF_CAP_MS + 1)
    assert await run_until_idle(rt) == 1
    await assert_final(rt, payout_id, start, paid=False)


# ---------------------------------------------------------------- 2. crash between saga steps


@pytest.mark.parametrize("node_pays", [True, False], ids=["node_succeeds", "node_fails"])
@pytest.mark.parametrize("crashpoint", CRASHPOINTS)
async def test_crash_between_saga_steps_recovers_to_one_final_state_paid_at_most_once(
    rt, clock, crashpoint, node_pays
):
    start = await start_balance(rt)
    if not node_pays:
        await rt.faults.put(FailureInjection(enabled=True, failureRate=1.0))
    payout_id = await crash_create(rt, clock, crashpoint)

    # Mid-way: the reservation is held. The inline path's tx1 is also the send intent, so the
    # payout is in flight at every crash point: recovery asks the node before any resend.
    await assert_pending_and_held(rt, payout_id, start)
    expected_state = State.IN_FLIGHT
    assert await state_of(rt, payout_id) == expected_state
    rows = await node_rows(rt, payout_id)
    assert len(rows) == (1 if crashpoint == "after_node_call" else 0)
    # The dead process still holds the job's lease: nobody may take it over yet.
    rt.crashpoints.clear()
    assert await run_until_idle(rt) == 0
    assert await state_of(rt, payout_id) == expected_state

    restart(rt, clock)
    assert await run_until_idle(rt) >= 1
    await assert_final(rt, payout_id, start, paid=node_pays)
    # A second recovery pass changes nothing.
    clock.advance(rt.settings.lease_ms + queue.BACKOFF_CAP_MS)
    assert await run_until_idle(rt) == 0
    await assert_final(rt, payout_id, start, paid=node_pays)


async def test_crash_after_an_ambiguous_node_call_recovers_without_resending(rt, clock):
    start = await start_balance(rt)
    await rt.faults.put(
        FailureInjection(
            enabled=True, ambiguousRate=1.0, timeoutMs=10, ambiguousSettleMs=AMBIGUOUS_SETTLE_MS
        )
    )
    payout_id = await crash_create(rt, clock, "after_node_call")
    await assert_pending_and_held(rt, payout_id, start)
    restart(rt, clock)
    assert await run_until_idle(rt) == 1
    await assert_pending_and_held(rt, payout_id, start)
    assert len(await node_rows(rt, payout_id)) == 1

    clock.advance(AMBIGUOUS_SETTLE_MS)
    assert await run_until_idle(rt) == 1
    await assert_final(rt, payout_id, start, paid=True)


# ---------------------------------------------------------------- 3. expiry of never-sent payouts


def spy_on_node(rt: Runtime) -> list[str]:
    """The node calls made from now on, in order: 'status' and 'pay'."""
    calls: list[str] = []
    real_status, real_pay = rt.node.status, rt.node.pay

    async def status(*args: object):
        calls.append("status")
        return await real_status(*args)

    async def pay(*args: object):
        calls.append("pay")
        return await real_pay(*args)

    rt.node.status, rt.node.pay = status, pay  # type: ignore[method-assign]
    return calls


async def reserve_queued(rt: Runtime, internal_id: str, **overrides: object) -> str:
    """tx1 of the queue path: a reserved payout that no worker has sent yet."""
    return await payouts.reserve(rt, request(internal_id, **overrides), payouts.PATH_QUEUE)


async def test_reserved_payout_never_sent_before_expires_at_is_expired_by_the_sweep(rt, clock):
    start = await start_balance(rt)
    expires_in_s = 10
    payout_id = await reserve_queued(rt, "queued-expiry", expiresIn=expires_in_s)
    await assert_pending_and_held(rt, payout_id, start)
    assert await state_of(rt, payout_id) == State.RESERVED
    clock.advance(expires_in_s * 1000 + 1)
    await payouts.expire_due(rt)
    assert await state_of(rt, payout_id) == State.EXPIRED
    assert await resolution(rt, payout_id) == "void"
    # Its settle job then finds it final and never sends it.
    await run_until_idle(rt)
    assert await job_state(rt, payout_id) == "done"
    assert await node_rows(rt, payout_id) == []
    balance = await projects.balance(rt, PROJECT)
    assert (balance["balance"], balance["reserved"]) == (start, 0)
    assert (await reconcile(rt)).clean


@pytest.mark.parametrize("crashpoint", ["after_reserve", "after_mark_in_flight"])
async def test_crash_before_the_node_call_then_expires_at_passes_asks_the_node_and_expires(
    rt, clock, crashpoint
):
    """The send intent is in tx1: after a crash nobody knows whether the node got the payment,
    so nothing expires it until the lease runs out and the node is asked by payment id; the
    node never had it, and expiresAt has passed: voided, expired, never sent late."""
    rt.settings = dataclasses.replace(rt.settings, lease_ms=600_000)
    start = await start_balance(rt)
    expires_in_s = 10
    payout_id = await crash_create(rt, clock, crashpoint, expiresIn=expires_in_s)
    rt.crashpoints.clear()
    rt.worker_id = "restarted-worker"
    clock.advance(expires_in_s * 1000 + 1)
    assert await run_until_idle(rt) == 0  # the sweep may not expire it: it may have been sent
    assert await state_of(rt, payout_id) == State.IN_FLIGHT
    await assert_pending_and_held(rt, payout_id, start)

    node_calls = spy_on_node(rt)
    clock.advance(rt.settings.lease_ms + 1)
    assert await run_until_idle(rt) == 1
    assert node_calls == ["status"]
    assert await state_of(rt, payout_id) == State.EXPIRED
    assert await resolution(rt, payout_id) == "void"
    assert await job_state(rt, payout_id) == "done"
    assert await node_rows(rt, payout_id) == []
    balance = await projects.balance(rt, PROJECT)
    assert (balance["balance"], balance["reserved"]) == (start, 0)
    assert (await reconcile(rt)).clean


async def test_crash_before_the_node_call_asks_the_node_before_resending(rt, clock):
    """Before expiresAt, recovery asks first (NOT_FOUND), then sends once: paid once."""
    start = await start_balance(rt)
    payout_id = await crash_create(rt, clock, "after_reserve")
    node_calls = spy_on_node(rt)
    restart(rt, clock)
    assert await run_until_idle(rt) == 1
    assert node_calls == ["status", "pay"]
    await assert_final(rt, payout_id, start, paid=True)


# ---------------------------------------------------------------- 4. duplicate workers


async def test_two_workers_after_lease_expiry_claim_the_settle_job_once_and_pay_once(
    rt, rt2, clock
):
    start = await start_balance(rt)
    payout_id = await crash_create(rt, clock, "after_mark_in_flight")
    restart(rt, clock, worker_id="first-worker")
    ran = await asyncio.gather(run_once(rt), run_once(rt2))
    assert sorted(ran) == [0, 1]
    await assert_final(rt, payout_id, start, paid=True)


async def test_worker_whose_lease_ran_out_mid_node_call_and_its_successor_pay_once(rt, rt2, clock):
    start = await start_balance(rt)
    payout_id = await crash_create(rt, clock, "after_reserve")
    restart(rt, clock, worker_id="slow-worker")
    # The slow worker's node call outlasts its lease (in shifted time).
    await rt.faults.put(FailureInjection(enabled=True, latencyMs=500))
    slow = asyncio.create_task(run_once(rt))
    await wait_for_node_row(rt, payout_id)
    assert not slow.done()
    clock.advance(rt.settings.lease_ms + 1)
    assert await run_once(rt2) == 1  # the successor asks the node, which has already paid
    assert await state_of(rt, payout_id) == State.COMPLETED
    assert await slow == 1
    await assert_final(rt, payout_id, start, paid=True)


async def test_two_settles_racing_on_one_in_flight_payout_pay_and_post_once(rt, rt2, clock):
    start = await start_balance(rt)
    payout_id = await crash_create(rt, clock, "after_mark_in_flight")
    rt.crashpoints.clear()
    # Both see in_flight and a node that has nothing, so both send: the node must dedupe.
    await rt.faults.put(FailureInjection(enabled=True, latencyMs=200))
    await asyncio.gather(
        payouts.settle_payout(rt, payout_id, job_leased=True),
        payouts.settle_payout(rt2, payout_id, job_leased=True),
    )
    await assert_final(rt, payout_id, start, paid=True)


async def test_a_node_call_past_our_timeout_is_unknown_then_asked_about_and_paid_once(rt, clock):
    """Our own bound on the node call (node_timeout_ms) ends the wait, not the payment: the
    payout stays pending with its funds held, and the worker asks the node later."""
    start = await start_balance(rt)
    rt.settings = dataclasses.replace(rt.settings, node_timeout_ms=50, settle_wait_ms=200)
    await rt.faults.put(FailureInjection(enabled=True, latencyMs=400))
    created = await payouts.create_payout(rt, request("slow-node"))
    payout_id = created.payout["id"]
    await assert_pending_and_held(rt, payout_id, start)
    await wait_for_node_row(rt, payout_id)  # the node has it: our wait ended, its payment not
    await rt.faults.put(FailureInjection(enabled=False))
    await asyncio.sleep(0.5)  # the slow call's answer has come back to no one
    clock.advance(60_000)  # past the retry's backoff
    assert await run_until_idle(rt) == 1
    await assert_final(rt, payout_id, start, paid=True)
