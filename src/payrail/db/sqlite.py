"""SQLite at its real speed: one writer per process, a few readers, PRAGMAs once.

SQLite has one writer at a time per database file. Racing for that lock from many
connections (each waiting in SQLite's sleeping busy handler) is what made the embedded
default slow, so this module owns how payrail uses SQLite instead:

- Writes (`engine.begin()`) run on ONE long-lived connection per process that takes
  BEGIN IMMEDIATE; they queue for it in-process (an asyncio lock, first come first served)
  instead of colliding. Its statements run on the event loop's own thread: a statement on
  a local file takes microseconds, far less than a hop to a driver thread and back. Only
  COMMIT, which waits for the disk, runs in a thread; the transactions that queued up
  meanwhile share the next COMMIT (group commit, see _GroupCommit).
- Reads (`engine.connect()`) take one of SQLITE_READERS_MAX read-only connections, each on
  its own aiosqlite thread, in a deferred transaction: a consistent snapshot of the WAL
  that the writer never blocks, and a long report (reconciliation) never stalls the loop.
- A caller that wants no SQLAlchemy at all (the payout engine's storage, db/payout_store/sqlite.py)
  hands `run_write` a synchronous function of the raw sqlite3 connection: it runs as one
  member of the group, its statements with no await between them, under a SAVEPOINT. For
  reads, `read_inline` runs a synchronous function on a read-only connection on the loop's
  own thread: committed data only, as the readers see it, without their thread hop.
- Another process on the same file (a `payrail worker`, a CLI command) is still excluded
  by BEGIN IMMEDIATE; the writer then retries with an asyncio sleep, never blocking the
  loop, for up to SQLITE_BUSY_TIMEOUT_MS. `payrail serve --workers N` refuses N > 1 on
  SQLite (see cli.py): processes would only take turns at the one file lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only

SQLITE_BUSY_TIMEOUT_MS = 30_000  # another process holding the file's write lock
SQLITE_BUSY_RETRY_MS_MAX = 50  # the writer's sleep between BEGIN IMMEDIATE attempts, at most
SQLITE_GROUP_COMMIT_MAX = 64  # write transactions sharing one COMMIT, at most
SQLITE_READERS_MAX = 4
# FULL: a commit is on disk (the WAL fsynced) before anyone hears of it. What NORMAL would
# save and what a power loss could then drop: docs/operations.md, "SQLite durability".
SQLITE_SYNCHRONOUS_DEFAULT = "FULL"
SQLITE_SYNCHRONOUS_CHOICES = ("FULL", "NORMAL")

T = TypeVar("T")


class ReaderBusy(Exception):
    """The inline reader found the file busy (a WAL reader rarely does: recovery, a
    checkpoint resetting the log). It never waits on the loop's thread: use a reader from
    the pool (`engine.connect()`), whose busy handler sleeps on its own thread."""


class SQLiteEngine(AsyncEngine):
    """An AsyncEngine whose `begin()` is the one writer and `connect()` a reader pool."""

    def __init__(self, aurl: str, synchronous: str = SQLITE_SYNCHRONOUS_DEFAULT) -> None:
        if synchronous not in SQLITE_SYNCHRONOUS_CHOICES:
            raise ValueError(f"synchronous must be one of {SQLITE_SYNCHRONOUS_CHOICES}")
        readers = create_async_engine(
            aurl, poolclass=AsyncAdaptedQueuePool, pool_size=SQLITE_READERS_MAX, max_overflow=0
        )
        _reader_connections(readers.sync_engine)
        super().__init__(readers.sync_engine)
        path = make_url(aurl).database or ""

        async def open_writer() -> _InlineConnection:
            # Used on the loop's thread, except COMMIT, which waits for the disk in a thread.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            return _InlineConnection(conn)

        self.writer = create_async_engine(
            aurl, async_creator=open_writer, poolclass=AsyncAdaptedQueuePool, pool_size=1
        )
        _writer_connection(self.writer.sync_engine, synchronous)
        self._group = _GroupCommit(self.writer)
        self._path = path
        self._inline_reader: sqlite3.Connection | None = None

    def begin(self) -> Any:  # an async context manager, as AsyncEngine.begin's
        return self._group.transaction()

    async def run_write(self, unit: Callable[[sqlite3.Connection], T]) -> T:
        """Run `unit(connection)` as one write transaction of the group; its result once the
        COMMIT that holds its writes has returned. If it raises, none of its writes exist."""
        return await self._group.run(unit)

    def read_inline(self, unit: Callable[[sqlite3.Connection], T]) -> T:
        """Run `unit(connection)` in one read transaction on the loop's thread: a consistent
        snapshot of committed data, never the writer's open group. Raises ReaderBusy instead
        of waiting."""
        conn = self._inline_reader
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            _pragmas(conn, "PRAGMA busy_timeout=0", "PRAGMA query_only=ON")
            self._inline_reader = conn
        try:
            conn.execute("BEGIN")
            try:
                return unit(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if _is_busy_text(str(error)):
                raise ReaderBusy(str(error)) from None
            raise

    async def dispose(self, close: bool = True) -> None:
        if self._inline_reader is not None:
            self._inline_reader.close()
            self._inline_reader = None
        await self._group.close()
        await self.writer.dispose(close)
        await super().dispose(close)


class _GroupCommit:
    """Write transactions on the one writer connection, several per COMMIT when they queue.

    A transaction takes the writer (an asyncio lock, first come first served) and runs its
    statements; if an earlier transaction is still waiting for its COMMIT, it runs inside
    that one's BEGIN IMMEDIATE under a SAVEPOINT, so its failure undoes its own writes only.
    When its block ends it waits for the COMMIT, which a separate task issues once the
    transactions queued behind it have had their turn (at most SQLITE_GROUP_COMMIT_MAX):
    one fsync for the group instead of one each. Nobody hears "committed" before the
    COMMIT that contains their writes has returned; if that COMMIT fails, every member of
    the group gets its error, and none of their writes exist. All or nothing per request.
    """

    def __init__(self, writer: AsyncEngine) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()
        self._conn: AsyncConnection | None = None
        self._tx: Any = None  # the open BEGIN IMMEDIATE, shared by the group
        self._members: list[asyncio.Future[None]] = []
        self._commit_task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self._lock:
            if len(self._members) >= SQLITE_GROUP_COMMIT_MAX:
                await self._commit()
            if self._conn is None:
                self._conn = await self._writer.connect()
            conn = self._conn
            savepoint = await conn.begin_nested() if self._tx is not None else None
            if savepoint is None:
                self._tx = await conn.begin()
            try:
                yield conn
            except BaseException:
                if savepoint is not None:
                    await savepoint.rollback()
                else:  # the group's first: nobody else is in this transaction yet
                    tx, self._tx = self._tx, None
                    await tx.rollback()
                raise
            if savepoint is not None:
                await savepoint.commit()
            committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._members.append(committed)
            if self._commit_task is None:
                self._commit_task = asyncio.create_task(self._commit_when_free())
        await committed

    async def run(self, unit: Callable[[sqlite3.Connection], T]) -> T:
        """`unit` on the raw sqlite3 connection as one member of the group (see run_write).

        No await between its statements: it runs whole while this process holds the writer.
        A unit that raises after other members' writes is undone to its SAVEPOINT, and its
        error is raised only once their COMMIT is done: what it saw (a key taken, a balance
        spent) is committed before anyone acts on its answer.
        """
        async with self._lock:
            if len(self._members) >= SQLITE_GROUP_COMMIT_MAX:
                await self._commit()
            if self._conn is None:
                self._conn = await self._writer.connect()
            first = self._tx is None
            if first:
                self._tx = await self._conn.begin()
            raw = _raw_sqlite(self._conn)
            if not first:
                raw.execute("SAVEPOINT payrail_unit")
            committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                result = unit(raw)
            except BaseException as error:
                if first:  # nobody else is in this transaction yet
                    tx, self._tx = self._tx, None
                    await tx.rollback()
                    raise
                raw.execute("ROLLBACK TO payrail_unit")
                raw.execute("RELEASE payrail_unit")
                failure = error
            else:
                failure = None
                if not first:
                    raw.execute("RELEASE payrail_unit")
            self._members.append(committed)
            if self._commit_task is None:
                self._commit_task = asyncio.create_task(self._commit_when_free())
        await committed
        if failure is not None:
            raise failure
        return result

    async def _commit_when_free(self) -> None:
        async with self._lock:  # behind every transaction already queued for the writer
            self._commit_task = None
            await self._commit()

    async def _commit(self) -> None:
        """COMMIT the group (the lock is held) and tell each member how it went."""
        tx, members = self._tx, self._members
        self._tx, self._members = None, []
        if tx is None:
            return
        try:
            await tx.commit()
        except BaseException as error:
            with contextlib.suppress(Exception):
                await tx.rollback()
            for member in members:
                if not member.done():
                    member.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for member in members:
            if not member.done():
                member.set_result(None)

    async def close(self) -> None:
        async with self._lock:
            await self._commit()
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def _pragmas(dbapi_conn: Any, *statements: str) -> None:
    cur = dbapi_conn.cursor()
    for statement in ("PRAGMA foreign_keys=ON", *statements):
        cur.execute(statement)
    cur.close()


def _writer_connection(engine: Engine, synchronous: str) -> None:
    """The writer: WAL (persistent in the file), our durability, BEGIN IMMEDIATE.

    Its busy timeout is 0: a BEGIN that finds another process's lock is retried here with an
    asyncio sleep, since SQLite's own busy handler would sleep on the event loop's thread.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        _pragmas(
            dbapi_conn,
            "PRAGMA busy_timeout=0",
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={synchronous}",
        )

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause_s = 0.001
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except exc.OperationalError as error:
                if not _is_busy(error) or time.monotonic() >= deadline:
                    raise
            await_only(asyncio.sleep(pause_s))
            pause_s = min(pause_s * 2, SQLITE_BUSY_RETRY_MS_MAX / 1000)


