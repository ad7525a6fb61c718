"""Engine construction: one place that knows the differences between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from payrail.db.sqlite import SQLITE_SYNCHRONOUS_DEFAULT, SQLiteEngine

PG_POOL_SIZE = 20
PG_POOL_OVERFLOW = 10
PG_STATEMENT_TIMEOUT_MS = 30_000
PG_LOCK_TIMEOUT_MS = 10_000


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
    if is_sqlite(engine):
        async with engine.begin() as conn:
            yield conn
        return
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


def make_engine(
    url: str, pool_size: int = PG_POOL_SIZE, sqlite_synchronous: str = SQLITE_SYNCHRONOUS_DEFAULT
) -> AsyncEngine:
    aurl = async_url(url)
    if aurl.startswith("sqlite"):
        return SQLiteEngine(aurl, sqlite_synchronous)
    return create_async_engine(
        aurl,
        pool_size=pool_size,
        max_overflow=PG_POOL_OVERFLOW,
        pool_pre_ping=False,
        connect_args={
            "server_settings": {
                "statement_timeout": str(PG_STATEMENT_TIMEOUT_MS),
                "lock_timeout": str(PG_LOCK_TIMEOUT_MS),
            }
        },
    )
