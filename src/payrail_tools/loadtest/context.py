"""The state one run shares between its Locust users and the harness (gevent: one thread)."""

from __future__ import annotations

import itertools
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from payrail_tools.loadtest.api import Api
from payrail_tools.loadtest.ledger import ClientLedger
from payrail_tools.loadtest.receiver import CallbackReceiver
from payrail_tools.loadtest.stats import classify, payout_ok

PAYOUT_FIELDS = ("id", "totalCost", "status")


@dataclass
class Project:
    id: str
    api_key: str
    index: int
    secret: str | None = None  # a callback-signing secret, if the server gave one


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class PayoutAnswer:
    status: int
    outcome: str
    data: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def payout_id(self) -> str | None:
        return self.data.get("id")


class RunContext:
    def __init__(
        self,
        scenario: str,
        base_url: str,
        api: Api,
        duration_scale: float,
        legacy: bool,
    ) -> None:
        self.scenario = scenario
        self.base_url = base_url
        self.api = api
        self.recorder = api.recorder
        self.ledger = ClientLedger()
        self.duration_scale = duration_scale
        self.legacy = legacy
        self.run_id = secrets.token_hex(3)
        self.rng = random.Random()
        self.projects: list[Project] = []
        self.receiver: CallbackReceiver | None = None
        self.counters: Counter[str] = Counter()  # metrics a scenario measures itself
        self.details: dict[str, Any] = {}  # what the report shows under "scenario details"
        self.checks: list[Check] = []
        self.notes: list[str] = []
        self.state: dict[str, Any] = {}  # a scenario's own bookkeeping
        self.rollback_failures: set[str] = set()
        self.task_errors: list[str] = []
        self.gate = Event()  # barrier: released when every user has arrived
        self.finished = Event()  # fixed-work plans: set when every user is done
        self.users_expected = 0
        self._arrived = 0
        self._done = 0
        self._seq = itertools.count()
        self._user_index = itertools.count()
        self._locks: dict[str, BoundedSemaphore] = {}

    # ------------------------------------------------------------ users

    def next_user_index(self) -> int:
        return next(self._user_index)

    def next_seq(self) -> int:
        return next(self._seq)

    def lock(self, project_id: str) -> BoundedSemaphore:
        if project_id not in self._locks:
            self._locks[project_id] = BoundedSemaphore(1)
        return self._locks[project_id]

    def arrive_and_wait(self, timeout_s: float) -> None:
        """A barrier, so a fixed-work scenario's requests leave together (a real spike)."""
        self._arrived += 1
        if self._arrived >= self.users_expected:
            self.gate.set()
        self.gate.wait(timeout_s)

    def user_done(self) -> None:
        self._done += 1
        if self._done >= self.users_expected:
            self.finished.set()

    def spawn(self, fn: Any, *args: Any) -> gevent.Greenlet:
        return gevent.spawn(fn, *args)

    # ------------------------------------------------------------ answers

    def record_payout(
        self,
        project: Project,
        body: dict[str, Any],
        status: int,
        parsed: Any,
        latency_ms: float,
        headers: dict[str, str] | None = None,
        op: str = "payout",
    ) -> PayoutAnswer:
        """Count one POST /payouts answer and feed the payout it shows to the client ledger."""
        outcome = classify(status, parsed)
        self.recorder.add(op, status, outcome, latency_ms, payout_ok(outcome, parsed))
        data = parsed.get("data") if isinstance(parsed, dict) else None
        data = data if isinstance(data, dict) else {}
        if all(k in data for k in PAYOUT_FIELDS):
            self.ledger.observe(project.id, data)
            if outcome in ("timeout", "payment_failed") and data.get("balanceRolledBack") is False:
                self.rollback_failures.add(data["id"])
        elif outcome in ("transport_error", "server_error"):
            # No payout object: we cannot know whether one exists. Resolved by a replay.
            self.ledger.unknown(project.id, body)
        return PayoutAnswer(status, outcome, data, headers or {})

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))
