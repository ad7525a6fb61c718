"""Sandbox fault-injection settings, stored in the database so every process sees the same ones."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.db.tables import sandbox_settings
from payrail.domain import errors
from payrail.support.clock import Clock

SETTING_NAME = "failure_injection"
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


class FaultStore:
    """Read-through cache over the settings row; a write here is seen at once by this process."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._cached: FailureInjection | None = None
        self._cached_at_ms = 0
        # One read at a time: when the cache expires under load, concurrent callers share it
        # (measured: 1,000 concurrent node calls of a batch each opened a connection for it).
        self._loading: asyncio.Task[FailureInjection] | None = None
        self._generation = 0  # a put or invalidate during a read wins over that read

    async def get(self) -> FailureInjection:
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

    async def _load(self, now: int, generation: int) -> FailureInjection:
        async with self._engine.connect() as conn:
            raw = await conn.scalar(
                select(sandbox_settings.c.value).where(sandbox_settings.c.name == SETTING_NAME)
            )
        value = FailureInjection(**json.loads(raw)) if raw else FailureInjection()
        if generation == self._generation:
            self._cached, self._cached_at_ms = value, now
        return value

    async def put(self, value: FailureInjection) -> FailureInjection:
        now = self._clock.now_ms()
        payload = json.dumps(value.to_dict())
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(sandbox_settings)
                .where(sandbox_settings.c.name == SETTING_NAME)
                .values(value=payload, updated_at=now)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(sandbox_settings).values(
                        name=SETTING_NAME, value=payload, updated_at=now
                    )
                )
        self._generation += 1
        self._cached, self._cached_at_ms = value, now
        return value

    def invalidate(self) -> None:
        self._generation += 1
        self._cached = None
