"""Engine construction: one place that knows the differences between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

# SQLite: one writer connection per process; writes queue for it in-process (FIFO) for up
# to SQLITE_WRITE_WAIT_MS, and wait up to SQLITE_BUSY_TIMEOUT_MS for another process.
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_WRITE_WAIT_MS = 30_000
SQLITE_READERS_MAX = 4
# FULL: a commit is on disk (fsynced WAL) before the caller hears of it; see
# docs/operations.md ("SQLite durability") for what NORMAL would save and what it risks.
SQLITE_SYNCHRONOUS = "FULL"
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


def make_engine(url: str, pool_size: int = PG_POOL_SIZE) -> AsyncEngine:
    aurl = async_url(url)
    if aurl.startswith("sqlite"):
        return SQLiteEngine(aurl)
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


class SQLiteEngine(AsyncEngine):
    """SQLite at its real speed: one writer per process, readers beside it.

    `begin()` (every write) runs on ONE long-lived connection that takes BEGIN IMMEDIATE;
    writers queue for it in this process (a pool of one, first come first served) instead
    of racing for SQLite's file lock and sleeping in its busy handler. `connect()` (reads)
    takes one of SQLITE_READERS_MAX read-only connections in a deferred transaction: a
    consistent snapshot (WAL), never blocked by the writer. Connections are kept, so their
    PRAGMAs run once, not per use. PostgreSQL never sees this class.
    """

    def __init__(self, aurl: str) -> None:
        readers = create_async_engine(
            aurl, poolclass=AsyncAdaptedQueuePool, pool_size=SQLITE_READERS_MAX, max_overflow=0
        )
        _sqlite_connections(readers.sync_engine, begin="BEGIN", query_only=True)
        super().__init__(readers.sync_engine)
        self.writer = create_async_engine(
            aurl,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_WRITE_WAIT_MS / 1000,
        )
        _sqlite_connections(self.writer.sync_engine, begin="BEGIN IMMEDIATE", query_only=False)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.writer.begin() as conn:
            yield conn

    async def dispose(self, close: bool = True) -> None:
        await self.writer.dispose(close)
        await super().dispose(close)


def _sqlite_connections(engine: Engine, *, begin: str, query_only: bool) -> None:
    """PRAGMAs once per connection, and our own BEGIN.

    pysqlite's own transaction handling is bypassed (isolation_level=None), as SQLAlchemy's
    docs recommend, so that BEGIN is ours: IMMEDIATE for the writer (it holds the file's
    write lock from its first statement, so a conditional UPDATE sees the latest committed
    row), deferred for readers (a snapshot, no lock). `query_only` makes a write through a
    reader fail loudly instead of racing the writer.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not query_only:
            cur.execute("PRAGMA journal_mode=WAL")  # persistent in the file; set by the writer
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cur.execute("PRAGMA foreign_keys=ON")
        if query_only:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(begin)
