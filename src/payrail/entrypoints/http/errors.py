"""The one place where domain errors become HTTP answers, always in the envelope."""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from payrail.db.availability import RETRY_AFTER_S, is_database_unavailable
from payrail.domain import errors
from payrail.domain.text import JSON_DEPTH_MAX, check_json

log = structlog.get_logger("payrail.entrypoints.http")
CLIENT_CLOSED_REQUEST = 499  # logged and counted as such; the client is gone and never sees it

HTTP_STATUS: dict[type[errors.PayrailError], int] = {
    errors.ValidationError: 400,
    errors.InvalidAmount: 400,
    errors.DescriptionTooLong: 400,
    errors.InvalidCallbackUrl: 400,
    errors.InvalidStatus: 400,
    errors.InvalidCurrency: 400,
    errors.InvalidSignature: 400,
    errors.Unauthorized: 401,
    errors.InsufficientBalance: 402,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.ProjectExists: 409,
    errors.InvalidStatusTransition: 409,
    errors.InvoiceAlreadyUsed: 409,
    errors.InternalIdTaken: 409,
    errors.CallbackNotDead: 409,
    errors.JobNotDead: 409,
    errors.OrderNotPayable: 409,
    errors.CardDeclined: 402,
    errors.ProviderError: 502,
    errors.ProviderTimeout: 504,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.IdempotencyKeyReused: 422,
    errors.RateLimitExceeded: 429,
    errors.ServiceUnavailable: 503,
    errors.RecipientSuspended: 403,
    errors.InvalidInvoice: 400,
    errors.RecipientUnreachable: 502,
    errors.RecipientInvoiceInvalid: 502,
    errors.DestinationUnsupported: 422,
    errors.LightningBackendRefused: 502,
    errors.PayoutLimitExceeded: 403,
    errors.PlayerDailyLimit: 429,
    errors.ProjectDailyLimit: 429,
    errors.QuoteExpired: 409,
    errors.QuoteUsed: 409,
}


def status_for(exc: errors.PayrailError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def envelope(success: bool, message: str, data: dict[str, Any], status: int) -> JSONResponse:
    headers = {}
    if "retryAfter" in data:
        headers["Retry-After"] = str(data["retryAfter"])
    return JSONResponse(
        {"success": success, "message": message, "data": data}, status_code=status, headers=headers
    )


# Stripe's convention: an answer replayed from an idempotency key says so in a header, so a
# client (or a proxy's log) can tell a replay from a first answer without reading the body.
REPLAYED_HEADER = "Idempotent-Replayed"


def mark_replayed(response: JSONResponse, replay: bool) -> JSONResponse:
    """`Idempotent-Replayed: true` on an answer replayed from an idempotency key."""
    if replay:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def error_response(exc: errors.PayrailError) -> JSONResponse:
    return envelope(False, exc.message, {"error": exc.code, **exc.extra}, status_for(exc))


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.PayrailError)
    async def _domain(_: Request, exc: errors.PayrailError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return error_response(
                errors.MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
            )
        if exc.status_code == 404:
            return error_response(errors.NotFound(f"No route {request.method} {request.url.path}."))
        return envelope(False, str(exc.detail), {"error": "HTTP_ERROR"}, exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # The client hung up before its request was read whole: nobody hears an answer and it
        # is no fault of ours, so no unhandled_error and no error count. Nothing was written:
        # routes read their body before they write. 499 is nginx's "client closed request".
        log.info("client_disconnected", path=request.url.path, method=request.method)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(errors.ValidationError("The request is malformed."))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_database_unavailable(exc):
            # A restart, failover or pooler restart: not our bug, and not final. The request
            # may or may not have committed; a retry with the same idempotency key is safe.
            log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
            return envelope(
                False,
                "The database is unavailable. Retry after the indicated seconds with the "
                "same idempotency key.",
                {"error": "DATABASE_UNAVAILABLE", "retryAfter": RETRY_AFTER_S},
                503,
            )
        # Never a stack trace or a secret in the answer; the log has the type for operators.
        log.error("unhandled_error", path=request.url.path, error=type(exc).__name__)
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            runtime.note_error(exc)
        return envelope(
            False,
            "Internal error. The request may be retried with the same idempotency key.",
            {"error": "INTERNAL_ERROR"},
            500,
        )


def is_json_media_type(content_type: str | None) -> bool:
    """application/json or a +json type, whatever its parameters (charset)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_json(request: Request) -> Any:
    """The JSON body, or None when empty; a body of another media type is a 415."""
    raw = await request.body()
    if not raw.strip():
        return None
    if not is_json_media_type(request.headers.get("content-type")):
        raise errors.UnsupportedMediaType(
            "The body must be JSON: send it with 'Content-Type: application/json'.",
            contentType=(request.headers.get("content-type") or "")[:100] or None,
        )
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationError("The request body is not valid JSON.") from None
    except RecursionError:  # nested thousands deep: the parser gives up before we can count
        raise errors.ValidationError(
            f"The request body is nested more than {JSON_DEPTH_MAX} levels deep."
        ) from None
    if value is None:  # a literal `null` is neither an object nor the empty body it mimics
        raise errors.ValidationError("The request body must be a JSON object (or empty), not null.")
    return check_json(value)


def int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within bounds; anything else (even empty) is a 400, not a 500."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.ValidationError(f"{name} must be an integer.", field=name) from None
    if not low <= value <= high:
        raise errors.ValidationError(f"{name} must be from {low} to {high}.", field=name)
    return value


def page_data(name: str, items: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """The data of a list answer: the items under `name`, and how to get the next page."""
    return {
        name: items,
        "count": len(items),
        "nextCursor": next_cursor,
        "hasMore": next_cursor is not None,
    }
