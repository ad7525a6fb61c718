"""Sandbox fault-injection settings, stored in the database so every process sees the same ones.

A sandbox is shared by a studio's whole team and its CI, so knobs are per project: a project's
key changes its own knobs (a row of their own), which apply to its own payouts only; the
global knobs, set with the admin key, apply to every project that has none of its own. The
card-payment knobs (`card*`, `webhook*`) drive the one simulated Stripe account all projects
share (its webhook deliveries have no project), so they are global only: admin key.

Whose knobs apply is the *acting project* (ACTING_PROJECT): set for each request by
authentication (entrypoints/http/context.py) and for each payout job by the worker
(project_of_job). The simulated node and the payout saga read `FaultStore.get()`, which
answers for the acting project, so neither needs a project argument; tasks a request or a
job spawns inherit it (contextvars are copied into new tasks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.db.tables import payouts, sandbox_settings
from payrail.domain import errors
from payrail.support.clock import Clock

SETTING_NAME = "failure_injection"  # the global knobs' row; a project's: PROJECT_ROW_PREFIX…
PROJECT_ROW_PREFIX = f"{SETTING_NAME}:"  # + a hash of the project id (ids are up to 64 chars)
ACTING_PROJECT: ContextVar[str | None] = ContextVar("payrail_acting_project", default=None)
CACHE_TTL_MS = 500
LATENCY_MAX_MS = 10_000
TIMEOUT_MAX_MS = 30_000


@dataclass(frozen=True)
class FailureInjection:
    enabled: bool = False
    timeoutRate: float = 0.0  # node gives up, nothing paid (definite failure after timeoutMs)
    rollbackOnTimeout: bool = True  # False = legacy non-atomic flow: the charge stays
    failureRate: float = 0.0  # node refuses at once (no route)
    ambiguousRate: float = 0.0  # our call times out, the payment settles later
    latencyMs: int = 0  # added to every node call
    timeoutMs: int = 200  # how long a timed-out call takes
    ambiguousSettleMs: int = 1_000  # when an ambiguous payment settles at the node
    # The Stripe simulator (card payments); rates are per create call or per webhook event.
    cardCreateErrorRate: float = 0.0  # create answers 500 api_error; nothing is created
    cardCreateTimeoutRate: float = 0.0  # the intent is created, the answer comes too late
    cardCreateTimeoutMs: int = 30_000  # how late (longer than PAYRAIL_STRIPE_TIMEOUT_MS)
    webhookBeforeResponseRate: float = 0.0  # the event is delivered before create answers
    webhookDelayRate: float = 0.0
    webhookDelayMs: int = 5_000
    webhookDuplicateRate: float = 0.0  # delivered twice (same event id)
    webhookReorderRate: float = 0.0  # an intent's events arrive newest first
    webhookDropRate: float = 0.0  # never delivered: only the sweeper can find the outcome

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_global_knobs(self, global_: FailureInjection) -> FailureInjection:
        """These knobs, with the global-only (card) ones taken from `global_`."""
        return replace(self, **{name: getattr(global_, name) for name in GLOBAL_ONLY_KNOBS})

    def merged(self, changes: Any) -> FailureInjection:
        """Apply a partial update; rates are clamped to [0, 1], durations to their limits."""
        if not isinstance(changes, dict):
            raise errors.ValidationError("Body must be a JSON object of failure-injection knobs.")
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise errors.ValidationError(
                f"Unknown failure-injection fields: {', '.join(unknown)}", validFields=list(known)
            )
        values: dict[str, Any] = {}
        for name, raw in changes.items():
            kind = known[name]
            if kind == "bool":
                if not isinstance(raw, bool):
                    raise errors.ValidationError(f"{name} must be true or false.", field=name)
                values[name] = raw
            elif kind == "float":
                if isinstance(raw, bool) or not isinstance(raw, int | float):
                    raise errors.ValidationError(f"{name} must be a number.", field=name)
                values[name] = min(1.0, max(0.0, float(raw)))
            else:
                if isinstance(raw, bool) or not isinstance(raw, int):
                    raise errors.ValidationError(f"{name} must be an integer.", field=name)
                limit = TIMEOUT_MAX_MS if name != "latencyMs" else LATENCY_MAX_MS
                values[name] = min(limit, max(0, raw))
        return replace(self, **values)


GLOBAL_ONLY_KNOBS = frozenset(
    f.name for f in fields(FailureInjection) if f.name.startswith(("card", "webhook"))
)


def project_row_name(project_id: str) -> str:
    return PROJECT_ROW_PREFIX + hashlib.sha256(project_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Knobs:
    """Every row at once: the global knobs and each project's own."""

    global_: FailureInjection = field(default_factory=FailureInjection)
    projects: dict[str, FailureInjection] = field(default_factory=dict)


