"""A project's amount caps: read (the project or the admin) and set (the admin), audited.

`GET` / `PUT /api/v1/projects/{id}/limits` with any of perPayoutMaxSats,
perPlayerDailyMaxSats, projectDailyMaxSats, approvalAboveSats (sats, integers; null: no
cap). A PUT changes the fields it names and keeps the others; every change is one row of
project_limit_changes (who, the caps before and after, when) in the transaction that makes
it. The rules themselves are in domain/payout_engine.py (`_cap_refusal`), which reads the
row under the project account's lock, so a change applies to every payout reserved after
its commit.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.tables import project_limit_changes, project_limits, projects
from payrail.domain import errors
from payrail.domain.payout_engine import CAP_FIELDS, NO_CAPS, Caps
from payrail.support.clock import iso

CAP_MAX_SATS = 2_100_000_000_000_000  # every bitcoin there will ever be, in sats
HISTORY_MAX = 50
COLUMNS = dict(
    zip(
        CAP_FIELDS,
        (
            "per_payout_max_sats",
            "per_player_daily_max_sats",
            "project_daily_max_sats",
            "approval_above_sats",
        ),
        strict=True,
    )
)
L = project_limits.c


def parse_limits(body: Any) -> dict[str, int | None]:
    """{API name: value or None} of a PUT body: the fields it names."""
    if not isinstance(body, dict) or not body:
        raise errors.ValidationError(
            f"Send a JSON object with any of {', '.join(CAP_FIELDS)} (sats; null: no cap)."
        )
    unknown = sorted(set(body) - set(CAP_FIELDS))
    if unknown:
        raise errors.ValidationError(f"Unknown fields: {', '.join(unknown)}.", fields=unknown)
    changes: dict[str, int | None] = {}
    for name, value in body.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= CAP_MAX_SATS
        ):
            raise errors.ValidationError(
                f"{name} must be an integer number of sats from 0 to {CAP_MAX_SATS}, or null.",
                field=name,
            )
        changes[name] = value
    return changes


async def _exists(conn: AsyncConnection, project_id: str) -> None:
    found = await conn.scalar(select(projects.c.id).where(projects.c.id == project_id))
    if found is None:
        raise errors.ProjectNotFound(f"No project with id {project_id}.")


async def _caps(conn: AsyncConnection, project_id: str) -> Caps:
    row = (
        (await conn.execute(select(project_limits).where(L.project_id == project_id)))
        .mappings()
        .first()
    )
    if row is None:
        return NO_CAPS
    return Caps(*(row[column] for column in COLUMNS.values()))


async def view(rt: Runtime, project_id: str) -> dict[str, Any]:
    async with rt.engine.connect() as conn:
        await _exists(conn, project_id)
        caps = await _caps(conn, project_id)
        changes = await _history(conn, project_id)
    return {"projectId": project_id, **caps.view(), "changes": changes}


async def set_limits(
    rt: Runtime, project_id: str, changes: dict[str, int | None], actor: str
) -> dict[str, Any]:
    """Apply the named fields, audited in the same transaction."""
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await _exists(conn, project_id)
        # The project's row, locked: two concurrent PUTs apply one after the other, and
        # each audit row's "old" is what the other committed.
        await conn.execute(
            select(projects.c.id).where(projects.c.id == project_id).with_for_update()
        )
        old = await _caps(conn, project_id)
        new = Caps(**{COLUMNS[k]: v for k, v in (old.view() | changes).items()})
        values = {COLUMNS[k]: v for k, v in new.view().items()} | {"updated_at": now}
        done = await conn.execute(
            update(project_limits).where(L.project_id == project_id).values(**values)
        )
        if done.rowcount == 0:
            await conn.execute(insert(project_limits).values(project_id=project_id, **values))
        await conn.execute(
            insert(project_limit_changes).values(
                project_id=project_id,
                actor=actor[:120],
                old=json.dumps(old.view()),
                new=json.dumps(new.view()),
                at_ms=now,
            )
        )
    return await view(rt, project_id)


async def _history(conn: AsyncConnection, project_id: str) -> list[dict[str, Any]]:
    """The latest changes, newest first."""
    C = project_limit_changes.c
    rows = (
        await conn.execute(
            select(project_limit_changes)
            .where(C.project_id == project_id)
            .order_by(C.at_ms.desc(), C.id.desc())
            .limit(HISTORY_MAX)
        )
    ).mappings()
    return [
        {
            "actor": r["actor"],
            "old": json.loads(r["old"]) if r["old"] else None,
            "new": json.loads(r["new"]),
            "at": iso(r["at_ms"]),
        }
        for r in rows
    ]
