"""SQLite mechanics (db/sqlite.py): one writer per process, group commit, read-only readers.

SQLite only by nature: PostgreSQL's engine is SQLAlchemy's own pool, untouched by this module.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, exc, func, insert, select, text
from typer.testing import CliRunner

from payrail.bootstrap import SimulatedCrash
from payrail.db.engine import make_engine
from payrail.db.sqlite import SQLITE_GROUP_COMMIT_MAX, SQLiteEngine
from payrail.db.tables import jobs
from payrail.entrypoints.cli.app import app as cli_app
from payrail.jobs import queue


@pytest.fixture
def db_path(sqlite_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "payrail.db"
    shutil.copy(sqlite_template, path)
    return path


@pytest.fixture
async def engine(db_path: Path):
    engine = make_engine(f"sqlite:///{db_path}")
    assert isinstance(engine, SQLiteEngine)
    yield engine
    await engine.dispose()


class _Refused(Exception):
    pass


async def _job_ids(engine: SQLiteEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(jobs.c.id))).scalars())


async def test_queued_writers_share_a_commit_and_each_stays_all_or_nothing(engine):
    """40 concurrent write transactions: the ones queued behind an open transaction join its
    COMMIT; a failing one (an error, or a simulated crash) leaves none of its rows, while
    every other one keeps both of its rows."""
    commits = []
    event.listen(engine.writer.sync_engine, "commit", lambda conn: commits.append(1))
    failing = {3, 4, 17, 29}  # 3: fails in the middle of a group; 0 would fail as its first

    async def write(n: int) -> None:
        async with engine.begin() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id=f"job{n}:a")
            if n in failing:
                raise (SimulatedCrash if n % 2 else _Refused)(f"write {n}")
            await queue.enqueue(conn, "test", {}, 0, job_id=f"job{n}:b")

    outcomes = await asyncio.gather(*(write(n) for n in range(40)), return_exceptions=True)

    refused = {n for n, o in enumerate(outcomes) if isinstance(o, _Refused | SimulatedCrash)}
    assert refused == failing
    expected = {f"job{n}:{part}" for n in range(40) if n not in failing for part in "ab"}
    assert await _job_ids(engine) == expected
    assert 1 <= len(commits) < 40 - len(failing), "queued writers should share commits"


async def test_a_failing_first_transaction_leaves_the_next_one_intact(engine):
    async def first() -> None:
        async with engine.begin() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id="first")
            raise _Refused("first")

    async def second() -> None:
        async with engine.begin() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id="second")

    outcomes = await asyncio.gather(first(), second(), return_exceptions=True)
    assert isinstance(outcomes[0], _Refused) and outcomes[1] is None
    assert await _job_ids(engine) == {"second"}


def _insert_job(conn: sqlite3.Connection, job_id: str) -> None:
    conn.execute(
        "INSERT INTO jobs (id, kind, payload, state, run_at, attempts, max_attempts,"
        " created_at, updated_at) VALUES (?, 'test', '{}', 'queued', 0, 0, 1, 0, 0)",
        (job_id,),
    )


async def test_raw_units_share_the_group_commit_and_a_failing_one_leaves_no_row(engine):
    """run_write units (the payout hot path's) mixed with SQLAlchemy transactions in one
    group: a unit that fails after writing (an error, or a simulated crash) leaves none of its
    rows, every other member keeps both of its rows, and they share commits."""
    commits = []
    event.listen(engine.writer.sync_engine, "commit", lambda conn: commits.append(1))
    failing = {5, 13, 14, 26}  # none a multiple of 3

    def unit(n: int, conn: sqlite3.Connection) -> int:
        _insert_job(conn, f"job{n}:a")
        if n in failing:
            raise (SimulatedCrash if n % 2 else _Refused)(f"unit {n}")
        _insert_job(conn, f"job{n}:b")
        return n

    async def write(n: int) -> int:
        if n % 3 == 0:  # every third member through SQLAlchemy
            async with engine.begin() as conn:
                await queue.enqueue(conn, "test", {}, 0, job_id=f"job{n}:a")
                await queue.enqueue(conn, "test", {}, 0, job_id=f"job{n}:b")
            return n
        return await engine.run_write(functools.partial(unit, n))

    outcomes = await asyncio.gather(*(write(n) for n in range(30)), return_exceptions=True)

    refused = {n for n, o in enumerate(outcomes) if isinstance(o, _Refused | SimulatedCrash)}
    assert refused == failing
    assert all(outcomes[n] == n for n in range(30) if n not in failing)
    expected = {f"job{n}:{part}" for n in range(30) if n not in failing for part in "ab"}
    assert await _job_ids(engine) == expected
    assert 1 <= len(commits) < 30 - len(failing), "queued writers should share commits"


async def test_a_failing_first_unit_leaves_the_next_one_intact(engine):
    def first(conn: sqlite3.Connection) -> None:
        _insert_job(conn, "first")
        raise _Refused("first")

    outcomes = await asyncio.gather(
        engine.run_write(first),
        engine.run_write(lambda conn: _insert_job(conn, "second")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], _Refused) and outcomes[1] is None
    assert await _job_ids(engine) == {"second"}


async def test_a_failed_unit_answers_only_once_what_it_saw_is_committed(engine):
    """A unit refused because of an earlier member's write (a taken key, a spent balance)
    must not answer before that write is durable: its error comes after the group's COMMIT."""
    seen_committed = []

    async def earlier() -> None:
        async with engine.begin() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id="taken")

    def refused(conn: sqlite3.Connection) -> None:
        assert conn.execute("SELECT 1 FROM jobs WHERE id = 'taken'").fetchone() is not None
        raise _Refused("taken")

    async def later() -> None:
        try:
            await engine.run_write(refused)
        except _Refused:
            seen_committed.append("taken" in engine.read_inline(_all_job_ids))
            raise

    outcomes = await asyncio.gather(earlier(), later(), return_exceptions=True)
    assert outcomes[0] is None and isinstance(outcomes[1], _Refused)
    assert seen_committed == [True]


