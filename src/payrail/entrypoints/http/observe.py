"""ASGI middleware: a request id in every log line, one access log line and HTTP metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: that one runs every request through a
task group and memory streams, a cost paid on every payout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from payrail.support import metrics

Scope = dict[str, Any]

API_PREFIX = "/api/v1"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
REQUEST_ID_MAX_CHARS = 64

log = structlog.get_logger("payrail.entrypoints.http")


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Observe:
    """after_write: called once a request of any other method has been answered (it may have
    queued jobs: the app wakes its worker loop with it, entrypoints/worker.py)."""

    def __init__(self, app: Any, after_write: Callable[[], None] | None = None) -> None:
        self.app = app
        self.after_write = after_write

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(_header(scope, b"x-request-id"))
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _observe(scope, status, time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")
            if self.after_write is not None and scope["method"] not in READ_METHODS:
                self.after_write()


def _observe(scope: Scope, status: int, elapsed_s: float) -> None:
    # The route template, never the raw path: ids in paths would make labels unbounded. The
    # router records the matched route in the shared scope.
    matched = scope.get("route")
    route = getattr(matched, "path", None) or "unmatched"
    method = scope["method"] if scope["method"] in METHODS else "OTHER"
    metrics.HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    metrics.HTTP_SECONDS.labels(route=route, method=method).observe(elapsed_s)
    if route == f"{API_PREFIX}/payouts" and method == "POST":
        metrics.PAYOUT_API_SECONDS.labels(code=str(status)).observe(elapsed_s)
    if route != "/metrics":
        log.info(
            "http_request",
            method=method,
            route=route,
            status=status,
            duration_ms=round(elapsed_s * 1000, 1),
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def request_id(given: str | None) -> str:
    """The caller's X-Request-Id if it is a sane token, else a new one (logs stay clean)."""
    if (
        given
        and len(given) <= REQUEST_ID_MAX_CHARS
        and all(c.isalnum() or c in "-_.:" for c in given)
    ):
        return given
    return uuid.uuid4().hex
