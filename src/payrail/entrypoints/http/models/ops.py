"""The operator routes' contract: callbacks, admin (reconciliation, flags), health, sandbox."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from payrail.entrypoints.http.models import Model, StrictBody


class Callback(Model):
    id: str
    event: str
    payoutId: str
    projectId: str
    sequence: int
    url: str
    status: str = Field(description="pending, delivered or dead")
    attempts: int
    attemptsMax: int
    lastStatusCode: int | None
    lastError: str | None
    createdAt: str | None
    lastAttemptAt: str | None
    nextAttemptAt: str | None
    deliveredAt: str | None
    payload: dict[str, Any]


class CallbackPage(Model):
    callbacks: list[Callback]
    count: int
    nextCursor: str | None
    hasMore: bool


class Discrepancy(Model):
    kind: str
    detail: str
    ids: list[str]


class Reconciliation(Model):
    clean: bool
    payoutsChecked: int
    ordersChecked: int
    counts: dict[str, int]
    discrepancies: list[Discrepancy]


class Flag(Model):
    name: str
    enabled: bool
    rolloutPercent: int
    allow: list[str]
    guards: dict[str, Any]


class FlagList(Model):
    flags: list[Flag]
    count: int


class FlagDetail(Flag):
    history: list[dict[str, Any]]


class FlagUpdated(Flag):
    previous: Flag


class FlagChange(StrictBody):
    enabled: bool | None = None
    rolloutPercent: int | None = Field(None, ge=0, le=100)
    allow: list[str] | None = None
    guards: dict[str, Any] | None = None
    reason: str | None = None


class Statuses(Model):
    statuses: list[str]
    descriptions: dict[str, str]


class Health(Model):
    status: str = Field(description="healthy or unhealthy (503)")
    database: str
    mode: str
    version: str


class Readiness(Model):
    status: str = Field(description="ready, or what is missing (503)")
    checks: dict[str, Any]


class NotReadyEnvelope(Model):
    """503 from /ready and /health: the same data as the 200, with success false."""

    success: bool
    message: str
    data: dict[str, Any]


class FailureInjection(Model):
    enabled: bool
    timeoutRate: float
    rollbackOnTimeout: bool
    failureRate: float
    ambiguousRate: float
    latencyMs: int
    timeoutMs: int
    ambiguousSettleMs: int


class FailureInjectionChange(StrictBody):
    """Any subset of the knobs of the answer; rates are clamped to [0, 1], durations to their
    limits (so an out-of-range number is not refused)."""

    enabled: bool = Field(None)  # absent: unchanged (null is refused)
    timeoutRate: float = Field(None)
    rollbackOnTimeout: bool = Field(None)
    failureRate: float = Field(None)
    ambiguousRate: float = Field(None)
    latencyMs: int = Field(None)


class CallbackLog(Model):
    callbacks: list[dict[str, Any]]
    count: int
