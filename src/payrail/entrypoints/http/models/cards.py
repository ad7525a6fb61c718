"""The card routes' contract: orders, pay, the Stripe webhook, dead jobs (admin)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from payrail.domain.orders import CUSTOMER_ID_MAX_CHARS, ORDER_AMOUNT_MAX
from payrail.entrypoints.http.models import Body, Model


class OrderRequest(Body):
    amount: int = Field(ge=1, le=ORDER_AMOUNT_MAX, description="minor unit (cents)")
    currency: str = Field(description="ISO 4217, lower case: usd, eur, …")
    customerId: str | None = Field(None, max_length=CUSTOMER_ID_MAX_CHARS)
    metadata: dict[str, str] | None = None
    projectId: str | None = Field(None, description="Admin key only: the order's project.")


class PayRequest(Body):
    paymentMethod: str = Field(description="A payment method id, e.g. pm_card_visa.")


class Order(Model):
    id: str
    projectId: str
    amount: int
    currency: str
    customerId: str | None
    metadata: dict[str, Any] | None
    status: str
    paymentMethod: str | None
    paymentIntentId: str | None
    payAttempts: int
    failureCode: str | None
    failureReason: str | None
    createdAt: str | None
    updatedAt: str | None
    completedAt: str | None
    fulfilledAt: str | None


class OrderDetail(Order):
    history: list[dict[str, Any]]


class OrderPage(Model):
    orders: list[Order]
    count: int
    nextCursor: str | None
    hasMore: bool


class ReceivedEvent(Model):
    eventId: str
    duplicate: bool


class JobList(Model):
    jobs: list[dict[str, Any]]
    count: int


class JobId(Model):
    id: str
