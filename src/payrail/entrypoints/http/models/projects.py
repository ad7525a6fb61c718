"""The project routes' contract: create, fund, balance, webhook-secret rotation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from payrail.entrypoints.http.models import Body, Model, StrictBody
from payrail.services.limits import CAP_MAX_SATS
from payrail.services.project_keys import (
    KEY_GRACE_DEFAULT_S,
    KEY_GRACE_MAX_S,
    LABEL_MAX_CHARS,
    REASON_MAX_CHARS,
)
from payrail.services.projects import FUND_MAX_SATS, PROJECT_NAME_MAX_CHARS


class NewProject(Body):
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{3,64}$")
    name: str | None = Field(None, max_length=PROJECT_NAME_MAX_CHARS)


class Project(Model):
    id: str
    name: str | None
    createdAt: str | None


class CreatedProject(Model):
    project: Project
    apiKey: str = Field(description="Shown once.")
    webhookSecret: str = Field(description="Signs callbacks; shown once.")


class FundRequest(Body):
    amount: int = Field(ge=1, le=FUND_MAX_SATS, description="sats")


class Funding(Model):
    projectId: str
    previousBalance: int
    addedAmount: int = Field(description="0 when the Idempotency-Key was already used")
    newBalance: int
    replayed: bool


class Balance(Model):
    projectId: str
    balance: int = Field(description="Available sats (funded − completed − pending).")
    reserved: int = Field(description="Sats held by pending payouts.")
    currency: str


class Rotation(Body):
    gracePeriodSeconds: int | None = Field(None, ge=0, le=2_592_000)


class RotatedSecret(Model):
    projectId: str
    webhookSecret: str
    previousSecretExpiresAt: str | None


class ProjectSummary(Project):
    keyRotatedAt: str | None = Field(description="The last API key rotation, if any.")
    previousKeyExpiresAt: str | None = Field(
        description="Until when the rotated-out key still works (null: no such key)."
    )


class ProjectPage(Model):
    projects: list[ProjectSummary]
    count: int
    nextCursor: str | None
    hasMore: bool


class KeyRotation(StrictBody):
    gracePeriodSeconds: int | None = Field(
        None,
        ge=0,
        le=KEY_GRACE_MAX_S,
        description=f"How long the old key keeps working (default {KEY_GRACE_DEFAULT_S} s; "
        "0: revoked at once).",
    )
    reason: str | None = Field(None, max_length=REASON_MAX_CHARS, description="For the audit.")
    role: Literal["project", "approver"] | None = Field(
        None,
        description="project (the default): rotate the project's key. approver: a new, "
        "additional key that may only approve or reject the project's held payouts and read "
        "its payouts (every other route answers it 403); the project's key is unchanged. "
        "With approver, only label may be given besides.",
    )
    label: str | None = Field(
        None,
        min_length=1,
        max_length=LABEL_MAX_CHARS,
        description="role approver: who holds the key (in the history of what it decides).",
    )


class RotatedKey(Model):
    projectId: str
    apiKey: str = Field(description="The new key. Shown once.")
    previousKeyExpiresAt: str | None = Field(
        description="Until when the old key works; null: it stopped at once (or role approver)."
    )
    role: Literal["project", "approver"] = Field(description="The new key's role.")
    keyId: str | None = Field(
        None, description="role approver: the key's id (DELETE /projects/{id}/keys/{keyId})."
    )
    label: str | None = Field(None, description="role approver: its label.")


class ApproverKey(Model):
    keyId: str
    role: Literal["approver"]
    label: str | None
    createdAt: str
    createdBy: str
    revokedAt: str | None = Field(description="null: it works.")


class KeyEvent(Model):
    at: str
    actor: str
    reason: str | None
    gracePeriodSeconds: int
    previousKeyExpiresAt: str | None


class KeyHistory(Model):
    projectId: str
    rotations: list[KeyEvent]
    previousKeyExpiresAt: str | None
    approverKeys: list[ApproverKey] = Field(
        description="The project's keys with the approver role, newest first (never a key)."
    )


_CAP = {"ge": 0, "le": CAP_MAX_SATS}


class LimitsChange(StrictBody):
    """Any of the four caps (sats; null: no cap); the fields not named keep their value."""

    perPayoutMaxSats: int | None = Field(None, **_CAP, description="One payout's amount, at most")
    perPlayerDailyMaxSats: int | None = Field(
        None,
        **_CAP,
        description="One player's payouts in a rolling 24 h (playerId, else the recipient)",
    )
    projectDailyMaxSats: int | None = Field(
        None, **_CAP, description="The project's payouts in a rolling 24 h"
    )
    approvalAboveSats: int | None = Field(
        None, **_CAP, description="A payout above this waits for an approver"
    )


class LimitsEvent(Model):
    actor: str
    old: dict[str, int | None] | None
    new: dict[str, int | None]
    at: str


class Limits(Model):
    """A project's caps (amounts in sats, null: no cap) and their latest changes."""

    projectId: str
    perPayoutMaxSats: int | None
    perPlayerDailyMaxSats: int | None
    projectDailyMaxSats: int | None
    approvalAboveSats: int | None
    changes: list[LimitsEvent] = Field(description="Newest first, the latest 50")
