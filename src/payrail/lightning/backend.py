"""The Lightning backend protocol: one interface for the simulated node, LND and LNbits.

The node call is idempotent by payment_id (our payout id). Every call carries the
Destination, built from the payout row: the invoice and its payment hash, a keysend node key,
or (sandbox only) the gamertag the simulated node pays by name.
"""

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


class DestinationKind(StrEnum):
    INVOICE = "invoice"  # a BOLT11 invoice, tracked by its payment hash
    KEYSEND = "keysend"  # a spontaneous payment to a node public key
    SANDBOX = "sandbox"  # the simulated node pays a gamertag by name


@dataclass(frozen=True)
class Destination:
    """Where one payment goes. `invoice`+`payment_hash`, `node_pubkey` or `gamertag`."""

    kind: DestinationKind
    invoice: str | None = None
    payment_hash: str | None = None
    node_pubkey: str | None = None
    gamertag: str | None = None

    def __post_init__(self) -> None:
        if self.kind == DestinationKind.INVOICE:
            assert self.invoice and self.payment_hash, "an invoice destination needs both"
        elif self.kind == DestinationKind.KEYSEND:
            assert self.node_pubkey, "a keysend destination needs the node key"
        else:
            assert self.gamertag, "a sandbox destination needs the gamertag"

    @classmethod
    def to_invoice(cls, invoice: str, payment_hash: str) -> Destination:
        return cls(DestinationKind.INVOICE, invoice=invoice, payment_hash=payment_hash)

    @classmethod
    def keysend(cls, node_pubkey: str) -> Destination:
        return cls(DestinationKind.KEYSEND, node_pubkey=node_pubkey)

    @classmethod
    def sandbox(cls, gamertag: str) -> Destination:
        return cls(DestinationKind.SANDBOX, gamertag=gamertag)

    def label(self) -> str:
        """A short name for logs and the simulator's record: hash, node key or gamertag."""
        return self.payment_hash or self.node_pubkey or self.gamertag or ""


class UnknownOutcome(Exception):
    """Our call timed out or the connection broke: the payment may or may not happen.

    Never treat this as a failure: only a later definite answer may release funds.
    """


class LightningBackend(Protocol):
    # The destination kinds this backend can pay; checked before a payout is reserved.
    kinds: frozenset[DestinationKind]

    async def pay(
        self, payment_id: str, destination: Destination, amount_sats: int
    ) -> PaymentResult:
        """Send once per payment_id; a repeated call returns the first call's payment.

        Raises UnknownOutcome when the backend's answer is lost: never a failure.
        """
        ...

    async def status(self, payment_id: str, destination: Destination) -> PaymentResult:
        """What the backend knows of this payment now; NOT_FOUND if it never received it."""
        ...

    # Receiving (deposits, services/deposits.py): see "Receiving" below.
    async def create_invoice(
        self, amount_sats: int, memo: str, expiry_s: int, webhook_url: str | None = None
    ) -> Invoice:
        """A new invoice to be paid to this backend's wallet. Not idempotent: an answer lost
        (UnknownOutcome) leaves at most an invoice nobody was shown, so nobody can pay it."""
        ...

    async def invoice_status(self, payment_hash: str) -> InvoiceStatus:
        """What the backend knows of the invoice it made with this hash (NOT_FOUND: none of
        this wallet's). Raises UnknownOutcome when it does not answer: never "unpaid"."""
        ...

    # Optional: `async def statuses(self, payment_ids: list[str]) -> dict[str, NodeStatus]`,
    # status() of many payments at once, which reconciliation uses where a backend has it
    # (the simulated node reads its record 500 payments per query).

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- receiving (deposits)


class InvoiceState(StrEnum):
    OPEN = "open"  # not paid (yet)
    PAID = "paid"  # settled: the sats are in the backend's wallet
    CANCELED = "canceled"  # the backend will never accept a payment for it
    NOT_FOUND = "not_found"  # this wallet has no invoice with that hash


@dataclass(frozen=True)
class Invoice:
    """An invoice the backend made for us: what the payer is shown and what we track it by."""

    bolt11: str
    payment_hash: str  # 64 hex characters


@dataclass(frozen=True)
class InvoiceStatus:
    state: InvoiceState
    amount_paid_msat: int | None = None  # what was received, where the backend says


class InvoiceRefused(Exception):
    """The backend answered and made no invoice (a bad amount, a wallet it refuses for)."""


PAYMENT_HASH_HEX_CHARS = 64


def is_payment_hash(value: object) -> bool:
    """64 lowercase hex characters (the form every backend answers with here)."""
    return (
        isinstance(value, str)
        and len(value) == PAYMENT_HASH_HEX_CHARS
        and all(c in "0123456789abcdef" for c in value)
    )