class FaultStore:
    """Read-through cache over the settings rows; a write here is seen at once by this process."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._cached: _Knobs | None = None
        self._cached_at_ms = 0
        # One read at a time: when the cache expires under load, concurrent callers share it
        # (measured: 1,000 concurrent node calls of a batch each opened a connection for it).
        self._loading: asyncio.Task[_Knobs] | None = None
        self._generation = 0  # a put or invalidate during a read wins over that read

    async def get(self) -> FailureInjection:
        """The knobs that apply now: the acting project's (see the module docstring)."""
        return await self.effective(ACTING_PROJECT.get())

    async def effective(self, project_id: str | None) -> FailureInjection:
        """A project's own knobs if it has any (card knobs always global), else the global."""
        knobs = await self._all()
        own = knobs.projects.get(project_id) if project_id is not None else None
        return knobs.global_ if own is None else own.with_global_knobs(knobs.global_)

    async def has_project_knobs(self) -> bool:
        """Whether any project has knobs of its own (else nobody needs to know whose job)."""
        return bool((await self._all()).projects)

    async def _all(self) -> _Knobs:
        now = self._clock.now_ms()
        if self._cached is not None and now - self._cached_at_ms < CACHE_TTL_MS:
            return self._cached
        loading = self._loading
        if (
            loading is None
            or loading.done()
            or loading.get_loop() is not asyncio.get_running_loop()
        ):
            self._loading = asyncio.create_task(self._load(now, self._generation))
        return await asyncio.shield(self._loading)

    async def _load(self, now: int, generation: int) -> _Knobs:
        S = sandbox_settings.c
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(S.name, S.value).where(
                        or_(S.name == SETTING_NAME, S.name.startswith(PROJECT_ROW_PREFIX))
                    )
                )
            ).all()
        value = _Knobs()
        for name, raw in rows:
            if name == SETTING_NAME:
                value = replace(value, global_=FailureInjection(**json.loads(raw)))
            else:
                stored = json.loads(raw)
                value.projects[stored["projectId"]] = FailureInjection(**stored["knobs"])
        if generation == self._generation:
            self._cached, self._cached_at_ms = value, now
        return value

    async def put(self, value: FailureInjection, project_id: str | None = None) -> FailureInjection:
        """Store the global knobs, or (project_id) that project's own."""
        now = self._clock.now_ms()
        if project_id is None:
            name, payload = SETTING_NAME, json.dumps(value.to_dict())
        else:
            name = project_row_name(project_id)
            payload = json.dumps({"projectId": project_id, "knobs": value.to_dict()})
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(sandbox_settings)
                .where(sandbox_settings.c.name == name)
                .values(value=payload, updated_at=now)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(sandbox_settings).values(name=name, value=payload, updated_at=now)
                )
        self.invalidate()
        return value

    async def clear(self, project_id: str) -> None:
        """The project's own knobs removed: the global ones apply to it again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(sandbox_settings).where(
                    sandbox_settings.c.name == project_row_name(project_id)
                )
            )
        self.invalidate()

    def invalidate(self) -> None:
        self._generation += 1
        self._cached = None


async def project_of_job(
    engine: AsyncEngine, faults: FaultStore, payload: dict[str, Any]
) -> str | None:
    """The project a payout job settles for, when some project has knobs of its own (else
    None, and no read: the global knobs apply to everyone)."""
    payout_id = payload.get("payoutId") or next(iter(payload.get("payoutIds") or ()), None)
    if not isinstance(payout_id, str) or not await faults.has_project_knobs():
        return None
    async with engine.connect() as conn:
        return await conn.scalar(select(payouts.c.project_id).where(payouts.c.id == payout_id))