def _all_job_ids(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT id FROM jobs")}


async def test_the_inline_reader_never_sees_the_open_group(engine):
    """read_inline answers from committed data only: a row of the writer's open transaction,
    which may still roll back, is invisible to it until its COMMIT."""
    async with engine.begin() as conn:
        await queue.enqueue(conn, "test", {}, 0, job_id="uncommitted")
        assert engine.read_inline(_all_job_ids) == set()
    assert engine.read_inline(_all_job_ids) == {"uncommitted"}


async def test_the_inline_reader_never_waits_on_the_loop_nor_writes(engine):
    """It runs on the loop's thread: no busy handler (a busy file raises ReaderBusy at once,
    and the caller goes to the pool's readers), and read-only like them."""

    def pragmas(conn: sqlite3.Connection) -> tuple[int, int]:
        busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        return busy, conn.execute("PRAGMA query_only").fetchone()[0]

    assert engine.read_inline(pragmas) == (0, 1)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        engine.read_inline(lambda conn: _insert_job(conn, "through-the-inline-reader"))
    assert engine.read_inline(_all_job_ids) == set()


async def test_a_group_never_exceeds_its_size_limit(engine):
    commits = []
    event.listen(engine.writer.sync_engine, "commit", lambda conn: commits.append(1))
    total = SQLITE_GROUP_COMMIT_MAX * 2 + 1

    async def write(n: int) -> None:
        async with engine.begin() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id=f"job{n}")

    await asyncio.gather(*(write(n) for n in range(total)))
    assert len(await _job_ids(engine)) == total
    assert len(commits) >= 3


async def test_readers_are_read_only(engine):
    """A write through connect() would race the writer: it fails loudly instead."""
    with pytest.raises(exc.OperationalError, match="readonly"):
        async with engine.connect() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id="through-a-reader")
    assert await _job_ids(engine) == set()


async def test_a_reader_sees_one_snapshot_while_the_writer_commits(engine):
    async with engine.connect() as conn:
        before = await conn.scalar(select(func.count()).select_from(jobs))
        async with engine.begin() as wconn:
            await queue.enqueue(wconn, "test", {}, 0, job_id="during-the-read")
        assert await conn.scalar(select(func.count()).select_from(jobs)) == before
    assert await _job_ids(engine) == {"during-the-read"}


async def test_another_process_lock_makes_the_writer_wait_without_blocking_the_loop(
    engine, db_path
):
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the file's write lock

    async def write() -> None:
        async with engine.begin() as conn:
            await queue.enqueue(conn, "test", {}, 0, job_id="after-the-lock")

    task = asyncio.create_task(write())
    ticks = 0
    while ticks < 20:  # the loop keeps running while the writer waits
        await asyncio.sleep(0.005)
        ticks += 1
    assert not task.done()
    other.execute("COMMIT")
    other.close()
    await task
    assert await _job_ids(engine) == {"after-the-lock"}


@pytest.mark.parametrize(("setting", "pragma_value"), [("FULL", 2), ("NORMAL", 1)])
async def test_the_durability_setting_reaches_the_writer(db_path, setting, pragma_value):
    engine = make_engine(f"sqlite:///{db_path}", sqlite_synchronous=setting)
    try:
        async with engine.begin() as conn:
            assert await conn.scalar(text("PRAGMA synchronous")) == pragma_value
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
    finally:
        await engine.dispose()


async def test_dispose_keeps_what_was_committed_and_closes_the_writer(db_path):
    engine = make_engine(f"sqlite:///{db_path}")
    async with engine.begin() as conn:
        await conn.execute(
            insert(jobs).values(
                id="kept",
                kind="test",
                payload="{}",
                state="queued",
                run_at=0,
                attempts=0,
                max_attempts=1,
                created_at=0,
                updated_at=0,
            )
        )
    await engine.dispose()
    check = sqlite3.connect(db_path)
    assert check.execute("SELECT id FROM jobs").fetchall() == [("kept",)]
    check.close()


def test_serve_refuses_several_processes_on_sqlite(tmp_path, monkeypatch):
    monkeypatch.setenv("PAYRAIL_DATABASE_URL", f"sqlite:///{tmp_path}/payrail.db")
    result = CliRunner().invoke(cli_app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "--workers 2 needs PostgreSQL" in result.output
    assert not (tmp_path / "payrail.db").exists(), "refused before migrating anything"
