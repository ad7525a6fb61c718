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

import contextlib
import multiprocessing
import os
import signal
import socket
from typing import Any

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
