"""The recipient guard's per-project settings (the rules themselves: domain/payout_engine.py).

Two rules, per project and recipient, the recipient being its gamertag compared without case
("Ratey", "RATEY" and "ratey" are one player):

- the rate limit: at most `rate_limit_per_hour` payouts in a rolling hour (429
  RATE_LIMIT_EXCEEDED);
- anti-fraud: `failures_max` failed payouts within `failure_window_s` block the recipient for
  `block_s` from the last of them (429 RECIPIENT_TEMPORARILY_BLOCKED). A studio whose players
  keep feeding it unpayable destinations stops paying them for a while instead of paying fees
  and node time on each retry. Server defaults come from PAYRAIL_RECIPIENT_*; a project may
  override each (PUT /projects/{id}/recipient-guard).

Both answers carry `retryAfter` in seconds. The payout engine decides them under the
project account's row lock, so counts are exact under concurrency.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.config import Settings
from payrail.db.tables import projects
from payrail.domain import errors
from payrail.domain.payout_engine import POLICY_FAILURES_MAX, POLICY_SECONDS_MAX, Policy, policy

# Bounds of a project's overrides (and of the PAYRAIL_RECIPIENT_* settings).
FAILURES_MAX_LIMIT = POLICY_FAILURES_MAX
SECONDS_LIMIT = POLICY_SECONDS_MAX
OVERRIDE_FIELDS = {
    "failuresMax": ("recipient_failures_max", 0, FAILURES_MAX_LIMIT),
    "failureWindowS": ("recipient_failure_window_s", 1, SECONDS_LIMIT),
    "blockS": ("recipient_block_s", 1, SECONDS_LIMIT),
}


def _policy(settings: Settings, row: Any) -> Policy:
    defaults = Policy(
        settings.recipient_failures_max,
        settings.recipient_failure_window_s,
        settings.recipient_block_s,
    )
    columns = [column for column, _, _ in OVERRIDE_FIELDS.values()]
    return policy(defaults, [None if row is None else row[c] for c in columns])


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
