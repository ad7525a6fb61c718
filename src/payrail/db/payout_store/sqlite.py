"""The payout engine's storage on SQLite: raw sqlite3 on the one writer connection.

A reservation or a group of final transitions is a synchronous function run as one member of
the writer's group commit (db/sqlite.py `run_write`): BEGIN IMMEDIATE is shared with the
transactions queued beside it, this unit sits under its own SAVEPOINT, and its caller hears
"committed" only once the group's COMMIT has returned. The one writer is the lock: nothing
another transaction writes can come between what a unit reads and what it writes. A unit
that raises is rolled back whole.

SQL strings are written once (an INSERT once per column set); sqlite3 keeps them prepared.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc

from payrail.db.payout_store import (
    TABLES,
    DuplicateKey,
    Entry,
    Final,
    GroupExtra,
    OnFinal,
    Writes,
    snapshot,
)
from payrail.db.sqlite import ReaderBusy, SQLiteEngine
from payrail.domain import payout_engine as engine
from payrail.ledger import ledger
from payrail.ledger.accounts import project_account

_BOOLEANS = {"payouts": ("charge_posted",), "recipients": ("suspended",)}

LOOKUP_PAYOUT_SQL = "SELECT * FROM payouts WHERE project_id = ? AND idempotency_key = ?"
LOOKUP_RECIPIENT_SQL = "SELECT * FROM recipients WHERE project_id = ? AND gamertag_key = ?"
PROJECT_SQL = (
    "SELECT recipient_failures_max, recipient_failure_window_s, recipient_block_s"
    " FROM projects WHERE id = ?"
)
ACCOUNT_SQL = (
    "SELECT credits_posted - debits_posted - debits_pending, allow_negative"
    " FROM accounts WHERE id = ?"
)
RECENT_SQL = (
    "SELECT created_at FROM payouts WHERE project_id = ? AND lower(gamertag) = ?"
    " AND player_id IS NULL AND created_at > ? ORDER BY created_at DESC LIMIT ?"
)
RECENT_PLAYER_SQL = (
    "SELECT created_at FROM payouts WHERE project_id = ? AND player_id = ?"
    " AND created_at > ? ORDER BY created_at DESC LIMIT ?"
)
CAPS_SQL = (
    "SELECT per_payout_max_sats, per_player_daily_max_sats, project_daily_max_sats,"
    " approval_above_sats FROM project_limits WHERE project_id = ?"
)
# The payouts a daily cap may count, summed per bucket of created_at (the rules drop the
# voided ones): a project's, a recipient's without a player id, a player's.
_SPENT = (
    "SELECT created_at / {b} * {b}, state, charge_posted, sum(amount) FROM payouts"
    " WHERE project_id = ? {where} AND created_at > ? GROUP BY 1, 2, 3"
).replace("{b}", str(engine.SPENT_BUCKET_MS))
SPENT_PROJECT_SQL = _SPENT.replace("{where}", "")
SPENT_RECIPIENT_SQL = _SPENT.replace("{where}", "AND lower(gamertag) = ? AND player_id IS NULL")
SPENT_PLAYER_SQL = _SPENT.replace("{where}", "AND player_id = ?")
FAILED_SQL = (
    "SELECT updated_at, created_at FROM payouts WHERE project_id = ? AND lower(gamertag) = ?"
    " AND created_at > ? AND state = 'failed' AND updated_at > ?"
    " ORDER BY updated_at DESC LIMIT ?"
)
HASH_SQL = "SELECT id, state, charge_posted FROM payouts WHERE payment_hash = ? LIMIT ?"
INTERNAL_SQL = "SELECT id FROM payouts WHERE project_id = ? AND internal_id = ? LIMIT 1"
QUOTE_USE_SQL = "SELECT payout_id FROM quote_uses WHERE quote_id = ?"
# The columns whose unique index can refuse a row decided as new (DuplicateKey.what).
UNIQUE_COLUMNS = ("idempotency_key", "payment_hash", "internal_id", "pending_id", "quote_id")
HASH_ROWS_MAX = 16  # payouts read per payment hash (all but one of them are voided)
DELTA_SQL = (
    "UPDATE accounts SET debits_pending = debits_pending + ?,"
    " debits_posted = debits_posted + ?, credits_pending = credits_pending + ?,"
    " credits_posted = credits_posted + ? WHERE id = ?"
)
JOB_DONE_SQL = (
    "UPDATE jobs SET state = 'done', lease_until = NULL, locked_by = NULL, updated_at = ?"
    " WHERE id = ?"
)
TRANSITION_SQL = (
    "UPDATE payouts SET state = ?, updated_at = ?, state_cause = ?, charge_posted = ?,"
    " settled_at = COALESCE(?, settled_at), failure_code = COALESCE(?, failure_code),"
    " failure_reason = CASE WHEN ? IS NULL THEN failure_reason ELSE ? END"
    " WHERE id = ? AND state = ? RETURNING *"
)


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _typed(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row typed as SQLAlchemy would type it (booleans as bool)."""
    for column in _BOOLEANS.get(table, ()):
        if row[column] is not None:
            row[column] = bool(row[column])
    return row