def _is_busy(error: exc.OperationalError) -> bool:
    return _is_busy_text(str(error.orig))


def _is_busy_text(message: str) -> bool:
    return "database is locked" in message or "database is busy" in message


def _raw_sqlite(conn: AsyncConnection) -> sqlite3.Connection:
    """The sqlite3 connection under the writer's AsyncConnection (no await: attribute reads)."""
    inline = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    assert isinstance(inline, _InlineConnection)
    return inline.raw_connection


def _reader_connections(engine: Engine) -> None:
    """Readers: read-only (a write through one fails loudly instead of racing the writer),
    each `connect()` block one deferred transaction, i.e. one consistent snapshot.

    pysqlite's own transaction handling is bypassed (isolation_level=None), as SQLAlchemy's
    docs recommend, so that BEGIN is ours.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        _pragmas(
            dbapi_conn, f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "PRAGMA query_only=ON"
        )

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN")


class _InlineConnection:
    """aiosqlite's connection interface over a sqlite3 connection used on the loop's thread.

    SQLAlchemy's aiosqlite dialect awaits these coroutines; none of them suspends, so a
    statement costs what SQLite costs and no thread hop.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def raw_connection(self) -> sqlite3.Connection:
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def cursor(self) -> _InlineCursor:
        return _InlineCursor(self._conn.cursor())

    async def execute(self, *args: Any, **kw: Any) -> _InlineCursor:
        return _InlineCursor(self._conn.execute(*args, **kw))

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def commit(self) -> None:
        # The one call that waits for the disk (fsync): off the loop, so the server goes on
        # answering, and the writer's next transactions queue up for the next group.
        await asyncio.to_thread(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        self._conn.close()


class _InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def execute(self, *args: Any) -> _InlineCursor:
        self._cursor.execute(*args)
        return self

    async def executemany(self, *args: Any) -> _InlineCursor:
        self._cursor.executemany(*args)
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size or self._cursor.arraysize)

    async def close(self) -> None:
        self._cursor.close()
