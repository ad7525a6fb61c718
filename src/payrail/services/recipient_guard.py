"""The recipient guard: who may be paid right now, checked inside the reservation transaction.

Two rules, per project and recipient, the recipient being its gamertag compared without case
("Ratey", "RATEY" and "ratey" are one player):

- the rate limit: at most `rate_limit_per_hour` payouts in a rolling hour (429
  RATE_LIMIT_EXCEEDED);
- anti-fraud: `failures_max` failed payouts within `failure_window_s` block the recipient for
  `block_s` from the last of them (429 RECIPIENT_TEMPORARILY_BLOCKED). A studio whose players
  keep feeding it unpayable destinations stops paying them for a while instead of paying fees
  and node time on each retry. Server defaults come from PAYRAIL_RECIPIENT_*; a project may
  override each (PUT /projects/{id}/recipient-guard).

Both answers carry `retryAfter` in seconds. The caller holds the (project, recipient) lock
(payouts._lock_gamertag with `recipient_key`), so counts are exact under concurrency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.config import Settings
from payrail.db.bulk import InList
from payrail.db.tables import payouts, projects
from payrail.domain import errors
from payrail.domain.payouts import State

P = payouts.c
RATE_WINDOW_MS = 3_600_000
FAILURES_SCAN_MAX = 200  # failed payouts read per check; more would already have blocked
# A failure counts when its payout was created within this long before the window: a payout
# ends at most a day after it was created in practice, and the index is on created_at.
FAILURE_LOOKBACK_MS = 86_400_000
# Bounds of a project's overrides (and of the PAYRAIL_RECIPIENT_* settings).
FAILURES_MAX_LIMIT = 1_000
SECONDS_LIMIT = 86_400
OVERRIDE_FIELDS = {
    "failuresMax": ("recipient_failures_max", 0, FAILURES_MAX_LIMIT),
    "failureWindowS": ("recipient_failure_window_s", 1, SECONDS_LIMIT),
    "blockS": ("recipient_block_s", 1, SECONDS_LIMIT),
}


def recipient_key(gamertag: str) -> str:
    """One spelling per recipient (gamertags are ASCII, so lower() is the whole folding)."""
    return gamertag.lower()


@dataclass(frozen=True)
class Policy:
    failures_max: int  # 0: the block is off
    failure_window_s: int
    block_s: int

    def view(self) -> dict[str, int]:
        return {
            "failuresMax": self.failures_max,
            "failureWindowS": self.failure_window_s,
            "blockS": self.block_s,
        }


def _policy(settings: Settings, row: Any) -> Policy:
    def pick(column: str, default: int) -> int:
        value = row[column] if row is not None else None
        return default if value is None else int(value)

    return Policy(
        pick("recipient_failures_max", settings.recipient_failures_max),
        pick("recipient_failure_window_s", settings.recipient_failure_window_s),
        pick("recipient_block_s", settings.recipient_block_s),
    )


async def policy_for(conn: AsyncConnection, settings: Settings, project_id: str) -> Policy:
    row = (
        (
            await conn.execute(
                select(
                    projects.c.recipient_failures_max,
                    projects.c.recipient_failure_window_s,
                    projects.c.recipient_block_s,
                ).where(projects.c.id == project_id)
            )
        )
        .mappings()
        .first()
    )
    return _policy(settings, row)


def blocked_until_ms(failed_at_ms: list[int], policy: Policy) -> int | None:
    """When the block that `failed_at_ms` (ascending) started ends, or None for no block.

    Any `failures_max` failures within the window start a block at the last of them.
    """
    k = policy.failures_max
    if k <= 0 or len(failed_at_ms) < k:
        return None
    window_ms, until = policy.failure_window_s * 1000, None
    for i in range(k - 1, len(failed_at_ms)):
        if failed_at_ms[i] - failed_at_ms[i - k + 1] <= window_ms:
            until = failed_at_ms[i] + policy.block_s * 1000
    return until


def _retry_after_s(wait_ms: int) -> int:
    return max(1, math.ceil(wait_ms / 1000))


async def check(
    conn: AsyncConnection, settings: Settings, project_id: str, gamertag: str, now_ms: int
) -> None:
    """Raise the 429 this payout would break, if any: the block first, then the rate limit."""
    blocked = await block_refusal(conn, settings, project_id, gamertag, now_ms)
    if blocked is not None:
        raise blocked
    limit = settings.rate_limit_per_hour
    # The limit-th newest payout in the window: when it leaves the window, a slot frees.
    oldest_counted = await conn.scalar(
        select(P.created_at)
        .where(*_mine(project_id, gamertag), P.created_at > now_ms - RATE_WINDOW_MS)
        .order_by(P.created_at.desc())
        .offset(limit - 1)
        .limit(1)
    )
    refusal = rate_refusal(limit, oldest_counted, now_ms)
    if refusal is not None:
        raise refusal


def _mine(project_id: str, gamertag: str) -> tuple[Any, Any]:
    return (P.project_id == project_id, func.lower(P.gamertag) == recipient_key(gamertag))


async def block_refusal(
    conn: AsyncConnection, settings: Settings, project_id: str, gamertag: str, now_ms: int
) -> errors.RecipientTemporarilyBlocked | None:
    """The failed-payout block of this recipient, if it is on now (single and batch)."""
    policy = await policy_for(conn, settings, project_id)
    if policy.failures_max <= 0:
        return None
    horizon_ms = now_ms - (policy.failure_window_s + policy.block_s) * 1000
    failed_at = list(
        await conn.scalars(
            select(P.updated_at)
            .where(
                *_mine(project_id, gamertag),
                P.created_at > horizon_ms - FAILURE_LOOKBACK_MS,
                P.state == State.FAILED.value,
                P.updated_at > horizon_ms,
            )
            .order_by(P.updated_at.desc())
            .limit(FAILURES_SCAN_MAX)
        )
    )
    until = blocked_until_ms(sorted(failed_at), policy)
    if until is None or until <= now_ms:
        return None
    return blocked_error(gamertag, until, policy.failures_max, policy.failure_window_s, now_ms)


_KEY = func.lower(P.gamertag)
_FAILED_AMONG = select(_KEY, P.updated_at).where(
    P.project_id == bindparam("b_project"),
    InList(_KEY, "b_keys"),
    P.created_at > bindparam("b_created_after"),
    P.state == State.FAILED.value,
    P.updated_at > bindparam("b_updated_after"),
)


async def block_refusals(
    conn: AsyncConnection, settings: Settings, project_id: str, gamertags: list[str], now_ms: int
) -> dict[str, errors.RecipientTemporarilyBlocked]:
    """block_refusal for many recipients of one project (a batch) in two reads: the blocked
    ones, by recipient_key (the message names the gamertag as first given)."""
    policy = await policy_for(conn, settings, project_id)
    if policy.failures_max <= 0 or not gamertags:
        return {}
    spelled = {recipient_key(g): g for g in reversed(gamertags)}
    horizon_ms = now_ms - (policy.failure_window_s + policy.block_s) * 1000
    params = {
        "b_project": project_id,
        "b_keys": sorted(spelled),
        "b_created_after": horizon_ms - FAILURE_LOOKBACK_MS,
        "b_updated_after": horizon_ms,
    }
    rows = await conn.execute(_FAILED_AMONG, params)
    failed: dict[str, list[int]] = {}
    for recipient, updated_at in rows:
        failed.setdefault(recipient, []).append(updated_at)
    refusals = {}
    for recipient, times in failed.items():
        # The single check reads the newest FAILURES_SCAN_MAX; the same ones here.
        until = blocked_until_ms(sorted(times)[-FAILURES_SCAN_MAX:], policy)
        if until is not None and until > now_ms:
            refusals[recipient] = blocked_error(
                spelled[recipient], until, policy.failures_max, policy.failure_window_s, now_ms
            )
    return refusals


def blocked_error(
    gamertag: str, until_ms: int, failures_max: int, failure_window_s: int, now_ms: int
) -> errors.RecipientTemporarilyBlocked:
    """The 429 of a block that lasts until `until_ms` (general path and hot path)."""
    retry_after_s = _retry_after_s(until_ms - now_ms)
    return errors.RecipientTemporarilyBlocked(
        f"Payouts to gamertag {gamertag} are blocked for {retry_after_s} s: "
        f"{failures_max} payouts to it failed within "
        f"{failure_window_s} s. Check the recipient before retrying.",
        retryAfter=retry_after_s,
        failuresMax=failures_max,
    )


def rate_refusal(
    limit: int, oldest_counted: int | None, now_ms: int
) -> errors.RateLimitExceeded | None:
    """The rate limit's rule (single and batch): refused while the limit-th newest payout to
    the recipient is still in the window; the answer says when that one leaves it."""
    if oldest_counted is None:
        return None
    # A concurrent request may have stamped created_at a moment after our `now`: clamp to
    # the window so the answer never exceeds it.
    retry_after_s = _retry_after_s(min(RATE_WINDOW_MS, oldest_counted + RATE_WINDOW_MS - now_ms))
    return errors.RateLimitExceeded(
        f"Maximum {limit} payouts per gamertag per hour (gamertags count whatever their "
        f"case); retry in {retry_after_s} s.",
        retryAfter=retry_after_s,
        limit=limit,
    )


# ---------------------------------------------------------------- per-project overrides


def parse_overrides(body: object) -> dict[str, int | None]:
    """{column: value or None} from a PUT body; null resets a field to the server default."""
    if not isinstance(body, dict) or not body:
        raise errors.ValidationError(
            "Send a JSON object with any of failuresMax, failureWindowS, blockS (null: default)."
        )
    unknown = sorted(set(body) - set(OVERRIDE_FIELDS))
    if unknown:
        raise errors.ValidationError(f"Unknown fields: {', '.join(unknown)}.", fields=unknown)
    changes: dict[str, int | None] = {}
    for name, value in body.items():
        column, low, high = OVERRIDE_FIELDS[name]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise errors.ValidationError(
                f"{name} must be an integer from {low} to {high}, or null.", field=name
            )
        changes[column] = value
    return changes


async def set_overrides(
    conn: AsyncConnection, settings: Settings, project_id: str, changes: dict[str, int | None]
) -> dict[str, Any]:
    done = await conn.execute(update(projects).where(projects.c.id == project_id).values(**changes))
    if done.rowcount == 0:
        raise errors.ProjectNotFound(f"No project with id {project_id}.")
    return await view(conn, settings, project_id)


async def view(conn: AsyncConnection, settings: Settings, project_id: str) -> dict[str, Any]:
    """The project's effective policy, its own overrides and the server defaults."""
    row = (
        (await conn.execute(select(projects).where(projects.c.id == project_id))).mappings().first()
    )
    if row is None:
        raise errors.ProjectNotFound(f"No project with id {project_id}.")
    return {
        "projectId": project_id,
        "effective": _policy(settings, row).view(),
        "overrides": {name: row[column] for name, (column, _, _) in OVERRIDE_FIELDS.items()},
        "defaults": _policy(settings, None).view(),
        "rateLimitPerHour": settings.rate_limit_per_hour,
    }
