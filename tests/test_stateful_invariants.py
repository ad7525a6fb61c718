"""Random payout histories keep the invariants (docs/architecture.md), checked after every step.

A Hypothesis state machine funds projects, creates payouts while the node settles, refuses,
times out definitely or answers ambiguously, crashes the process at each crash point, moves
the clock and runs the worker, in any order. After every step reconciliation must be clean
and each project's balance must equal funded − Σ totalCost(completed) − Σ totalCost(pending)
as computed from a model built only from the answers the service gave. At the end, after
enough time and worker runs, every payout must be final with the ledger still clean.

Each rule runs its coroutines on the machine's own event loop: Hypothesis drives the machine
synchronously. On failure Hypothesis prints the shrunk step sequence and how to replay it.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.bootstrap import SimulatedCrash, build_runtime
from payrail.config import SANDBOX_PROJECT_FUNDING_SATS, SANDBOX_PROJECT_ID, Settings
from payrail.db.engine import make_engine
from payrail.db.tables import jobs, metadata
from payrail.domain import errors
from payrail.domain.payouts import NODE_CONFIRMED_UNSENT, TRANSITIONS, PayoutRequest, State
from payrail.entrypoints.worker import run_until_idle
from payrail.jobs import queue
from payrail.services import payouts, projects
from payrail.services.faults import FailureInjection
from payrail.services.reconcile import reconcile
from payrail.support.clock import ShiftableClock

T = TypeVar("T")

SMALL_PROJECT = "project_small_002"  # starts at 0 sats, so insufficient balance happens often
PROJECTS = (SANDBOX_PROJECT_ID, SMALL_PROJECT)
GAMERTAGS = ("alice", "bob", "carol")
PAYOUT_KEYS = ("k1", "k2", "k3")
FUND_KEYS = ("f1", "f2")
CALLBACK_URL = "https://studio.example/payrail-hook"  # sandbox records it; nothing is sent
CRASHPOINTS = ("after_reserve", "after_mark_in_flight", "after_node_call")
PAYOUT_AMOUNT_MAX_SATS = 5_000
FUND_AMOUNT_MAX_SATS = 20_000
EXPIRES_IN_S = (10, 300)
HOUR_MS = 3_600_000  # the rate-limit window, N payouts per gamertag per hour
FEE_BPS = 200  # the 2% fee, restated here so the model does not reuse the code under test

RATE_LIMIT_PER_HOUR = 3
# The node-call guard runs on real time. The model's fault modes answer on their own (a refusal,
# a definite timeout, an ambiguous one after FAULT_CALL_MS), so the guard only has to catch a
# hang; at 500 ms a busy 2-core machine sometimes tripped it and turned a refusal into an
# unknown outcome the model did not ask for.
NODE_TIMEOUT_MS = 5_000
LEASE_MS = 2_000
SETTLE_WAIT_MS = 250  # also how long a replay of a pending payout waits
FAULT_CALL_MS = 5
AMBIGUOUS_SETTLE_MS = (1_000, 30_000)
CLOCK_STEPS_MS = (LEASE_MS + 1, 11_000, 61_000, 301_000, HOUR_MS + 1_000)
FINAL_ROUND_MS = LEASE_MS + queue.BACKOFF_CAP_MS + max(AMBIGUOUS_SETTLE_MS) + 1
FINAL_ROUNDS_MAX = 8

PENDING = frozenset({State.RESERVED, State.IN_FLIGHT})
NODE_FAILURE = FailureInjection(enabled=True, failureRate=1.0, timeoutMs=FAULT_CALL_MS)
DEFINITE_TIMEOUT = FailureInjection(
    enabled=True, timeoutRate=1.0, rollbackOnTimeout=True, timeoutMs=FAULT_CALL_MS
)
AMBIGUOUS = FailureInjection(enabled=True, ambiguousRate=1.0, timeoutMs=FAULT_CALL_MS)
FAULT_MODES = (FailureInjection(), NODE_FAILURE, DEFINITE_TIMEOUT, AMBIGUOUS)


def _reachable(state: State) -> frozenset[State]:
    """Every state a payout may be in later (through any number of legal transitions)."""
    seen: set[State] = set()

    def after(s: State) -> frozenset[State]:  # the saga's own move, once the node said unsent
        return TRANSITIONS[s] | NODE_CONFIRMED_UNSENT.get(s, frozenset())

    todo = list(after(state))
    while todo:
        nxt = todo.pop()
        if nxt not in seen:
            seen.add(nxt)
            todo.extend(after(nxt))
    return frozenset(seen)


def _expected_cost(amount: int) -> int:
    return amount + -(-amount * FEE_BPS // 10_000)


@dataclass
class ModelPayout:
    request: PayoutRequest
    cost: int
    created_at: int
    state: State


@dataclass(frozen=True)
class Database:
    """Where each example's runtime lives: a fresh URL per example, and its cleanup."""

    fresh_url: Callable[[], str]
    release: Callable[[str], None]
    make_engine: Callable[[str], AsyncEngine] = make_engine


