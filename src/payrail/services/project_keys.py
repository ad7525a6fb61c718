"""Project API keys: list projects (admin), rotate a project's key, and authenticate by key.

Rotation (`POST /api/v1/projects/{id}/keys`, admin): a new random key replaces the project's
key at once and is shown once. The key it replaces keeps working for a grace period
(`gracePeriodSeconds`, default `KEY_GRACE_DEFAULT_S`, 0 revokes it at once: the answer to a
leak), so clients can be moved without downtime. At most two keys work at any moment: a
rotation inside a grace period ends the older key's grace at once. Each rotation is audited
(project_key_events) in the transaction that makes it. A server process caches a key's
project for `auth.KEY_CACHE_TTL_MS` (5 s), so another process may accept an ended key for
up to that long; the process that rotates forgets its cache at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, update

from payrail.bootstrap import Runtime
from payrail.db import tables
from payrail.domain import errors
from payrail.services.pagination import newest_first
from payrail.services.projects import hash_key, project_view
from payrail.support.clock import iso

log = structlog.get_logger("payrail.services.project_keys")

KEY_GRACE_DEFAULT_S = 3_600  # an hour to roll the new key out to every client
KEY_GRACE_MAX_S = 7 * 24 * 3_600
REASON_MAX_CHARS = 200
HISTORY_MAX = 50
LIST_LIMIT_MAX = 100
LIST_LIMIT_DEFAULT = 50


@dataclass(frozen=True)
class Rotated:
    project_id: str
    api_key: str
    previous_expires_at_ms: int | None  # None: the old key stopped working at once


def new_api_key() -> str:
    return f"pk_{secrets.token_urlsafe(24)}"


def parse_rotation(body: Any) -> tuple[int, str | None]:
    """The grace period and the reason of a rotation request (an empty body: defaults)."""
    if body is None:
        return KEY_GRACE_DEFAULT_S, None
    if not isinstance(body, dict):
        raise errors.ValidationError("The body must be a JSON object or empty.")
    unknown = sorted(set(body) - {"gracePeriodSeconds", "reason", "role"})
    if unknown:
        raise errors.ValidationError(f"Unknown fields: {', '.join(unknown)}.", fields=unknown)
    grace = body.get("gracePeriodSeconds", KEY_GRACE_DEFAULT_S)
    if grace is None:
        grace = KEY_GRACE_DEFAULT_S
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= KEY_GRACE_MAX_S:
        raise errors.ValidationError(
            f"gracePeriodSeconds must be an integer from 0 to {KEY_GRACE_MAX_S}.",
            field="gracePeriodSeconds",
        )
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX_CHARS):
        raise errors.ValidationError(
            f"reason must be a string of at most {REASON_MAX_CHARS} characters.", field="reason"
        )
    return grace, reason


async def rotate(
    rt: Runtime, project_id: str, grace_s: int, actor: str, reason: str | None
) -> Rotated:
    """A new key for the project; the old one works for `grace_s` more seconds (0: none)."""
    now = rt.clock.now_ms()
    api_key = new_api_key()
    P, K = tables.projects.c, tables.project_previous_keys.c
    async with rt.engine.begin() as conn:
        old_hash = await conn.scalar(
            select(P.api_key_hash).where(P.id == project_id).with_for_update()
        )
        if old_hash is None:
            raise errors.ProjectNotFound(f"No project with id {project_id}.")
        await conn.execute(
            update(tables.projects).where(P.id == project_id).values(api_key_hash=hash_key(api_key))
        )
        # The key that was previous until now stops here: at most two keys work at once.
        await conn.execute(delete(tables.project_previous_keys).where(K.project_id == project_id))
        expires = now + grace_s * 1000 if grace_s else None
        if expires is not None:
            await conn.execute(
                insert(tables.project_previous_keys).values(
                    project_id=project_id, key_hash=old_hash, expires_at=expires
                )
            )
        await conn.execute(
            insert(tables.project_key_events).values(
                project_id=project_id,
                actor=actor[:120],
                reason=reason,
                grace_s=grace_s,
                previous_expires_at=expires,
                at_ms=now,
            )
        )
    log.info("project_key_rotated", project_id=project_id, grace_s=grace_s, actor=actor)
    return Rotated(project_id, api_key, expires)


async def project_for_previous_key(rt: Runtime, key_hash: str) -> str | None:
    """The project whose rotated-out key this is, while its grace period lasts."""
    K = tables.project_previous_keys.c
    async with rt.engine.connect() as conn:
        return await conn.scalar(
            select(K.project_id).where(K.key_hash == key_hash, K.expires_at > rt.clock.now_ms())
        )


async def key_history(rt: Runtime, project_id: str) -> list[dict[str, Any]]:
    E = tables.project_key_events.c
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(tables.project_key_events)
            .where(E.project_id == project_id)
            .order_by(E.at_ms.desc(), E.id.desc())
            .limit(HISTORY_MAX)
        )
        return [
            {
                "at": iso(r["at_ms"]),
                "actor": r["actor"],
                "reason": r["reason"],
                "gracePeriodSeconds": r["grace_s"],
                "previousKeyExpiresAt": iso(r["previous_expires_at"])
                if r["previous_expires_at"]
                else None,
            }
            for r in rows.mappings()
        ]


async def list_projects(
    rt: Runtime, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Projects newest first, each with its key's state (never a key or its hash)."""
    page, next_cursor = await newest_first(rt.engine, tables.projects, limit, cursor)
    ids = [row["id"] for row in page]
    K, E = tables.project_previous_keys.c, tables.project_key_events.c
    async with rt.engine.connect() as conn:
        grace = dict(
            (
                await conn.execute(
                    select(K.project_id, K.expires_at).where(
                        K.project_id.in_(ids), K.expires_at > rt.clock.now_ms()
                    )
                )
            ).all()
        )
        rotated = dict(
            (
                await conn.execute(
                    select(E.project_id, func.max(E.at_ms))
                    .where(E.project_id.in_(ids))
                    .group_by(E.project_id)
                )
            ).all()
        )
    views = []
    for row in page:
        view = project_view(row)
        view["keyRotatedAt"] = iso(rotated[row["id"]]) if row["id"] in rotated else None
        view["previousKeyExpiresAt"] = iso(grace[row["id"]]) if row["id"] in grace else None
        views.append(view)
    return views, next_cursor


