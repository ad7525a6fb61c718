"""Per-project webhook signing secrets: create, rotate with a grace period, the active set.

A rotation keeps the previous secret signing alongside the new one (two v1= entries) until
its grace period ends, so a studio can deploy the new secret without rejecting callbacks.
Rotating again inside a grace period ends the older grace at once: at most two secrets
ever sign, and a rotation after a leak can use a zero grace.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.tables import projects, webhook_secrets
from payrail.domain import errors

W = webhook_secrets.c
SECRET_PREFIX = "whsec_"
SECRETS_ACTIVE_MAX = 2  # the current one and, during a grace period, the one before
GRACE_MAX_S = 30 * 86_400


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


async def add_secret(
    conn: AsyncConnection, project_id: str, now_ms: int, secret: str | None = None
) -> str:
    """Store a new current secret for the project (in the caller's transaction)."""
    secret = secret or new_secret()
    await conn.execute(
        insert(webhook_secrets).values(
            id=str(uuid.uuid4()), project_id=project_id, secret=secret, created_at=now_ms
        )
    )
    return secret


async def ensure_secret(conn: AsyncConnection, project_id: str, secret: str, now_ms: int) -> None:
    """Give a project `secret` if it has never had one (the sandbox project's documented one)."""
    has_one = await conn.scalar(select(W.id).where(W.project_id == project_id).limit(1))
    if has_one is None:
        await add_secret(conn, project_id, now_ms, secret)


async def active_secrets(conn: AsyncConnection, project_id: str, now_ms: int) -> list[str]:
    """The secrets that sign a callback sent now, newest first."""
    rows = await conn.execute(
        select(W.secret)
        .where(W.project_id == project_id, or_(W.expires_at.is_(None), W.expires_at > now_ms))
        .order_by(W.expires_at.is_(None).desc(), W.created_at.desc())
        .limit(SECRETS_ACTIVE_MAX)
    )
    return list(rows.scalars())


@dataclass(frozen=True)
class Rotation:
    project_id: str
    secret: str
    previous_expires_at_ms: int | None


async def rotate(conn: AsyncConnection, project_id: str, now_ms: int, grace_s: int) -> Rotation:
    """New current secret; the previous one signs too until now + grace_s."""
    if not 0 <= grace_s <= GRACE_MAX_S:
        raise errors.ValidationError(
            f"gracePeriodSeconds must be from 0 to {GRACE_MAX_S}.", field="gracePeriodSeconds"
        )
    # The project row lock serialises concurrent rotations: one current secret at a time.
    exists = await conn.scalar(
        select(projects.c.id).where(projects.c.id == project_id).with_for_update()
    )
    if exists is None:
        raise errors.ProjectNotFound(f"No project with id {project_id}.")
    # Secrets already in a grace period stop now; the current one enters its grace.
    await conn.execute(
        update(webhook_secrets)
        .where(W.project_id == project_id, W.expires_at.is_not(None), W.expires_at > now_ms)
        .values(expires_at=now_ms)
    )
    expires_at = now_ms + grace_s * 1000
    result = await conn.execute(
        update(webhook_secrets)
        .where(and_(W.project_id == project_id, W.expires_at.is_(None)))
        .values(expires_at=expires_at)
    )
    secret = await add_secret(conn, project_id, now_ms)
    return Rotation(project_id, secret, expires_at if result.rowcount else None)


def parse_rotation(body: Any, default_grace_s: int) -> int:
    """The grace period of a rotation: the body's gracePeriodSeconds, else the setting."""
    grace = body.get("gracePeriodSeconds") if isinstance(body, dict) else None
    if grace is None:
        return default_grace_s
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= GRACE_MAX_S:
        raise errors.ValidationError(
            f"gracePeriodSeconds must be an integer from 0 to {GRACE_MAX_S}.",
            field="gracePeriodSeconds",
        )
    return grace


async def rotate_project_secret(rt: Runtime, project_id: str, grace_s: int) -> Rotation:
    async with rt.engine.begin() as conn:
        return await rotate(conn, project_id, rt.clock.now_ms(), grace_s)
