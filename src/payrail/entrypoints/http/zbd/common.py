"""What every /v0 route shares: the wallet of the key, ZBD's answers, errors and retry advice.

ZBD's envelope is payrail's: `{"success", "message", "data"}`; ZBD's error answers carry
`success: false` and a message, and payrail adds its machine code in `data.error`, so both
kinds of client read them. The HTTP statuses are payrail's (docs/api.md) except where ZBD
answers differently: a refusal for want of funds is ZBD's 400, not payrail's 402.

Retries. ZBD's Python SDK retries 408, 409, 429, 5xx and lost connections by itself (twice),
and neither SDK sends an idempotency key. A payout resent without a key is a new payout, so
every /v0 POST that moves money answers `x-should-retry: false` (a header that SDK obeys)
unless the request carries a key that makes a retry safe (docs/zbd.md, "Retries").
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from payrail.domain import errors
from payrail.domain.payouts import IDEMPOTENCY_KEY_MAX_CHARS
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, status_for
from payrail.entrypoints.http.zbd.translate import amount_refusal_in_msat

ZBD_PREFIX = "/v0"
SHOULD_RETRY_HEADER = "x-should-retry"
IDEMPOTENCY_HEADER = "idempotency-key"
# With PAYRAIL_ZBD_INTERNAL_ID_IDEMPOTENT=1 a payout's internalId is its idempotency key in
# its project; the prefix keeps it apart from keys a studio sends itself.
INTERNAL_ID_KEY_PREFIX = "zbd-internal-id:"
# ZBD's statuses where they differ from payrail's own API.
ZBD_STATUS: dict[type[errors.PayrailError], int] = {errors.InsufficientBalance: 400}
# The one sentence ZBD answers for want of funds, which ZBD clients may look for.
ZBD_INSUFFICIENT = "You do not have enough funds for this transaction and fees."
# Answers a retry can cure when the request's key makes it safe (the database came back).
RETRYABLE_STATUSES = frozenset({500, 503})

Handler = Callable[..., Awaitable[JSONResponse]]


def ok(message: str, data: dict[str, Any], status: int = 200) -> JSONResponse:
    return envelope(True, message, data, status)


def zbd_status(exc: errors.PayrailError) -> int:
    for cls in type(exc).__mro__:
        if cls in ZBD_STATUS:
            return ZBD_STATUS[cls]
    return status_for(exc)


def error_answer(exc: errors.PayrailError) -> JSONResponse:
    exc = amount_refusal_in_msat(exc)
    message = exc.message
    if isinstance(exc, errors.InsufficientBalance):
        message = f"{ZBD_INSUFFICIENT} {message}"
    return envelope(False, message, {"error": exc.code, **exc.extra}, zbd_status(exc))


def failed(message: str, data: dict[str, Any], code: str, status: int) -> JSONResponse:
    """A payment that ended without paying: ZBD's error shape, the payment in `data`."""
    return envelope(False, message, data | {"error": code}, status)


def mark_retry_safe(request: Request) -> None:
    """This request's key makes a resend safe: it answers what the first attempt did."""
    request.state.zbd_retry_safe = True


def zbd_route(handler: Handler) -> Handler:
    """Errors in ZBD's shape and statuses, and the retry advice of docs/zbd.md."""

    @functools.wraps(handler)
    async def route(*args: Any, **kwargs: Any) -> JSONResponse:
        request: Request = kwargs["request"]
        try:
            response = await handler(*args, **kwargs)
        except errors.PayrailError as exc:
            response = error_answer(exc)
        except Exception as exc:  # answered as the app answers it, plus the retry advice
            unexpected = request.app.exception_handlers[Exception]
            response = await unexpected(request, exc)
        if request.method == "POST" and response.status_code >= 400:
            safe = getattr(request.state, "zbd_retry_safe", False)
            retry = safe and response.status_code in RETRYABLE_STATUSES
            response.headers[SHOULD_RETRY_HEADER] = "true" if retry else "false"
        return response

    return route


async def wallet_of(ctx: ApiContext, request: Request) -> str:
    """The project whose wallet this key is: one project key, one ZBD project wallet."""
    who = await ctx.principal(request)
    if who.admin or who.project_id is None:
        raise errors.Forbidden(
            "The ZBD-compatible API acts on one project's wallet: send that project's API "
            "key in the apikey header (the admin key has no wallet)."
        )
    return who.project_id


def body_object(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise errors.ValidationError("The request body must be a JSON object.")
    return body


def optional_text(body: dict[str, Any], field: str) -> str | None:
    """A free-text field as ZBD clients send it: absent, null or "" all mean none."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise errors.ValidationError(f"{field} must be a string.", field=field)
    return value


def idempotency_key(ctx: ApiContext, request: Request, internal_id: str | None) -> str | None:
    """The Idempotency-Key header, or (PAYRAIL_ZBD_INTERNAL_ID_IDEMPOTENT=1) the internalId.

    ZBD itself dedupes on neither; a key is what makes the SDKs' automatic retries safe."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None and internal_id is not None and ctx.settings.zbd_internal_id_idempotent:
        key = INTERNAL_ID_KEY_PREFIX + internal_id
    if key is not None:
        if not key or len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
            raise errors.ValidationError(
                f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} characters.",
                field="Idempotency-Key",
            )
        mark_retry_safe(request)
    return key