async def previous_key_expiry(rt: Runtime, project_id: str) -> str | None:
    """Until when the project's rotated-out key still works (None: no such key now)."""
    K = tables.project_previous_keys.c
    async with rt.engine.connect() as conn:
        expires = await conn.scalar(
            select(K.expires_at).where(K.project_id == project_id, K.expires_at > rt.clock.now_ms())
        )
    return iso(expires) if expires is not None else None


# ---------------------------------------------------------------- approver keys
#
# A project key with the `approver` role (POST /projects/{id}/keys {"role": "approver"}): it
# may approve or reject the project's payouts held for approval (services/approvals.py), and
# read them; every other route refuses it (403). It sits beside the project's payout key,
# which it never replaces; a project may have several (one per person), each revoked alone.

ROLE_PROJECT = "project"  # the project's own key: payouts, links, reads (rotated above)
ROLE_APPROVER = "approver"
ROLES = (ROLE_PROJECT, ROLE_APPROVER)
LABEL_MAX_CHARS = 40
APPROVER_KEYS_MAX = 20  # live approver keys per project


@dataclass(frozen=True)
class ApproverKey:
    key_id: str
    project_id: str
    label: str | None

    @property
    def actor(self) -> str:
        """Who decided, as the payout's history and decidedBy name it."""
        named = f" ({self.label})" if self.label else ""
        return f"approver:{self.key_id}{named}"


@dataclass(frozen=True)
class CreatedApproverKey:
    key: ApproverKey
    api_key: str
    created_at_ms: int


def parse_role(body: Any) -> str:
    """The role a POST /projects/{id}/keys asks for: project (a rotation) unless it says."""
    role = body.get("role") if isinstance(body, dict) else None
    if role is None:
        return ROLE_PROJECT
    if role not in ROLES:
        raise errors.ValidationError(f"role must be one of {', '.join(ROLES)}.", field="role")
    return str(role)


