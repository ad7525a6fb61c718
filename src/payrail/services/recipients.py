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
# A PUT may lose twice to concurrent writers of the same gamertag (a first registration, then
# a delete of it); each loss is retried from a fresh read rather than answered with a 500.
UPSERT_ATTEMPTS_MAX = 3


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
        "playerId": row["player_id"],
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
            "playerId": row["player_id"],
        },
        sort_keys=True,
    )


async def _load(
    conn: AsyncConnection, project_id: str, gamertag: str, *, lock: bool = False
) -> RowMapping | None:
    """The entry; with `lock` (inside a change's transaction) its row is locked on PostgreSQL,
    so a concurrent PUT or DELETE waits and then sees this change. SQLite has one writer."""
    query = select(recipients).where(
        R.project_id == project_id, R.gamertag_key == gamertag_key(gamertag)
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
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
        raise _not_found(project_id, gamertag)
    return row


def _not_found(project_id: str, gamertag: str) -> errors.RecipientNotFound:
    return errors.RecipientNotFound(
        f"No recipient {gamertag} in project {project_id}; register one with "
        f"PUT /api/v1/recipients/{gamertag}.",
        gamertag=gamertag,
    )


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
    for _ in range(UPSERT_ATTEMPTS_MAX):
        try:
            async with rt.engine.begin() as conn:
                old = await _load(conn, project_id, gamertag, lock=True)
                now = rt.clock.now_ms()  # once the row is ours: changes are dated in order
                values = dict(
                    kind=change.kind.value,
                    destination=change.destination,
                    suspended=change.suspended,
                    player_id=change.player_id,
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
                    updated = await conn.execute(
                        update(recipients).where(R.id == old["id"]).values(values)
                    )
                    if updated.rowcount != 1:  # deleted since it was read: register it anew
                        raise _LostRace
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
        except (IntegrityError, _LostRace):
            # A concurrent first registration won the insert (then update it), or a delete
            # removed the row read (then insert it): either way, again from a fresh read.
            continue
        if new is None:  # cannot be once the row is ours, but a 503 is the honest answer
            break
        return Upserted(new, created=old is None)
    raise errors.ServiceUnavailable("The recipient changed concurrently; retry.")


class _LostRace(Exception):
    """The row a change read is gone: its transaction rolls back and the change is retried."""


async def remove(rt: Runtime, project_id: str, gamertag: str, actor: str) -> RowMapping:
    """Delete a recipient; payouts already reserved keep the invoice they were given."""
    async with rt.engine.begin() as conn:
        old = await _load(conn, project_id, gamertag, lock=True)
        now = rt.clock.now_ms()
        deleted = 0
        if old is not None:
            deleted = (await conn.execute(delete(recipients).where(R.id == old["id"]))).rowcount
        if deleted == 1:
            await _record(conn, project_id, gamertag, "deleted", actor, old, None, now)
    if old is None or deleted != 1:
        # Absent when this transaction looked: a 404, even if a PUT registers it a moment
        # later. (A second lookup here, outside the transaction, could find that PUT's row:
        # that was the AssertionError, a 500, of a DELETE racing a PUT.)
        raise _not_found(project_id, gamertag)
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
