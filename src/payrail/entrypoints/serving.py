"""Several server processes on one port, each with its own SO_REUSEPORT listening socket.

Why not uvicorn's own `workers=N`: its processes share one listening socket, and on Linux the
process that accepted last is woken first, so keep-alive clients pile onto one process. Measured
with `payrail bench` (2 processes, 20 clients): one process at 76 % of a core, the other at
7 %, so a second process bought almost nothing. With a socket per process the kernel spreads
new connections over them by a hash of the connection.

The parent only starts the processes and relays SIGINT/SIGTERM to them; each shuts down
gracefully on its own (uvicorn's handlers), and the parent exits when they all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import socket
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("payrail.entrypoints.serving")
LISTEN_BACKLOG = 2048
APP_FACTORY = "payrail.entrypoints.http.main:app_from_env"


def reuseport_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


HTTP_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
_408_BODY = (
    b'{"success":false,"message":"The request headers did not arrive in time.",'
    b'"data":{"error":"REQUEST_TIMEOUT"}}'
)


def header_timeout_protocol(timeout_ms: int) -> Any:
    """uvicorn's HTTP protocol with a deadline on reading request headers (slow loris).

    uvicorn times out an idle keep-alive connection, but not one that is sending its headers:
    a client that sends a byte now and then, or opens a connection and sends nothing, held it
    forever (1,500 such connections stayed open 60 s). Here the headers must be complete
    within `timeout_ms` of the connection opening, or of the first byte of each next request;
    otherwise the connection is answered 408 and closed. A body, once the headers are in, is
    bounded by the app (BodyLimit) and the request's own handling, not by this deadline.
    """
    return functools.partial(_HeaderDeadline, timeout_s=timeout_ms / 1000)


# What uvicorn's http="auto" picks; httptools is locked (uvicorn[standard]). Its parser's
# callbacks (on_message_begin, on_headers_complete) are where the deadline starts and stops.
class _HeaderDeadline(HttpToolsProtocol):  # type: ignore[misc]
    def __init__(self, *args: Any, timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_message_begin(self) -> None:  # the first bytes of a request (httptools)
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self._header_timeout_s, self._headers_too_slow
            )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if not busy:  # between requests, or mid-headers: no response of ours is under way
            self.transport.write(HTTP_408 % (len(_408_BODY), _408_BODY))
            log.info("http_header_timeout", client=_client(self.client))
        self.transport.close()


def _client(address: Any) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None


def _child(host: str, port: int, uvicorn_options: dict[str, Any]) -> None:
    import uvicorn

    sock = reuseport_socket(host, port)
    config = uvicorn.Config(APP_FACTORY, factory=True, **uvicorn_options)
    uvicorn.Server(config).run(sockets=[sock])


def run(host: str, port: int, processes: int, **uvicorn_options: Any) -> None:
    """Serve on host:port with `processes` processes (1: in this process, no parent)."""
    import uvicorn

    # log_config=None: uvicorn installs no plain-text handlers of its own; its records go to
    # the root logger, which payrail renders as JSON (support/logging.py).
    uvicorn_options.setdefault("log_config", None)
    if processes == 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(
            APP_FACTORY, factory=True, host=host, port=port, workers=processes, **uvicorn_options
        )
        return
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_child, args=(host, port, uvicorn_options), daemon=False)
        for _ in range(processes)
    ]
    for child in children:
        child.start()

    def relay(signum: int, _frame: Any) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    for child in children:
        child.join()
