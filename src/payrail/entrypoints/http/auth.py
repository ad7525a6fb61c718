"""API-key authentication. Keys are stored hashed; a project key acts only on its project."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from payrail.bootstrap import Runtime
from payrail.domain import errors
from payrail.services import project_keys, projects
from payrail.services.auth_throttle import Caller, FailedAuthThrottle

KEY_CACHE_TTL_MS = 5_000
KEY_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    admin: bool
    project_id: str | None
    # An approver key (services/project_keys.py): approves or rejects its project's held
    # payouts and reads them; ApiContext.principal refuses it on every other route.
    approver: project_keys.ApproverKey | None = None

    def require(self, project_id: str) -> None:
        if not self.admin and self.project_id != project_id:
            raise errors.Forbidden("This API key cannot act on that project.")

    def require_admin(self) -> None:
        if not self.admin:
            raise errors.Forbidden("This action needs the admin key.")

    def require_approver(self) -> None:
        """The admin key, or an approver key (of the payout's project: visible_payout)."""
        if not self.admin and self.approver is None:
            raise errors.Forbidden(
                "Approving or rejecting a held payout needs the admin key or a project key "
                'with the approver role (POST /projects/{id}/keys {"role": "approver"}).'
            )

    @property
    def actor(self) -> str | None:
        """How an approver key names itself in a payout's history (None: not one)."""
        return None if self.approver is None else self.approver.actor


class KeyCache:
    """A short cache of key hash → who (a project's id, or its approver key), so each request
    does not cost a lookup."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str | project_keys.ApproverKey, int]] = {}

    def get(self, key_hash: str, now_ms: int) -> str | project_keys.ApproverKey | None:
        hit = self._entries.get(key_hash)
        if hit is None or now_ms - hit[1] > KEY_CACHE_TTL_MS:
            return None
        return hit[0]

    def put(self, key_hash: str, project_id: str | project_keys.ApproverKey, now_ms: int) -> None:
        if len(self._entries) >= KEY_CACHE_MAX:
            self._entries.clear()
        self._entries[key_hash] = (project_id, now_ms)

    def clear(self) -> None:
        self._entries.clear()


def client_address(request: Request) -> str:
    """The address the server saw (behind a proxy: what its forwarded headers were trusted
    to say, uvicorn's --forwarded-allow-ips)."""
    return request.client.host if request.client else "unknown"


async def authenticate(
    rt: Runtime, cache: KeyCache, request: Request, throttle: FailedAuthThrottle | None = None
) -> Principal:
    key = request.headers.get("apikey")
    if not key:  # no guess made: not counted as a failure
        raise errors.Unauthorized("Missing API key: send it in the 'apikey' header.")
    now = rt.clock.now_ms()
    caller = Caller(client_address(request), key)
    if throttle is not None:  # before the key is looked at: the right key is refused too
        throttle.check(caller, now, "api")
    if hmac.compare_digest(key.encode(), rt.settings.admin_key.encode()):
        return Principal(admin=True, project_id=None)
    key_hash = projects.hash_key(key)
    found = cache.get(key_hash, now)
    if found is None:
        found = await projects.project_for_key(rt, key)
        if found is None:  # a rotated-out key, while its grace period lasts
            found = await project_keys.project_for_previous_key(rt, key_hash)
        if found is None:  # a key with the approver role
            found = await project_keys.approver_for_key_hash(rt, key_hash)
        if found is None:
            if throttle is not None:
                throttle.failed(caller, now, "api")
            raise errors.Unauthorized("Invalid API key.")
        cache.put(key_hash, found, now)
    if isinstance(found, project_keys.ApproverKey):
        return Principal(admin=False, project_id=found.project_id, approver=found)
    return Principal(admin=False, project_id=found)