def _mapping(table: str, cursor: sqlite3.Cursor, values: Iterable[Any]) -> dict[str, Any]:
    return _typed(table, dict(zip((d[0] for d in cursor.description), values, strict=True)))


class SqlitePayoutStore:
    def __init__(self, engine_: SQLiteEngine) -> None:
        self._engine = engine_
        self.calls = 0

    async def lookup(
        self, project_id: str, idempotency_key: str | None, recipient_key: str | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        self.calls += 1

        def read(conn: sqlite3.Connection) -> tuple[Any, Any]:
            return _lookup(conn.execute, project_id, idempotency_key, recipient_key)

        try:
            return self._engine.read_inline(read)
        except ReaderBusy:  # the pool's readers wait the busy file out on their own thread
            return await _pooled(self._engine, project_id, idempotency_key, recipient_key)

    async def reserve(
        self,
        entries: Sequence[Entry],
        limits: engine.Limits,
        extra: GroupExtra | None = None,
    ) -> list[engine.Decision]:
        self.calls += 1
        return await self._write(functools.partial(_reserve, entries, limits, extra))

    async def finalize(self, finals: Sequence[Final], on_final: OnFinal) -> list[Any]:
        self.calls += 1
        return await self._write(functools.partial(_finalize, finals, on_final))

    async def _write(self, unit: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return await self._engine.run_write(unit)
        except sqlite3.IntegrityError as error:
            text = str(error)
            for what in UNIQUE_COLUMNS:
                if what in text:
                    raise DuplicateKey(what) from None
            raise _wrapped(error) from None
        except sqlite3.Error as error:
            raise _wrapped(error) from None

    async def aclose(self) -> None:
        return None  # the engine owns the connections


def _wrapped(error: sqlite3.Error) -> sa_exc.DBAPIError:
    """A driver error as SQLAlchemy raises it, so callers map one kind of database error."""
    return sa_exc.DBAPIError.instance(None, None, error, sqlite3.Error)


def _lookup(execute: Callable[..., sqlite3.Cursor], project_id: str, key: Any, recipient: Any):
    payout = found_recipient = None
    if key is not None:
        cursor = execute(LOOKUP_PAYOUT_SQL, (project_id, key))
        row = cursor.fetchone()
        payout = None if row is None else _mapping("payouts", cursor, row)
    if recipient is not None:
        cursor = execute(LOOKUP_RECIPIENT_SQL, (project_id, recipient))
        row = cursor.fetchone()
        found_recipient = None if row is None else _mapping("recipients", cursor, row)
    return payout, found_recipient


async def _pooled(
    engine_: SQLiteEngine, project_id: str, key: Any, recipient: Any
) -> tuple[Any, Any]:
    """_lookup on a pool reader, in one snapshot."""
    found: list[Any] = [None, None]
    async with engine_.connect() as conn:
        for i, (table, sql, value) in enumerate(
            (("payouts", LOOKUP_PAYOUT_SQL, key), ("recipients", LOOKUP_RECIPIENT_SQL, recipient))
        ):
            if value is not None:
                result = await conn.exec_driver_sql(sql, (project_id, value))
                row = result.first()
                if row is not None:
                    found[i] = _typed(table, dict(zip(result.keys(), row, strict=True)))
    return found[0], found[1]


def _reserve(
    entries: Sequence[Entry],
    limits: engine.Limits,
    extra: GroupExtra | None,
    conn: sqlite3.Connection,
) -> list[engine.Decision]:
    """Load, decide, write: one member of the writer's group (the writer is the lock)."""
    snap = snapshot(entries, limits, **_load(conn, entries, limits))
    items, ids = [e.item for e in entries], [e.payout_id for e in entries]
    decisions = engine.decide(items, snap, limits, ids)
    reserved = [e for e, d in zip(entries, decisions, strict=True) if d is engine.RESERVE]
    taken = [w for e, d in zip(entries, decisions, strict=True) if (w := e.writes_for(d))]
    if taken:
        writes = Writes()
        for one in taken:
            writes.add(one)
        if extra is not None and reserved:
            writes.add(extra(reserved))
        _apply(conn, writes, 0)
    return decisions


def _load(conn: sqlite3.Connection, entries: Sequence[Entry], limits: engine.Limits) -> dict:
    execute = conn.execute
    items = [e.item for e in entries]
    now_ms = min(i.now_ms for i in items)
    updated_after, created_after = engine.failure_since_ms(now_ms)
    projects: dict[str, Any] = {}
    accounts: dict[str, tuple[int, bool]] = {}
    caps: dict[str, tuple[int | None, ...]] = {}
    spent: dict[tuple[str, str | None], list[tuple[int, str, bool, int]]] = {}
    day_since = now_ms - engine.DAY_MS
    for pid in sorted({i.project_id for i in items}):
        row = execute(PROJECT_SQL, (pid,)).fetchone()
        account = execute(ACCOUNT_SQL, (project_account(pid),)).fetchone()
        if row is not None and account is not None:
            projects[pid] = tuple(row)
            accounts[project_account(pid)] = (int(account[0]), bool(account[1]))
            found = execute(CAPS_SQL, (pid,)).fetchone()
            if found is not None:
                caps[pid] = tuple(found)
                if found[2] is not None:  # projectDailyMaxSats
                    spent[(pid, None)] = _spent(execute(SPENT_PROJECT_SQL, (pid, day_since)))
    keys: dict[tuple[str, str], Any] = {}
    hashes: dict[str, list[tuple[str, str, bool]]] = {}
    internal_ids: dict[tuple[str, str], str] = {}
    recent: dict[tuple[str, str], list[int]] = {}
    failed: dict[tuple[str, str], list[tuple[int, int]]] = {}
    used_quotes: dict[str, str] = {}
    for i in items:
        if i.quote_id is not None and i.quote_id not in used_quotes:
            row = execute(QUOTE_USE_SQL, (i.quote_id,)).fetchone()
            if row is not None:
                used_quotes[i.quote_id] = row[0]
        if i.idempotency_key is not None and (i.project_id, i.idempotency_key) not in keys:
            cursor = execute(LOOKUP_PAYOUT_SQL, (i.project_id, i.idempotency_key))
            row = cursor.fetchone()
            if row is not None:
                keys[(i.project_id, i.idempotency_key)] = _mapping("payouts", cursor, row)
        if i.payment_hash is not None and i.payment_hash not in hashes:
            rows = execute(HASH_SQL, (i.payment_hash, HASH_ROWS_MAX)).fetchall()
            hashes[i.payment_hash] = [(r[0], r[1], bool(r[2])) for r in rows]
        if i.internal_id is not None and (i.project_id, i.internal_id) not in internal_ids:
            row = execute(INTERNAL_SQL, (i.project_id, i.internal_id)).fetchone()
            if row is not None:
                internal_ids[(i.project_id, i.internal_id)] = row[0]
        who = (i.project_id, i.recipient)
        if who not in failed:
            params = (*who, created_after, updated_after, engine.FAILURES_SCAN_MAX)
            failed[who] = [(r[0], r[1]) for r in execute(FAILED_SQL, params).fetchall()]
        counted = (i.project_id, i.counter)
        if counted not in recent:
            since = now_ms - engine.RATE_WINDOW_MS
            by, sql = (i.player_id, RECENT_PLAYER_SQL) if i.player_id else (i.recipient, RECENT_SQL)
            params = (i.project_id, by, since, limits.rate_limit)
            recent[counted] = [r[0] for r in execute(sql, params).fetchall()]
            project_caps = caps.get(i.project_id)
            if project_caps is not None and project_caps[1] is not None:  # perPlayerDaily
                sql = SPENT_PLAYER_SQL if i.player_id else SPENT_RECIPIENT_SQL
                spent[counted] = _spent(execute(sql, (i.project_id, by, day_since)))
    return dict(
        caps=caps,
        spent=spent,
        used_quotes=used_quotes,
        projects=projects,
        accounts=accounts,
        keys=keys,
        recent=recent,
        failed=failed,
        hashes=hashes,
        internal_ids=internal_ids,
    )


def _spent(cursor: sqlite3.Cursor) -> list[tuple[int, str, bool, int]]:
    return [(int(b), state, bool(charged), int(sats)) for b, state, charged, sats in cursor]


def _finalize(finals: Sequence[Final], on_final: OnFinal, conn: sqlite3.Connection) -> list[Any]:
    """Each guarded transition, then what the new rows write, in one unit."""
    answers: list[Any] = []
    writes = Writes()
    for f in sorted(finals, key=lambda f: f.payout_id):
        v = f.values
        code = v.get("failure_code")
        cursor = conn.execute(
            TRANSITION_SQL,
            (
                f.target,
                f.now_ms,
                f.cause,
                bool(v.get("charge_posted")),
                v.get("settled_at"),
                code,
                code,
                v.get("failure_reason"),
                f.payout_id,
                f.current,
            ),
        )
        found = cursor.fetchone()
        row = None if found is None else _mapping("payouts", cursor, found)
        cursor.close()  # RETURNING: the statement is complete once its row is read
        if row is not None:
            writes.add(on_final(row, f))
        answers.append((f.payout_id, row))
    _apply(conn, writes, max(f.now_ms for f in finals))
    by_id = dict(answers)
    return [by_id[f.payout_id] for f in finals]


def _apply(conn: sqlite3.Connection, writes: Writes, now_ms: int) -> None:
    """The rows, then the balances (accounts in id order), then the jobs done."""
    for table in TABLES:
        rows = writes.inserts.get(table) or []
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row in rows:
            by_columns.setdefault(tuple(row), []).append(tuple(row.values()))
        for columns, values in by_columns.items():
            conn.executemany(_insert_sql(table, columns), values)
    for account in writes.accounts():
        change = writes.deltas[account]
        assert len(change) == len(ledger.DELTA_COLUMNS)
        if conn.execute(DELTA_SQL, (*change, account)).rowcount != 1:
            raise ledger.LedgerError(f"unknown account {account}")
    for job_id in writes.jobs_done:
        conn.execute(JOB_DONE_SQL, (now_ms, job_id))
