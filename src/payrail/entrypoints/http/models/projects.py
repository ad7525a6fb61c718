"""The project routes' contract: create, fund, balance, webhook-secret rotation."""

from __future__ import annotations

from pydantic import Field

from payrail.entrypoints.http.models import Body, Model
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
