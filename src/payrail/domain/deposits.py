"""Deposit (money in over Lightning) rules with no I/O: the request, the state machine, the
watcher's schedule.

    open ──(the backend says the invoice is paid)──→ completed   credited once, in the same tx
      └──(past expiry, the backend says not paid)──→ expired     nothing was credited
                        expired ──(paid late)──→ completed        credited, marked late

A payment is never lost to expiry: an expired deposit is still watched for a late window,
and a push (webhook) or an explicit check credits it whenever the backend says it is paid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from payrail.domain import errors
from payrail.domain.payouts import validate_callback_url
from payrail.domain.text import check_text

DEPOSIT_AMOUNT_MIN_SATS = 1
DEPOSIT_AMOUNT_MAX_SATS = 10_000_000  # 0.1 BTC per invoice: a typo guard
DESCRIPTION_MAX_CHARS = 144
EXPIRES_IN_S_MIN = 60
EXPIRES_IN_S_MAX = 7 * 86_400
EXPIRES_IN_S_DEFAULT = 3_600
IDEMPOTENCY_KEY_MAX_CHARS = 255


class DepositStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    EXPIRED = "expired"


S = DepositStatus
TRANSITIONS: dict[DepositStatus, frozenset[DepositStatus]] = {
    S.OPEN: frozenset({S.COMPLETED, S.EXPIRED}),
    # A payment the backend reports after we expired the deposit is credited, not lost.
    S.EXPIRED: frozenset({S.COMPLETED}),
    S.COMPLETED: frozenset(),
}
CREDITABLE = frozenset(s for s, nxt in TRANSITIONS.items() if S.COMPLETED in nxt)


def is_legal(current: DepositStatus, target: DepositStatus) -> bool:
    return target in TRANSITIONS[current]


@dataclass(frozen=True)
class DepositRequest:
    project_id: str
    amount: int
    description: str | None
    expires_in_s: int
    idempotency_key: str | None
    callback_url: str | None = None

    def fingerprint(self) -> str:
        """What a replay with the same Idempotency-Key must repeat exactly."""
        body = {"amount": self.amount, "description": self.description,
                "expiresInS": self.expires_in_s, "callbackUrl": self.callback_url}  # fmt: skip
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_request(
    body: Any,
    project_id: str,
    idempotency_key: str | None,
    default_expiry_s: int,
    *,
    callback_url_refusal: str | None = None,
) -> DepositRequest:
    """callback_url_refusal: the services layer's verdict on where callbackUrl resolves
    (production), as for payouts."""
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    amount = body.get("amount")
    if amount is None:
        raise errors.ValidationError("Missing required fields: amount", missingFields=["amount"])
    if not _int_in(amount, DEPOSIT_AMOUNT_MIN_SATS, DEPOSIT_AMOUNT_MAX_SATS):
        raise errors.InvalidAmount(
            f"amount must be an integer number of sats from {DEPOSIT_AMOUNT_MIN_SATS} to "
            f"{DEPOSIT_AMOUNT_MAX_SATS:,}.",
            minAmount=DEPOSIT_AMOUNT_MIN_SATS,
            maxAmount=DEPOSIT_AMOUNT_MAX_SATS,
        )
    description = body.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise errors.ValidationError("description must be a string.", field="description")
        check_text(description, "description")
        if len(description) > DESCRIPTION_MAX_CHARS:
            raise errors.DescriptionTooLong(
                f"description is {len(description)} characters; the maximum is "
                f"{DESCRIPTION_MAX_CHARS}.",
                maxLength=DESCRIPTION_MAX_CHARS,
            )
    expires_in_s = body.get("expiresInS", default_expiry_s)
    if not _int_in(expires_in_s, EXPIRES_IN_S_MIN, EXPIRES_IN_S_MAX):
        raise errors.ValidationError(
            f"expiresInS must be an integer from {EXPIRES_IN_S_MIN} to {EXPIRES_IN_S_MAX}.",
            field="expiresInS",
        )
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX_CHARS:
            raise errors.ValidationError(
                f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} characters.",
                field="Idempotency-Key",
            )
        check_text(idempotency_key, "Idempotency-Key")
    callback_url = validate_callback_url(body.get("callbackUrl"))
    if callback_url is not None and callback_url_refusal is not None:
        raise errors.InvalidCallbackUrl(callback_url_refusal)
    return DepositRequest(
        project_id, amount, description, expires_in_s, idempotency_key, callback_url
    )


def parse_status(value: Any) -> DepositStatus:
    return errors.parse_status(DepositStatus, value, "deposit status")


@dataclass(frozen=True)
class WatchPlan:
    """How long a deposit is watched and how often (the watcher's bounded work)."""

    check_base_ms: int  # the first re-check after creation; doubles each check
    check_cap_ms: int  # … up to this
    late_window_ms: int  # an expired deposit is still checked this long after its expiry

    def next_check_ms(
        self, status: DepositStatus, checks: int, expires_at_ms: int, now_ms: int, jitter: int
    ) -> int | None:
        """When to ask the backend next, or None: the deposit is no longer watched.

        `jitter` in [0, 1000] spreads deposits made together (full jitter on the upper half,
        as queue.backoff_ms). An open deposit is always asked once more at its expiry, so it
        is expired only on the backend's own answer after that moment."""
        if status == DepositStatus.COMPLETED:
            return None
        if status == DepositStatus.EXPIRED and now_ms >= expires_at_ms + self.late_window_ms:
            return None
        ceiling = min(self.check_cap_ms, self.check_base_ms * 2 ** max(0, checks - 1))
        delay = ceiling // 2 + (ceiling // 2) * jitter // 1000
        at = now_ms + max(1, delay)
        if status == DepositStatus.OPEN and now_ms < expires_at_ms:
            return min(at, expires_at_ms)
        return at


def transfer_id(payment_hash: str) -> str:
    """The one ledger credit of a deposit: its primary key refuses a second for the hash."""
    return f"deposit:{payment_hash}"


TRANSFER_PREFIX = transfer_id("")
