"""ASGI middleware bounding requests: a too-large body is refused before it is read, and a
path or query string that is not storable text (a NUL, invalid UTF-8) before any route runs."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from payrail.domain.errors import PayloadTooLarge
from payrail.domain.text import text_refusal

Scope = dict[str, Any]


class BodyLimit:
    def __init__(
        self, app: Any, max_bytes: int, path_max_bytes: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_max_bytes = path_max_bytes or {}  # a larger bound for a few exact paths

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.path_max_bytes.get(scope.get("path", ""), self.max_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    return await self._refuse(send, max_bytes)
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _TooLarge(max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send, max_bytes)

    async def _refuse(self, send: Any, max_bytes: int) -> None:
        refused = _TooLarge(max_bytes)
        body = json.dumps(
            {
                "success": False,
                "message": refused.message,
                "data": {"error": refused.code, **refused.extra},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(PayloadTooLarge):
    """Raised from receive(); a PayrailError so any handler that meets it still answers 413,
    with the same message and `maxBytes` whether the body announced its length or not."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"The request body is larger than {max_bytes} bytes.", maxBytes=max_bytes)


class RequestLineText:
    """400 for a path or query string whose decoded text has a NUL or is not UTF-8.

    Every path and query parameter reaches a database lookup; PostgreSQL refuses a NUL with a
    500, and SQLite looked it up. Checked once here instead of in every route.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass")
        for part, raw in (("path", raw_path), ("query string", scope.get("query_string", b""))):
            reason = _line_refusal(raw)
            if reason is not None:
                return await _refuse_text(send, f"The request {part} {reason}.")
        await self.app(scope, receive, send)


def _line_refusal(raw: bytes) -> str | None:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return "is not valid UTF-8 once percent-decoded"
    return text_refusal(text)


async def _refuse_text(send: Any, message: str) -> None:
    body = json.dumps(
        {"success": False, "message": message, "data": {"error": "VALIDATION_ERROR"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
