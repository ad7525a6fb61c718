"""Structured JSON logs (structlog), one line per event, with the request id bound.

What may be logged: ids (request, payout, order, callback, job), states, codes, durations.
What never is: API keys, webhook secrets, signatures, payment methods, callback payloads.
Call sites pass none of those; `redact` is the net under them, masking any field whose
name says it is one.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
SENSITIVE_KEY_PARTS = (
    "apikey",
    "api_key",
    "secret",
    "authorization",
    "password",
    "signature",
    "macaroon",
    "token",
    "payload",
    "payment_method",
)


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if any(part in key.lower() for part in SENSITIVE_KEY_PARTS):
            event[key] = REDACTED
    return event


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """payrail's events and every library's stdlib log records (uvicorn, httpx, stripe, …)
    as one JSON object per line, through the same processors (redaction included)."""
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = _StdlibHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, redact],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    # Handlers another library installed on the root (basicConfig) would print plain text.
    for old in list(root.handlers):
        if isinstance(old, logging.StreamHandler) and old.stream in (sys.stderr, sys.stdout):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers (its default log config) print plain text: route to the root.
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: LineWriter(stream),
        # Not cached: a reconfiguration (CLI commands, tests) reaches every module's logger.
        cache_logger_on_first_use=False,
    )


class _StdlibHandler(logging.Handler):
    """The root logger's handler: each record rendered as JSON, written like payrail's own."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._writer = LineWriter(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a library's malformed record must not take a request down
            line = '{"event": "unformattable_log_record", "level": "error"}'
        self._writer.msg(line)


class LineWriter:
    """The loggers' output: one line per event on `stream`, or on whatever sys.stderr is at the
    time of the write (a CLI runner or test may swap it and close the old one).

    A log line is never worth a payment: a closed or broken stream loses the line, and the
    saga or job that logged it carries on.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=self._stream or sys.stderr, flush=True)

    debug = info = warning = warn = error = err = critical = fatal = exception = msg
