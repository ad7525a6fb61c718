"""Dashboard sign-in: server-side sessions behind an opaque cookie, and their CSRF tokens.

sign in   key → who (admin or one project) → random 256-bit token in an HttpOnly, SameSite=Strict
          cookie; the database keeps only sha256(token), the key's hash and a CSRF token.
request   token → row, alive (idle and absolute limits) and its key still valid → who.
sign out  the row is deleted: a copied cookie is worthless afterwards.

The key itself is never stored, rendered or put in a cookie. A project session ends when the
project's key changes; an admin session ends when PAYRAIL_ADMIN_KEY changes; an approver
key's session (services/project_keys.py: it sees its project and may approve or reject its
held payouts, nothing else) ends when that key is revoked.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from payrail.bootstrap import Runtime
from payrail.db.tables import dashboard_sessions, project_approver_keys, projects
from payrail.domain import errors
from payrail.services import project_keys
from payrail.services import projects as project_service
from payrail.services.projects import hash_key  # random tokens, like keys: sha256 suffices

S = dashboard_sessions.c

SESSION_IDLE_MS = 30 * 60_000  # a session unused this long is over
SESSION_MAX_MS = 12 * 3_600_000  # and none lives longer than this, used or not
SESSION_TOUCH_MS = 60_000  # last_seen_at is written at most this often (reads stay reads)
KEY_MAX_CHARS = 256
ACTOR_MAX_CHARS = 64
ACTOR_RE = re.compile(r"[A-Za-z0-9 _.@-]{1,64}")  # .fullmatch: no trailing "\n" slips by


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the admin (every project) or one project's key holder."""

    admin: bool
    project_id: str | None
    actor: str  # for the audit log: "dashboard:<name given at sign-in>"
    csrf_token: str
    approver_key_id: str | None = None  # signed in with one of its project's approver keys

    @property
    def approver(self) -> bool:
        return self.approver_key_id is not None

    @property
    def may_decide(self) -> bool:
        """May approve or reject held payouts (of its project, for an approver key)."""
        return self.admin or self.approver

    @property
    def decision_actor(self) -> str:
        """Who a decision names in the payout's history: the person and, for an approver
        key, the key first (a long name is what a bounded column cuts)."""
        if self.approver_key_id is None:
            return self.actor
        key = f"approver:{self.approver_key_id}"
        return f"dashboard:{key}" if self.actor == f"dashboard:{key}" else f"{key} ({self.actor})"

    @property
    def only_project(self) -> str | None:
        """The one project this viewer is limited to; None for the admin (every project)."""
        return None if self.admin else self.project_id

    def scope(self, project_id: str | None) -> str | None:
        """The project a page shows: the key's own; the admin may name one or none."""
        if not self.admin:
            if project_id not in (None, "", self.project_id):
                raise errors.Forbidden("This key cannot see that project.")
            return self.project_id
        return project_id or None


def parse_actor(raw: str | None) -> str:
    """The name an operator gives at sign-in (the admin key is shared: the name says who);
    "" when none was given: sign_in names the session after its key then."""
    name = (raw or "").strip(" ")  # only spaces: a "\n" or "\r" is refused, not trimmed
    if not name:
        return ""
    if not ACTOR_RE.fullmatch(name):
        raise errors.ValidationError(
            f"Your name may have up to {ACTOR_MAX_CHARS} letters, digits, spaces and . _ @ -",
            field="name",
        )
    return name


async def sign_in(rt: Runtime, key: str, actor: str) -> str:
    """Check the key and open a session; returns the cookie token (shown to no one else)."""
    if not key or len(key) > KEY_MAX_CHARS:
        raise errors.Unauthorized("That key is not an admin or project API key.")
    approver = None
    if hmac.compare_digest(key.encode(), rt.settings.admin_key.encode()):
        admin, project_id = True, None
    else:
        admin, project_id = False, await project_service.project_for_key(rt, key)
        if project_id is None:
            approver = await project_keys.approver_for_key_hash(rt, hash_key(key))
            if approver is None:
                raise errors.Unauthorized("That key is not an admin or project API key.")
            project_id = approver.project_id
    # No name given: the audit says which key acted, never "admin" for a project's key.
    if not actor:
        actor = "admin" if admin else f"project:{project_id}"
        if approver is not None:
            actor = f"approver:{approver.key_id}"
    token = secrets.token_urlsafe(32)
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await conn.execute(delete(dashboard_sessions).where(S.expires_at <= now))  # housekeeping
        await conn.execute(
            insert(dashboard_sessions).values(
                token_hash=hash_key(token),
                admin=admin,
                project_id=project_id,
                key_hash=hash_key(key),
                actor=actor[:ACTOR_MAX_CHARS],
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                last_seen_at=now,
                expires_at=now + SESSION_MAX_MS,
            )
        )
    return token


async def viewer_for(rt: Runtime, token: str | None) -> Viewer | None:
    """The session's viewer, or None when there is none, it expired or its key changed."""
    if not token or len(token) > 128:
        return None
    now = rt.clock.now_ms()
    token_hash = hash_key(token)
    async with rt.engine.connect() as conn:
        row = (
            (await conn.execute(select(dashboard_sessions).where(S.token_hash == token_hash)))
            .mappings()
            .first()
        )
        if row is None:
            return None
        approver_key_id = None
        if row["admin"]:
            key_ok = hmac.compare_digest(row["key_hash"], hash_key(rt.settings.admin_key))
        else:
            current = await conn.scalar(
                select(projects.c.api_key_hash).where(projects.c.id == row["project_id"])
            )
            key_ok = current is not None and hmac.compare_digest(row["key_hash"], current)
            if not key_ok:  # an approver key's session: while that key is not revoked
                AK = project_approver_keys.c
                approver_key_id = await conn.scalar(
                    select(AK.id).where(
                        AK.key_hash == row["key_hash"],
                        AK.project_id == row["project_id"],
                        AK.revoked_at.is_(None),
                    )
                )
                key_ok = approver_key_id is not None
    if not key_ok or now >= row["expires_at"] or now - row["last_seen_at"] >= SESSION_IDLE_MS:
        await sign_out(rt, token)
        return None
    if now - row["last_seen_at"] >= SESSION_TOUCH_MS:
        async with rt.engine.begin() as conn:
            await conn.execute(
                update(dashboard_sessions)
                .where(S.token_hash == token_hash)
                .values(last_seen_at=now)
            )
    return Viewer(
        admin=bool(row["admin"]),
        project_id=row["project_id"],
        actor="dashboard:" + row["actor"],
        csrf_token=row["csrf_token"],
        approver_key_id=approver_key_id,
    )


def csrf_ok(viewer: Viewer, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(viewer.csrf_token.encode(), given.encode())


async def sign_out(rt: Runtime, token: str) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(delete(dashboard_sessions).where(S.token_hash == hash_key(token)))
