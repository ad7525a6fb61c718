"""Feature flags with sticky percentage rollout and rollback guards. Pure rules, no I/O.

A project is on a flag's new path when the flag is enabled and either the project is on its
allow list or the project's bucket — a stable hash of (flag, project id) in 0..9999 — is below
rolloutPercent × 100. The bucket never changes, so raising the percentage only adds projects:
a project never flips back and forth between paths as a rollout grows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from payrail.domain import errors

BUCKETS = 10_000
ALLOW_MAX = 1_000
PROJECT_ID_MAX_CHARS = 64
WINDOW_MIN_S = 10
WINDOW_MAX_S = 86_400


@dataclass(frozen=True)
class FlagSpec:
    description: str
    new_path: str  # the settle_path value of payouts that took the new path
    old_path: str


SETTLEMENT_QUEUE_PATH = "settlement_queue_path"

# The flags payrail knows. A flag changes code paths, so an unknown name is a typo: 404.
KNOWN_FLAGS: dict[str, FlagSpec] = {
    SETTLEMENT_QUEUE_PATH: FlagSpec(
        "Settle payouts through the job queue (a worker calls the node) instead of inline in "
        "the API process; POST /payouts still waits up to the settle window for the outcome.",
        new_path="queue",
        old_path="inline",
    ),
}


def bucket(flag: str, project_id: str) -> int:
    """The project's fixed place in 0..9999 for this flag (sha256: same in every process)."""
    digest = hashlib.sha256(f"{flag}\x00{project_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Guards:
    """Conditions that turn the flag off by themselves (None: that guard is not set)."""

    min_success_rate: float | None = None  # payouts on the new path, over window_s
    min_samples: int = 20  # fewer final payouts in the window: too few to judge
    window_s: int = 300
    max_queue_depth: int | None = None  # due jobs
    max_lock_timeouts: int | None = None  # lock waits run out in window_s (per process)

    def to_dict(self) -> dict[str, Any]:
        return {
            "minSuccessRate": self.min_success_rate,
            "minSamples": self.min_samples,
            "windowS": self.window_s,
            "maxQueueDepth": self.max_queue_depth,
            "maxLockTimeouts": self.max_lock_timeouts,
        }

    @property
    def any(self) -> bool:
        return any(
            g is not None
            for g in (self.min_success_rate, self.max_queue_depth, self.max_lock_timeouts)
        )


@dataclass(frozen=True)
class Flag:
    name: str
    enabled: bool = False
    rollout_percent: int = 0
    allow: tuple[str, ...] = ()
    guards: Guards = field(default_factory=Guards)

    def on_for(self, project_id: str) -> bool:
        if not self.enabled:
            return False  # the kill switch: off is off for everyone, allow list included
        if project_id in self.allow:
            return True
        return bucket(self.name, project_id) < self.rollout_percent * (BUCKETS // 100)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "rolloutPercent": self.rollout_percent,
            "allow": list(self.allow),
            "guards": self.guards.to_dict(),
        }


def check_name(name: str) -> FlagSpec:
    spec = KNOWN_FLAGS.get(name)
    if spec is None:
        raise errors.FlagNotFound(f"No flag named {name!r}.", knownFlags=sorted(KNOWN_FLAGS))
    return spec


def _int(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise errors.ValidationError(f"{name} must be an integer from {low} to {high}.", field=name)
    return value


def _optional_int(value: Any, name: str, low: int, high: int) -> int | None:
    return None if value is None else _int(value, name, low, high)


def parse_guards(body: Any, current: Guards) -> Guards:
    if body is None:
        return Guards()
    if not isinstance(body, dict):
        raise errors.ValidationError("guards must be an object.", field="guards")
    known = set(current.to_dict())
    unknown = sorted(set(body) - known)
    if unknown:
        raise errors.ValidationError(
            f"Unknown guard fields: {', '.join(unknown)}.",
            field="guards",
            knownGuards=sorted(known),
        )
    rate = body.get("minSuccessRate", current.min_success_rate)
    if rate is not None and (
        not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1
    ):
        raise errors.ValidationError("minSuccessRate must be a number from 0 to 1.", field="guards")
    return Guards(
        min_success_rate=None if rate is None else float(rate),
        min_samples=_int(body.get("minSamples", current.min_samples), "minSamples", 1, 100_000),
        window_s=_int(body.get("windowS", current.window_s), "windowS", WINDOW_MIN_S, WINDOW_MAX_S),
        max_queue_depth=_optional_int(
            body.get("maxQueueDepth", current.max_queue_depth), "maxQueueDepth", 0, 10**9
        ),
        max_lock_timeouts=_optional_int(
            body.get("maxLockTimeouts", current.max_lock_timeouts), "maxLockTimeouts", 0, 10**9
        ),
    )


def parse_update(current: Flag, body: Any) -> Flag:
    """A PUT body: fields given replace the current ones; fields left out are kept."""
    if not isinstance(body, dict):
        raise errors.ValidationError(
            "Request body must be a JSON object: {enabled, rolloutPercent, allow, guards}."
        )
    unknown = sorted(set(body) - {"enabled", "rolloutPercent", "allow", "guards", "reason"})
    if unknown:
        raise errors.ValidationError(f"Unknown fields: {', '.join(unknown)}.")
    updated = current
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise errors.ValidationError("enabled must be true or false.", field="enabled")
        updated = replace(updated, enabled=body["enabled"])
    if "rolloutPercent" in body:
        updated = replace(
            updated, rollout_percent=_int(body["rolloutPercent"], "rolloutPercent", 0, 100)
        )
    if "allow" in body:
        allow = body["allow"]
        if (
            not isinstance(allow, list)
            or len(allow) > ALLOW_MAX
            or not all(isinstance(p, str) and 0 < len(p) <= PROJECT_ID_MAX_CHARS for p in allow)
        ):
            raise errors.ValidationError(
                f"allow must be a list of at most {ALLOW_MAX} project ids.", field="allow"
            )
        updated = replace(updated, allow=tuple(dict.fromkeys(allow)))
    if "guards" in body:
        updated = replace(updated, guards=parse_guards(body["guards"], current.guards))
    return updated
