"""Recipient directory use cases: register, look up, list, remove; each change audited.

change   tx: upsert/delete recipients + recipient_changes (who, when, old → new)  COMMIT

The directory says where a project's gamertag is paid. It is read before a payout's
reservation (services/destinations.py), never inside it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.bulk import InList
from payrail.db.tables import recipient_changes, recipients
from payrail.domain import errors
from payrail.domain.recipients import FIELD_OF, RecipientChange, gamertag_key
from payrail.services import pagination, projects
from payrail.support.clock import iso

R = recipients.c
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
HISTORY_MAX = 200


@dataclass(frozen=True)
class Upserted:
    row: RowMapping
    created: bool


def view(row: RowMapping) -> dict[str, Any]:
    """The public recipient object: the gamertag as first registered, and its destination."""
    data: dict[str, Any] = {
        "id": row["id"],
        "projectId": row["project_id"],
        "gamertag": row["gamertag"],
        "kind": row["kind"],
        "suspended": row["suspended"],
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
    }
    for kind, field in FIELD_OF.items():
        data[field] = row["destination"] if row["kind"] == kind.value else None
    return data


def _audited(row: RowMapping | None) -> str | None:
    if row is None:
        return None
    return json.dumps(
        {
            "gamertag": row["gamertag"],
            "kind": row["kind"],
            "destination": row["destination"],
            "suspended": row["suspended"],
        },
        sort_keys=True,
    )


async def _load(conn: AsyncConnection, project_id: str, gamertag: str) -> RowMapping | None:
    query = select(recipients).where(
        R.project_id == project_id, R.gamertag_key == gamertag_key(gamertag)
    )
    return (await conn.execute(query)).mappings().first()


async def find(rt: Runtime, project_id: str, gamertag: str) -> RowMapping | None:
    """The recipient registered for this gamertag (any case), or None."""
    async with rt.engine.connect() as conn:
        return await _load(conn, project_id, gamertag)


async def find_many(rt: Runtime, project_id: str, gamertags: list[str]) -> dict[str, RowMapping]:
    """The recipients registered for these gamertags, by gamertag_key, in one read (a batch)."""
    keys = sorted({gamertag_key(g) for g in gamertags})
    if not keys:
        return {}
    async with rt.engine.connect() as conn:
        rows = await conn.execute(_BY_KEYS, {"b_project": project_id, "b_keys": keys})
        return {row["gamertag_key"]: row for row in rows.mappings()}


_BY_KEYS = select(recipients).where(
    R.project_id == bindparam("b_project"), InList(R.gamertag_key, "b_keys")
)


async def get(rt: Runtime, project_id: str, gamertag: str) -> RowMapping:
    row = await find(rt, project_id, gamertag)
    if row is None:
        raise errors.RecipientNotFound(
            f"No recipient {gamertag} in project {project_id}; register one with "
            f"PUT /api/v1/recipients/{gamertag}.",
            gamertag=gamertag,
        )
    return row


async def _record(
    conn: AsyncConnection,
    project_id: str,
    gamertag: str,
    action: str,
    actor: str,
    old: RowMapping | None,
    new: RowMapping | None,
    now: int,
) -> None:
    await conn.execute(
        insert(recipient_changes).values(
            project_id=project_id,
            gamertag_key=gamertag_key(gamertag),
            action=action,
            actor=actor,
            old=_audited(old),
            new=_audited(new),
            at_ms=now,
        )
    )


async def upsert(
    rt: Runtime, project_id: str, gamertag: str, change: RecipientChange, actor: str
) -> Upserted:
    """Register or replace where this gamertag is paid. The change and its audit row commit
    together."""
    await projects.get_project(rt, project_id)  # 404 for a project that does not exist
    for _ in range(2):  # a concurrent first registration may win the insert: then update it
        now = rt.clock.now_ms()
        try:
            async with rt.engine.begin() as conn:
                old = await _load(conn, project_id, gamertag)
                values = dict(
                    kind=change.kind.value,
                    destination=change.destination,
                    suspended=change.suspended,
                    updated_at=now,
                )
                if old is None:
                    await conn.execute(
                        insert(recipients),
                        dict(
                            id=str(uuid.uuid4()),
                            project_id=project_id,
                            gamertag=gamertag,
                            gamertag_key=gamertag_key(gamertag),
                            created_at=now,
                            **values,
                        ),
                    )
                else:
                    await conn.execute(update(recipients).where(R.id == old["id"]).values(values))
                new = await _load(conn, project_id, gamertag)
                await _record(
                    conn,
                    project_id,
                    gamertag,
                    "created" if old is None else "updated",
                    actor,
                    old,
                    new,
                    now,
                )
        except IntegrityError:
            continue
        assert new is not None
        return Upserted(new, created=old is None)
    raise errors.ServiceUnavailable("The recipient changed concurrently; retry.")


async def remove(rt: Runtime, project_id: str, gamertag: str, actor: str) -> RowMapping:
    """Delete a recipient; payouts already reserved keep the invoice they were given."""
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        old = await _load(conn, project_id, gamertag)
        if old is not None:
            await conn.execute(delete(recipients).where(R.id == old["id"]))
            await _record(conn, project_id, gamertag, "deleted", actor, old, None, now)
    if old is None:
        await get(rt, project_id, gamertag)  # raises RECIPIENT_NOT_FOUND
    assert old is not None
    return old


async def list_recipients(
    rt: Runtime, project_id: str | None, limit: int = LIST_LIMIT_DEFAULT, cursor: str | None = None
) -> tuple[list[RowMapping], str | None]:
    """Newest first, with the same (created_at, id) cursor as every other list."""
    where = [] if project_id is None else [R.project_id == project_id]
    return await pagination.newest_first(rt.engine, recipients, limit, cursor, *where)


async def changes(rt: Runtime, project_id: str, gamertag: str) -> list[dict[str, Any]]:
    """The audit trail of one gamertag's directory entry, oldest first."""
    C = recipient_changes.c
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(recipient_changes)
            .where(C.project_id == project_id, C.gamertag_key == gamertag_key(gamertag))
            .order_by(C.at_ms, C.id)
            .limit(HISTORY_MAX)
        )
        return [
            {
                "action": r["action"],
                "actor": r["actor"],
                "old": json.loads(r["old"]) if r["old"] else None,
                "new": json.loads(r["new"]) if r["new"] else None,
                "at": iso(r["at_ms"]),
            }
            for r in rows.mappings()
        ]
