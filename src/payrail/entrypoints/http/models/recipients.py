"""The recipient directory's contract (api/recipients.py) and the recipient guard's
(api/projects.py): bodies, the recipient object, lists, history and the guard policy."""

from __future__ import annotations

from pydantic import Field

from payrail.domain.recipients import PLAYER_ID_MAX_CHARS
from payrail.entrypoints.http.models import Body, Model


class RecipientBody(Body):
    """Exactly one destination; `suspended: true` refuses payouts to it (403)."""

    lightningAddress: str | None = Field(None, description="name@domain (LUD-16)")
    lnurl: str | None = Field(None, description="lnurl1… (LUD-06 pay link)")
    nodePubkey: str | None = Field(None, description="66 hex digits, for keysend (LND)")
    suspended: bool | None = None
    playerId: str | None = Field(
        None,
        min_length=1,
        max_length=PLAYER_ID_MAX_CHARS,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The studio's player id: a payout to this gamertag without its own "
        "playerId counts as this player (caps, rate limit)",
    )


RECIPIENT_EXAMPLE = {"lightningAddress": "alice@wallet.example.com"}


class Recipient(Model):
    id: str
    projectId: str
    gamertag: str
    kind: str = Field(description="lightning_address, lnurl or node_pubkey")
    suspended: bool
    lightningAddress: str | None
    lnurl: str | None
    nodePubkey: str | None
    playerId: str | None = None
    createdAt: str | None
    updatedAt: str | None


class RecipientPage(Model):
    recipients: list[Recipient]
    count: int
    nextCursor: str | None
    hasMore: bool


class RecipientChange(Model):
    """One audited change: action (created, updated, deleted), actor, old and new values."""


class RecipientHistory(Model):
    gamertag: str
    events: list[RecipientChange]
    count: int


class GuardOverrides(Body):
    """Per-project overrides of the failed-payout block; null returns a field to the default."""

    failuresMax: int | None = Field(None, ge=0, description="0: never block")
    failureWindowS: int | None = Field(None, ge=1)
    blockS: int | None = Field(None, ge=1)


class GuardPolicy(Model):
    failuresMax: int
    failureWindowS: int
    blockS: int


class RecipientGuard(Model):
    projectId: str
    effective: GuardPolicy
    overrides: dict[str, int | None]
    defaults: GuardPolicy
    rateLimitPerHour: int