requests = st.builds(
    PayoutRequest,
    project_id=st.sampled_from(PROJECTS),
    gamertag=st.sampled_from(GAMERTAGS),
    amount_sats=st.integers(1, PAYOUT_AMOUNT_MAX_SATS),
    description=st.none(),
    internal_id=st.none(),
    callback_url=st.sampled_from([None, CALLBACK_URL]),
    expires_in_s=st.sampled_from(EXPIRES_IN_S),
    idempotency_key=st.none() | st.sampled_from(PAYOUT_KEYS),
)


class PayoutHistory(RuleBasedStateMachine):
    def __init__(self, database: Database) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.database = database
        self.url = database.fresh_url()
        self.clock = ShiftableClock()
        self.rt = build_runtime(
            Settings(
                database_url=self.url,
                settle_wait_ms=SETTLE_WAIT_MS,
                node_timeout_ms=NODE_TIMEOUT_MS,
                lease_ms=LEASE_MS,
                rate_limit_per_hour=RATE_LIMIT_PER_HOUR,
                recipient_failures_max=0,  # the model has the rate limit, not the failure block
                sim_seed=0,  # only rates of 0 and 1 are used: the node's dice never matter
                run_worker=False,
            ),
            clock=self.clock,
            engine=database.make_engine(self.url),
        )
        self.run(self._start())
        self.funded = {SANDBOX_PROJECT_ID: SANDBOX_PROJECT_FUNDING_SATS, SMALL_PROJECT: 0}
        self.fund_keys: dict[tuple[str, str], int] = {}  # (project, key) → amount funded
        self.payouts: dict[str, ModelPayout] = {}
        self.keys: dict[tuple[str, str], str] = {}  # (project, idempotency key) → payout id
        self.moves_allowed = False  # only the worker (and the final rounds) advance old payouts
        self.consistent = True  # False from a rule's start until its invariants passed

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        if self.rt.engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in metadata.sorted_tables)
            async with self.rt.engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {names}"))
        await projects.seed_sandbox(self.rt)
        await projects.create_project(self.rt, SMALL_PROJECT, "Small studio")

    def _begin(self, *, moves_allowed: bool = False) -> None:
        self.consistent = False
        self.moves_allowed = moves_allowed

    # ------------------------------------------------------------ the model

    def _owed(self, project: str, states: frozenset[State]) -> int:
        return sum(
            p.cost
            for p in self.payouts.values()
            if p.request.project_id == project and p.state in states
        )

    def _available(self, project: str) -> int:
        return self.funded[project] - self._owed(project, PENDING | {State.COMPLETED})

    def _in_rate_window(self, req: PayoutRequest, now_ms: int) -> int:
        return sum(
            1
            for p in self.payouts.values()
            if p.request.project_id == req.project_id
            and p.request.gamertag == req.gamertag
            and p.created_at > now_ms - HOUR_MS
        )

    async def _why(self, payout_id: str) -> str:
        """What the node and the settle job say of a payout, for a failure message."""
        node = await self.rt.node.status(payout_id)
        async with self.rt.engine.connect() as conn:
            job = (
                await conn.execute(
                    select(jobs.c.state, jobs.c.attempts, jobs.c.last_error).where(
                        jobs.c.id == payouts.settle_job_id(payout_id)
                    )
                )
            ).first()
        return f"node {node}, settle job {job}"

    async def _rows(self) -> dict[str, RowMapping]:
        rows: dict[str, RowMapping] = {}
        for project in PROJECTS:
            page, cursor = await payouts.list_payouts(
                self.rt, project, None, limit=payouts.LIST_LIMIT_MAX
            )
            assert cursor is None, "more payouts than one page: raise the page size"
            rows.update((r["id"], r) for r in page)
        return rows

    # ------------------------------------------------------------ rules

    @rule(
        project=st.sampled_from(PROJECTS),
        amount=st.integers(1, FUND_AMOUNT_MAX_SATS),
        key=st.none() | st.sampled_from(FUND_KEYS),
    )
    def fund_a_project(self, project: str, amount: int, key: str | None) -> None:
        self._begin()
        first = self.fund_keys.get((project, key)) if key is not None else None
        if first is not None and first != amount:  # a reused key with another amount: 422
            try:
                self.run(projects.fund(self.rt, project, amount, key))
            except errors.IdempotencyKeyReused:
                return
            raise AssertionError("a reused funding key with another amount was accepted")
        replay = first is not None
        answer = self.run(projects.fund(self.rt, project, amount, key))
        assert answer["replayed"] is replay
        assert answer["addedAmount"] == (0 if replay else amount)
        if not replay:
            self.funded[project] += amount
        if key is not None:
            self.fund_keys[(project, key)] = amount
        assert answer["newBalance"] == self._available(project)

    @rule(req=requests)
    def create_payout_that_settles(self, req: PayoutRequest) -> None:
        self._create(req, FailureInjection(), State.COMPLETED)

    @rule(req=requests)
    def create_payout_the_node_refuses(self, req: PayoutRequest) -> None:
        self._create(req, NODE_FAILURE, State.FAILED, failure_code="PAYMENT_FAILED")

    @rule(req=requests)
    def create_payout_that_times_out_definitely(self, req: PayoutRequest) -> None:
        self._create(req, DEFINITE_TIMEOUT, State.FAILED, failure_code="GATEWAY_TIMEOUT")

    @rule(req=requests, settle_ms=st.sampled_from(AMBIGUOUS_SETTLE_MS))
    def create_payout_with_ambiguous_outcome(self, req: PayoutRequest, settle_ms: int) -> None:
        self._create(req, replace(AMBIGUOUS, ambiguousSettleMs=settle_ms), State.IN_FLIGHT)

    @rule(
        req=requests,
        crashpoint=st.sampled_from(CRASHPOINTS),
        faults=st.sampled_from(FAULT_MODES),
    )
    def crash_while_creating_payout(
        self, req: PayoutRequest, crashpoint: str, faults: FailureInjection
    ) -> None:
        # Crashed before a final answer: the inline path's tx1 is also the send intent, so the
        # payout is in flight at every crash point (the node is asked before any resend).
        self._create(req, faults, State.IN_FLIGHT, crashpoint=crashpoint)

    @precondition(lambda self: bool(self.keys))
    @rule(data=st.data())
    def replay_a_keyed_request(self, data: st.DataObject) -> None:
        project_key = data.draw(st.sampled_from(sorted(self.keys)), label="replayed key")
        self._create(self.payouts[self.keys[project_key]].request, None, None)

    @rule(ms=st.sampled_from(CLOCK_STEPS_MS))
    def advance_the_clock(self, ms: int) -> None:
        self._begin()
        self.clock.advance(ms)

    @rule()
    def run_the_worker(self) -> None:
        self._begin(moves_allowed=True)
        self.run(run_until_idle(self.rt))
        self.run(self.rt.drain())

    def _create(
        self,
        req: PayoutRequest,
        faults: FailureInjection | None,
        settled: State | None,
        *,
        failure_code: str | None = None,
        crashpoint: str | None = None,
    ) -> None:
        """Create a payout and check the answer against what the model says must happen."""
        self._begin()
        if faults is not None:
            self.run(self.rt.faults.put(faults))
        key_owner = (
            self.keys.get((req.project_id, req.idempotency_key)) if req.idempotency_key else None
        )
        before_ms = self.clock.now_ms()
        outcome: payouts.CreateOutcome | None = None
        error: errors.PayrailError | None = None
        crashed = False
        if crashpoint is not None:
            self.rt.crashpoints.add(crashpoint)
        try:
            outcome = self.run(payouts.create_payout(self.rt, req))
        except SimulatedCrash:
            crashed = True
        except errors.PayrailError as exc:
            error = exc
        finally:
            self.run(self.rt.drain())  # a crash in the background settle happens here, armed
            self.rt.crashpoints.clear()
        after_ms = self.clock.now_ms()
        new_ids = set(self.run(self._rows())) - set(self.payouts)

        if key_owner is not None:  # the key is taken in this project: replay or 422
            assert not crashed and not new_ids, "a used key must never reserve again"
            if req == self.payouts[key_owner].request:
                assert error is None and outcome is not None, f"replay refused: {error!r}"
                assert outcome.replay and outcome.payout["id"] == key_owner
                seen = State(outcome.payout["state"])
                known = self.payouts[key_owner].state
                assert seen == known or seen in _reachable(known)
            else:
                assert isinstance(error, errors.IdempotencyKeyReused), repr(error or outcome)
                assert error.extra["payoutId"] == key_owner
            return
        # The rate window only shrinks as time passes; the call's clock lies between the reads.
        limited_before = self._in_rate_window(req, before_ms) >= RATE_LIMIT_PER_HOUR
        limited_after = self._in_rate_window(req, after_ms) >= RATE_LIMIT_PER_HOUR
        if limited_before and (limited_after or isinstance(error, errors.RateLimitExceeded)):
            assert isinstance(error, errors.RateLimitExceeded), repr(error or outcome)
            assert not crashed and not new_ids
            return
        cost = _expected_cost(req.amount_sats)
        available = self._available(req.project_id)
        if cost > available:
            assert isinstance(error, errors.InsufficientBalance), repr(error or outcome)
            assert error.extra["currentBalance"] == available
            assert error.extra["totalCost"] == cost
            assert not crashed and not new_ids
            return
        assert error is None, f"refused with {available} available for {cost}: {error!r}"
        assert len(new_ids) == 1, f"one request reserved {len(new_ids)} payouts"
        (payout_id,) = new_ids
        if crashpoint == "after_reserve":
            assert crashed, "the crash point after the reservation was never reached"
        if outcome is not None:  # the inline settle may still have been running at the answer
            assert not outcome.replay and outcome.payout["id"] == payout_id
            assert State(outcome.payout["state"]) in PENDING | {settled}
        row = self.run(payouts.get_payout(self.rt, payout_id))
        if State(row["state"]) != settled:
            raise AssertionError(
                f"{row['state']} after {crashpoint or faults}: {self.run(self._why(payout_id))}"
            )
        assert row["amount"] + row["fee"] == cost
        assert row["failure_code"] == failure_code
        self.payouts[payout_id] = ModelPayout(req, cost, row["created_at"], State(row["state"]))
        if req.idempotency_key is not None:
            self.keys[(req.project_id, req.idempotency_key)] = payout_id

    # ------------------------------------------------------------ after every step

    @invariant()
    def ledger_reconciles_and_balances_match_the_model(self) -> None:
        self.run(self._check())
        self.consistent = True

    async def _check(self) -> None:
        report = await reconcile(self.rt)
        assert report.discrepancies == [], [d.to_dict() for d in report.discrepancies]
        rows = await self._rows()
        assert set(rows) == set(self.payouts), "payouts the model never saw created"
        for payout_id, row in rows.items():
            model = self.payouts[payout_id]
            state = State(row["state"])
            if self.moves_allowed:
                assert state == model.state or state in _reachable(model.state), (
                    f"{payout_id}: illegal move {model.state} → {state}"
                )
            else:
                assert state == model.state, f"{payout_id} moved {model.state} → {state} by itself"
            model.state = state
        for project in PROJECTS:
            shown = await projects.balance(self.rt, project)
            assert shown["balance"] == self._available(project), (project, shown, self.funded)
            assert shown["reserved"] == self._owed(project, PENDING), (project, shown)

    def teardown(self) -> None:
        try:
            if self.consistent:  # a failed step is the failure to report: don't mask it
                self._settle_everything()
        finally:
            try:
                self.run(self.rt.aclose())
                self.run(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()
                self.database.release(self.url)

    def _settle_everything(self) -> None:
        """Enough time and worker runs: every payout final, nobody's money stuck or invented."""
        self._begin(moves_allowed=True)
        for _ in range(FINAL_ROUNDS_MAX):
            self.clock.advance(FINAL_ROUND_MS)
            self.run(run_until_idle(self.rt))
            self.run(self.rt.drain())
            rows = self.run(self._rows())
            if all(State(r["state"]) not in PENDING for r in rows.values()):
                break
        self.run(self._check())
        stuck = {p: m.state.value for p, m in self.payouts.items() if m.state in PENDING}
        assert not stuck, f"still pending after {FINAL_ROUNDS_MAX} rounds: {stuck}"
        for project in PROJECTS:
            assert self._owed(project, PENDING) == 0


def _run(database: Database, *, examples: int, steps: int) -> None:
    run_state_machine_as_test(
        lambda: PayoutHistory(database),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_random_payout_histories_keep_ledger_invariants_and_model_balance_on_sqlite(
    sqlite_template: Path, tmp_path: Path
) -> None:
    def fresh_url() -> str:
        path = tmp_path / f"{uuid.uuid4().hex}.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"

    def release(url: str) -> None:
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    _run(Database(fresh_url, release, make_engine), examples=25, steps=25)


def test_random_payout_histories_keep_ledger_invariants_and_model_balance_on_postgresql(
    pg_url: str,
) -> None:
    # One database for the session (conftest's pg_url); each example truncates it first.
    _run(Database(lambda: pg_url, lambda _url: None), examples=10, steps=20)
