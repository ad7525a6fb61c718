"""Which exceptions mean "the database is unreachable right now" (not a bug, not bad input).

A PostgreSQL restart or failover, a PgBouncer restart or a refused connection surface as
different exception types depending on when they hit: while connecting (OSError), on a
pooled connection the server closed (asyncpg's ConnectionDoesNotExistError, wrapped by
SQLAlchemy as an invalidated DBAPIError), or as a server error of SQLSTATE class 08
(connection exception), 57P01-57P03 (the server is shutting down or starting up) or 53300
(too many connections).
The API answers all of them 503 with Retry-After (api/errors.py); the outcome of a write cut
off mid-transaction is unknown to the caller, who retries with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from sqlalchemy.exc import DBAPIError

RETRY_AFTER_S = 2  # what a client is told to wait before retrying
# shutdown, crash, starting up; and too many connections (a refusal at connect time)
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
CONNECTION_SQLSTATE_CLASS = "08"
CHAIN_DEPTH_MAX = 8  # exceptions wrap exceptions; look this deep at most
NETWORK_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ETIMEDOUT, errno.EPIPE}
)  # beyond ConnectionError's (refused, reset, aborted)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < CHAIN_DEPTH_MAX:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__, getattr(current, "orig", None)])
    return seen


def is_database_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the database could not be reached or went away."""
    for current in _causes(exc):
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (ConnectionError, asyncio.TimeoutError, TimeoutError)):
            return True
        if isinstance(current, socket.gaierror) or (
            isinstance(current, OSError) and current.errno in NETWORK_ERRNOS
        ):
            return True  # the database's host cannot be resolved or reached
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith(CONNECTION_SQLSTATE_CLASS) or sqlstate in UNAVAILABLE_SQLSTATES
        ):
            return True
        name = type(current).__name__  # asyncpg's, without importing the driver here
        if name == "ConnectionDoesNotExistError" or (
            name == "InterfaceError" and "connection is closed" in str(current)
        ):
            return True
    return False
