"""Engine construction: one place that knows the differences between SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from payrail.db.sqlite import SQLITE_SYNCHRONOUS_DEFAULT, SQLiteEngine

PG_POOL_SIZE = 20
PG_POOL_OVERFLOW = 10
PG_STATEMENT_TIMEOUT_MS = 30_000
PG_LOCK_TIMEOUT_MS = 10_000
# `?pgbouncer=1` on a PostgreSQL URL: the server is a PgBouncer in transaction pooling mode.
PGBOUNCER_URL_PARAM = "pgbouncer"


def async_url(url: str) -> str:
    """Accept plain URLs (sqlite:///x, postgresql://u@h/db) and pick the async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(
        f"Unsupported database URL {parsed.drivername!r}: use sqlite:// or postgresql://"
    )


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for ONE statement, atomic on its own: autocommit on PostgreSQL (one round
    trip instead of BEGIN, statement, COMMIT); on SQLite a BEGIN IMMEDIATE transaction, which
    costs nothing extra in-process and keeps writers serialised."""
    if is_sqlite(engine) or engine.get_execution_options().get(PGBOUNCER_URL_PARAM):
        # Behind PgBouncer, an autocommit statement's prepare and execute could run on two
        # different server connections; inside a transaction they stay on one.
        async with engine.begin() as conn:
            yield conn
        return
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


def make_engine(
    url: str, pool_size: int = PG_POOL_SIZE, sqlite_synchronous: str = SQLITE_SYNCHRONOUS_DEFAULT
) -> AsyncEngine:
    url, behind_pgbouncer = _split_pgbouncer(url)
    aurl = async_url(url)
    if aurl.startswith("sqlite"):
        return SQLiteEngine(aurl, sqlite_synchronous)
    engine = create_async_engine(
        aurl,
        pool_size=pool_size,
        max_overflow=PG_POOL_OVERFLOW,
        pool_pre_ping=False,
        connect_args=_pgbouncer_connect_args() if behind_pgbouncer else _pg_connect_args(),
    )
    return engine.execution_options(pgbouncer=True) if behind_pgbouncer else engine


def _pg_connect_args() -> dict[str, Any]:
    return {"server_settings": pg_server_settings()}


def pg_server_settings() -> dict[str, str]:
    """The session settings of every direct PostgreSQL connection (the hot path's pool too)."""
    return {
        "statement_timeout": str(PG_STATEMENT_TIMEOUT_MS),
        "lock_timeout": str(PG_LOCK_TIMEOUT_MS),
    }


def _split_pgbouncer(url: str) -> tuple[str, bool]:
    """Remove `pgbouncer=1` from the URL's query (asyncpg would reject it); say if it was on."""
    parsed = make_url(url)
    raw = parsed.query.get(PGBOUNCER_URL_PARAM)
    if raw is None:
        return url, False
    on = str(raw).lower() in ("1", "true", "yes")
    stripped = parsed.difference_update_query([PGBOUNCER_URL_PARAM])
    return stripped.render_as_string(hide_password=False), on


def _pgbouncer_connect_args() -> dict[str, Any]:
    """PgBouncer in transaction pooling mode hands each transaction to any server connection,
    so a named prepared statement may be missing there, or exist already from another client.
    PgBouncer before 1.21 cannot track them: no statement caches (asyncpg's and SQLAlchemy's),
    and a unique name for each statement. Startup parameters other than the few PgBouncer
    tracks are refused by it: set the timeouts on the role instead (docs/deployment.md)."""
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__payrail_{uuid.uuid4().hex}__",
    }
