"""What every router needs: the settings, the runtime, the key cache and the two guards."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from payrail.bootstrap import Runtime
from payrail.config import Settings
from payrail.domain import errors
from payrail.entrypoints.http.auth import KeyCache, Principal, authenticate
from payrail.services.auth_throttle import FailedAuthThrottle
from payrail.services.faults import ACTING_PROJECT


@dataclass
class ApiContext:
    settings: Settings
    rt: Runtime
    keys: KeyCache = field(default_factory=KeyCache)
    # Shared by the API and the dashboard sign-in: one budget of failures per address.
    throttle: FailedAuthThrottle = field(default_factory=FailedAuthThrottle)

    async def principal(self, request: Request, *, approver_ok: bool = False) -> Principal:
        """The caller, from its `apikey` header (401 without a valid one; 429 after too many
        failures from its address or for its key prefix). An approver key is refused (403)
        unless the route says it may (approve, reject, and reading payouts)."""
        who = await authenticate(self.rt, self.keys, request, self.throttle)
        if who.approver is not None and not approver_ok:
            raise errors.Forbidden(
                "This key has the approver role: it may only approve or reject its project's "
                "held payouts (POST /payouts/{id}/approve | reject) and read its payouts."
            )
        # Whose sandbox knobs apply for the rest of this request (services/faults.py).
        ACTING_PROJECT.set(who.project_id)
        return who

    def sandbox_only(self) -> None:
        """Test endpoints answer 404 outside the sandbox, as if they did not exist."""
        if not self.settings.sandbox:
            raise errors.NotFound("Test endpoints exist only in sandbox mode.")

    @staticmethod
    def scope(who: Principal, named: str | None) -> str | None:
        """The project a request acts on: the key's own; the admin key may name one or none."""
        project_id = named or who.project_id
        if project_id is not None:
            who.require(project_id)
        return project_id