def parse_approver_key(body: Any) -> str | None:
    """The label of a new approver key ({"role": "approver", "label": …})."""
    assert isinstance(body, dict)
    unknown = sorted(set(body) - {"role", "label"})
    if unknown:
        raise errors.ValidationError(
            f"Unknown fields for an approver key: {', '.join(unknown)}.", fields=unknown
        )
    label = body.get("label")
    if label is None:
        return None
    if (
        not isinstance(label, str)
        or not label.strip()
        or len(label) > LABEL_MAX_CHARS
        or any(ord(c) < 32 or ord(c) == 127 for c in label)
    ):
        raise errors.ValidationError(
            f"label must be 1-{LABEL_MAX_CHARS} characters, no control character.",
            field="label",
        )
    return label


def new_approver_key() -> str:
    return f"ak_{secrets.token_urlsafe(24)}"


async def create_approver_key(
    rt: Runtime, project_id: str, label: str | None, actor: str
) -> CreatedApproverKey:
    """A new approver key for the project, shown once; the project's other keys unchanged."""
    now = rt.clock.now_ms()
    api_key = new_approver_key()
    key_id = f"apk_{secrets.token_hex(8)}"
    P, AK = tables.projects.c, tables.project_approver_keys.c
    async with rt.engine.begin() as conn:
        found = await conn.scalar(select(P.id).where(P.id == project_id).with_for_update())
        if found is None:
            raise errors.ProjectNotFound(f"No project with id {project_id}.")
        live = await conn.scalar(
            select(func.count())
            .select_from(tables.project_approver_keys)
            .where(AK.project_id == project_id, AK.revoked_at.is_(None))
        )
        if live >= APPROVER_KEYS_MAX:
            raise errors.ValidationError(
                f"The project has {APPROVER_KEYS_MAX} approver keys already; revoke one first.",
                field="role",
            )
        await conn.execute(
            insert(tables.project_approver_keys).values(
                id=key_id,
                project_id=project_id,
                key_hash=hash_key(api_key),
                label=label,
                created_by=actor[:120],
                created_at=now,
                revoked_at=None,
            )
        )
    log.info("approver_key_created", project_id=project_id, key_id=key_id, actor=actor)
    return CreatedApproverKey(ApproverKey(key_id, project_id, label), api_key, now)


async def revoke_approver_key(rt: Runtime, project_id: str, key_id: str) -> dict[str, Any]:
    """The key stops working at once (in this process; others within their key cache's
    KEY_CACHE_TTL_MS). Revoked again: the same answer."""
    AK = tables.project_approver_keys.c
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(tables.project_approver_keys)
            .where(AK.id == key_id, AK.project_id == project_id, AK.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        row = (
            (
                await conn.execute(
                    select(tables.project_approver_keys).where(
                        AK.id == key_id, AK.project_id == project_id
                    )
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise errors.NotFound(f"No approver key {key_id} in project {project_id}.")
    log.info("approver_key_revoked", project_id=project_id, key_id=key_id)
    return approver_key_view(row)


def approver_key_view(row: Any) -> dict[str, Any]:
    return {
        "keyId": row["id"],
        "role": ROLE_APPROVER,
        "label": row["label"],
        "createdAt": iso(row["created_at"]),
        "createdBy": row["created_by"],
        "revokedAt": iso(row["revoked_at"]) if row["revoked_at"] else None,
    }


async def approver_keys(rt: Runtime, project_id: str) -> list[dict[str, Any]]:
    """The project's approver keys, newest first (never a key or its hash)."""
    AK = tables.project_approver_keys.c
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(tables.project_approver_keys)
            .where(AK.project_id == project_id)
            .order_by(AK.created_at.desc(), AK.id.desc())
            .limit(HISTORY_MAX)
        )
        return [approver_key_view(r) for r in rows.mappings()]


async def approver_for_key_hash(rt: Runtime, key_hash: str) -> ApproverKey | None:
    """The live approver key with this hash, if any."""
    AK = tables.project_approver_keys.c
    async with rt.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(AK.id, AK.project_id, AK.label).where(
                        AK.key_hash == key_hash, AK.revoked_at.is_(None)
                    )
                )
            )
            .mappings()
            .first()
        )
    return None if row is None else ApproverKey(row["id"], row["project_id"], row["label"])
