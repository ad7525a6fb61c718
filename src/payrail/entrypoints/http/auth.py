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

    def require(self, project_id: str) -> None:
        if not self.admin and self.project_id != project_id:
            raise errors.Forbidden("This API key cannot act on that project.")

    def require_admin(self) -> None:
        if not self.admin:
            raise errors.Forbidden("This action needs the admin key.")


class KeyCache:
    """A short cache of key hash → project, so each request does not cost a lookup."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, int]] = {}

    def get(self, key_hash: str, now_ms: int) -> str | None:
        hit = self._entries.get(key_hash)
        if hit is None or now_ms - hit[1] > KEY_CACHE_TTL_MS:
            return None
        return hit[0]

    def put(self, key_hash: str, project_id: str, now_ms: int) -> None:
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
    project_id = cache.get(key_hash, now)
    if project_id is None:
        project_id = await projects.project_for_key(rt, key)
        if project_id is None:  # a rotated-out key, while its grace period lasts
            project_id = await project_keys.project_for_previous_key(rt, key_hash)
        if project_id is None:
            if throttle is not None:
                throttle.failed(caller, now, "api")
            raise errors.Unauthorized("Invalid API key.")
        cache.put(key_hash, project_id, now)
    return Principal(admin=False, project_id=project_id)
