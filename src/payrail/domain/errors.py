"""Typed domain errors. Each carries a stable machine code; HTTP mapping lives in api/errors.py."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

S = TypeVar("S", bound=Enum)


class PayrailError(Exception):
    """Base for every error a caller can act on. `extra` is merged into the envelope's data."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class ValidationError(PayrailError):
    code = "VALIDATION_ERROR"


class InvalidAmount(PayrailError):
    code = "INVALID_AMOUNT"


class DescriptionTooLong(PayrailError):
    code = "DESCRIPTION_TOO_LONG"


class InvalidCallbackUrl(PayrailError):
    code = "INVALID_CALLBACK_URL"


class InvalidStatus(PayrailError):
    code = "INVALID_STATUS"


def parse_status(kind: type[S], value: Any, what: str = "status") -> S:
    """A status name of `kind`, or 400 INVALID_STATUS listing the valid ones."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidStatus(
            f"Unknown {what} {value!r}.", validStatuses=[s.value for s in kind]
        ) from None


class Unauthorized(PayrailError):
    code = "UNAUTHORIZED"


class Forbidden(PayrailError):
    code = "FORBIDDEN"


class NotFound(PayrailError):
    code = "NOT_FOUND"


class ProjectNotFound(NotFound):
    code = "PROJECT_NOT_FOUND"


class PayoutNotFound(NotFound):
    code = "PAYOUT_NOT_FOUND"


class CallbackNotFound(NotFound):
    code = "CALLBACK_NOT_FOUND"


class CallbackNotDead(PayrailError):
    """Only a dead callback delivery can be replayed; a pending one is still being retried."""

    code = "CALLBACK_NOT_DEAD"


class ProjectExists(PayrailError):
    code = "PROJECT_EXISTS"


class IdempotencyKeyReused(PayrailError):
    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyKeyMismatch(ValidationError):
    """The Idempotency-Key header and the body's idempotencyKey differ: which one the caller
    meant is unknowable, so nothing is created (400)."""

    code = "IDEMPOTENCY_KEY_MISMATCH"


class RateLimitExceeded(PayrailError):
    code = "RATE_LIMIT_EXCEEDED"


class AuthThrottled(RateLimitExceeded):
    """Too many failed sign-ins or API keys from one client address or for one key prefix
    lately: a 429 with Retry-After, even for the right key, until the window has passed."""

    code = "AUTH_THROTTLED"


class RecipientTemporarilyBlocked(RateLimitExceeded):
    """Too many failed payouts to one recipient lately: a 429 like the rate limit, own code."""

    code = "RECIPIENT_TEMPORARILY_BLOCKED"


class InsufficientBalance(PayrailError):
    code = "INSUFFICIENT_BALANCE"


class InvalidStatusTransition(PayrailError):
    code = "INVALID_STATUS_TRANSITION"


class PayloadTooLarge(PayrailError):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(PayrailError):
    code = "UNSUPPORTED_MEDIA_TYPE"


class MethodNotAllowed(PayrailError):
    code = "METHOD_NOT_ALLOWED"


class ServiceUnavailable(PayrailError):
    code = "SERVICE_UNAVAILABLE"


class FlagNotFound(NotFound):
    code = "FLAG_NOT_FOUND"


class InvalidCurrency(PayrailError):
    code = "INVALID_CURRENCY"


class OrderNotFound(NotFound):
    code = "ORDER_NOT_FOUND"


class JobNotFound(NotFound):
    code = "JOB_NOT_FOUND"


class JobNotDead(PayrailError):
    """Only a dead job can be replayed; a queued one is still being retried."""

    code = "JOB_NOT_DEAD"


class OrderNotPayable(PayrailError):
    """The order is being paid, or was paid: a second charge is refused, not attempted."""

    code = "ORDER_NOT_PAYABLE"


class CardDeclined(PayrailError):
    code = "CARD_DECLINED"


class ProviderError(PayrailError):
    """The provider answered with an error: nothing was charged (the order is payment_failed)."""

    code = "PROVIDER_ERROR"


class ProviderTimeout(PayrailError):
    """The provider did not answer: the outcome is unknown until payrail asks again."""

    code = "PROVIDER_TIMEOUT"


class InvalidSignature(PayrailError):
    code = "INVALID_SIGNATURE"


class RecipientNotFound(NotFound):
    code = "RECIPIENT_NOT_FOUND"


class RecipientSuspended(PayrailError):
    """Payouts to this recipient are suspended in the project's directory: nothing is charged."""

    code = "RECIPIENT_SUSPENDED"


class InvalidInvoice(PayrailError):
    """The caller's BOLT11 invoice cannot be paid as asked (amount, network, expiry)."""

    code = "INVALID_INVOICE"


class RecipientUnreachable(PayrailError):
    """The recipient's LNURL service did not give an invoice: nothing was reserved."""

    code = "RECIPIENT_UNREACHABLE"


class RecipientInvoiceInvalid(PayrailError):
    """The recipient's service answered with parameters or an invoice that do not match."""

    code = "RECIPIENT_INVOICE_INVALID"


class DestinationUnsupported(PayrailError):
    """The configured Lightning backend cannot pay this kind of destination (e.g. keysend)."""

    code = "DESTINATION_UNSUPPORTED"


class CardPaymentsDisabled(ServiceUnavailable):
    code = "CARD_PAYMENTS_DISABLED"


class InvoiceAlreadyUsed(PayrailError):
    """A live payout (not voided) already pays this payment hash (409)."""

    code = "INVOICE_ALREADY_USED"


class InternalIdTaken(PayrailError):
    """internalId already names another payout of the project (409)."""

    code = "INTERNAL_ID_TAKEN"


# ---------------------------------------------------------------- deposits (money in)


class DepositNotFound(NotFound):
    code = "DEPOSIT_NOT_FOUND"


class LightningBackendUnavailable(ServiceUnavailable):
    """The backend did not answer an invoice request: no deposit was made (none can be paid)."""

    code = "LIGHTNING_BACKEND_UNAVAILABLE"


class LightningBackendRefused(PayrailError):
    """The backend answered and made no invoice: no deposit was made."""

    code = "LIGHTNING_BACKEND_REFUSED"


class PayoutLimitExceeded(PayrailError):
    """A payout above one of its project's caps that no retry can fit (403)."""

    code = "PAYOUT_LIMIT_EXCEEDED"


class PlayerDailyLimit(PayrailError):
    """A player's rolling-day cap is full (429, with retryAt and retryAfter)."""

    code = "PLAYER_DAILY_LIMIT"


class ProjectDailyLimit(PayrailError):
    """A project's rolling-day cap is full (429, with retryAt and retryAfter)."""

    code = "PROJECT_DAILY_LIMIT"


# ---------------------------------------------------------------- quotes (fiat-priced payouts)


class QuoteNotFound(NotFound):
    code = "QUOTE_NOT_FOUND"


class QuoteExpired(PayrailError):
    """The quote's expiresAt has passed: its sats may no longer be paid (409)."""

    code = "QUOTE_EXPIRED"


class QuoteUsed(PayrailError):
    """The quote already paid a payout (409): one quote, one payout."""

    code = "QUOTE_USED"


class RateUnavailable(ServiceUnavailable):
    """No fresh rate (the source failed, or its rate is older than the bound): no quote."""

    code = "RATE_UNAVAILABLE"
