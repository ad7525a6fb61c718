"""The Lightning backend protocol. The node call is idempotent by payment_id (our payout id)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class NodeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # definite: the node will never pay this payment
    IN_FLIGHT = "in_flight"  # the node has it and has not finished
    NOT_FOUND = "not_found"  # the node never received it


class FailureReason(StrEnum):
    TIMEOUT = "timeout"  # the node gave up on the payment (like LND's FAILURE_REASON_TIMEOUT)
    NO_ROUTE = "no_route"
    REFUSED = "refused"


@dataclass(frozen=True)
class PaymentResult:
    status: NodeStatus
    failure_reason: str | None = None


class UnknownOutcome(Exception):
    """Our call timed out or the connection broke: the payment may or may not happen.

    Never treat this as a failure: only a later definite answer may release funds.
    """


class LightningBackend(Protocol):
    async def pay(self, payment_id: str, destination: str, amount_sats: int) -> PaymentResult:
        """Send once per payment_id; a repeated call returns the first call's payment."""
        ...

    async def status(self, payment_id: str) -> PaymentResult: ...

    async def aclose(self) -> None: ...
