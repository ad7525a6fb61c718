"""Signing and verifying payrail callbacks: Stripe's scheme, so receivers already know it.

    Payrail-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256("<t>.<body>", secret)>[,v1=...]

More than one `v1` appears while a rotated-out secret is still in its grace period; a
receiver accepts the request if any of them matches its secret. Receivers need only this
module (standard library only):

    from payrail.webhooks import verify, WebhookVerificationError

    try:
        event = verify(secret, request.headers["Payrail-Signature"], raw_body)
    except WebhookVerificationError:
        return 400
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

SIGNATURE_HEADER = "Payrail-Signature"
EVENT_ID_HEADER = "Payrail-Event-Id"
SCHEME = "v1"
TOLERANCE_DEFAULT_S = 300
HEADER_MAX_CHARS = 4_096  # a few signatures fit; a longer header is not one of ours


class WebhookVerificationError(Exception):
    """The request is not a fresh callback signed by payrail with your secret: reject it (400)."""


def _digest(secret: str, timestamp_s: int, body: bytes) -> str:
    message = str(timestamp_s).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secrets: Sequence[str], body: bytes, timestamp_s: int) -> str:
    """The Payrail-Signature header value: one v1 entry per active secret, newest first."""
    assert secrets, "a callback is never sent unsigned"
    return ",".join(
        [f"t={timestamp_s}", *(f"{SCHEME}={_digest(s, timestamp_s, body)}" for s in secrets)]
    )


def verify(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance_s: int = TOLERANCE_DEFAULT_S,
    *,
    now_s: float | None = None,
) -> dict[str, Any]:
    """Check a callback's signature and freshness; return the parsed event.

    `body` must be the raw request body, byte for byte, not a re-serialised copy.
    Raises WebhookVerificationError when the header is missing or malformed, when no v1
    signature matches `secret`, or when the timestamp is more than `tolerance_s` from now
    (a replayed old request). Dedupe accepted events by their `id`.
    """
    if isinstance(body, str):
        body = body.encode()
    if not header or len(header) > HEADER_MAX_CHARS:
        raise WebhookVerificationError(f"Missing or oversized {SIGNATURE_HEADER} header.")
    timestamp_s: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp_s = int(value)
            except ValueError:
                raise WebhookVerificationError(
                    "The signature timestamp is not an integer."
                ) from None
        elif key == SCHEME:
            signatures.append(value)
    if timestamp_s is None or not signatures:
        raise WebhookVerificationError(
            f"{SIGNATURE_HEADER} must look like t=<unix seconds>,v1=<hex signature>."
        )
    expected = _digest(secret, timestamp_s, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise WebhookVerificationError(
            "No signature matches this secret: check the project's webhook secret, and that "
            "the body is the raw bytes received."
        )
    now_s = time.time() if now_s is None else now_s
    if abs(now_s - timestamp_s) > tolerance_s:
        raise WebhookVerificationError(
            f"The signature timestamp is {abs(now_s - timestamp_s):.0f} s from now, more than "
            f"the {tolerance_s} s tolerance: a replayed request, or a clock out of sync."
        )
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("The body is not JSON.") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("The body is not a JSON object.")
    return event
