"""The hot path on SQLite: each transaction as raw sqlite3 statements on the one writer.

SQLite has no stored functions, and needs none: the database is in this process. A unit here
is a synchronous function that runs the same steps as payrail_reserve_many / payrail_finalize_many
(migration 0011) on the writer's sqlite3 connection, with no await between its statements,
as one member of the writer's group commit (db/sqlite.py, `run_write`): BEGIN IMMEDIATE is
shared with the transactions queued beside it, this unit sits under its own SAVEPOINT, and
its caller hears "committed" only once the group's COMMIT has returned. A refusal raises
inside the unit, so its savepoint is rolled back: nothing of it is written.

SQL strings are written once (a payout row's INSERT once per column set) and sqlite3 keeps
them prepared in its statement cache; no SQLAlchemy runs per statement.

`lookup` reads committed data only: a replay answered from a row of the writer's open group
could be one that then rolls back. It runs on the engine's inline reader (a read-only
connection on the loop's thread, `read_inline`), and on the pool's readers when that one
finds the file busy.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import exc as sa_exc

from payrail.db.sqlite import ReaderBusy, SQLiteEngine
from payrail.ledger import ledger
from payrail.services import recipient_guard
from payrail.services.hot_path import (
    DuplicateKey,
    Finalization,
    NeedsGeneralPath,
    Refused,
    Reservation,
)

# Boolean columns, which sqlite3 hands back as 0/1 (SQLAlchemy's Boolean makes them bool).
_BOOLEANS = {"payouts": ("charge_posted",), "recipients": ("suspended",)}

LOOKUP_PAYOUT_SQL = "SELECT * FROM payouts WHERE project_id = ? AND idempotency_key = ?"
LOOKUP_RECIPIENT_SQL = "SELECT * FROM recipients WHERE project_id = ? AND gamertag_key = ?"

POLICY_SQL = (
    "SELECT COALESCE(recipient_failures_max, ?), COALESCE(recipient_failure_window_s, ?),"
    " COALESCE(recipient_block_s, ?) FROM projects WHERE id = ?"
)
KEY_TAKEN_SQL = "SELECT 1 FROM payouts WHERE project_id = ? AND idempotency_key = ?"
LOCK_SQL = (
    "INSERT INTO gamertag_locks (project_id, gamertag, touched_at) VALUES (?, ?, ?)"
    " ON CONFLICT (project_id, gamertag) DO UPDATE SET touched_at = excluded.touched_at"
)
FAILED_SQL = (
    "SELECT updated_at FROM payouts"
    " WHERE project_id = ? AND lower(gamertag) = ? AND created_at > ?"
    " AND state = 'failed' AND updated_at > ?"
    " ORDER BY updated_at DESC LIMIT ?"
)
RATE_SQL = (
    "SELECT created_at FROM payouts"
    " WHERE project_id = ? AND lower(gamertag) = ? AND created_at > ?"
    " ORDER BY created_at DESC LIMIT 1 OFFSET ?"
)
DEBIT_PENDING_SQL = (
    "UPDATE accounts SET debits_pending = debits_pending + ?"
    " WHERE id = ? AND (allow_negative OR credits_posted - debits_posted - debits_pending >= ?)"
)
AVAILABLE_SQL = "SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE id = ?"
CREDIT_PENDING_SQL = "UPDATE accounts SET credits_pending = credits_pending + ? WHERE id = ?"

TRANSITION_SQL = (
    "UPDATE payouts SET state = ?, updated_at = ?, state_cause = ?, charge_posted = ?,"
    " settled_at = COALESCE(?, settled_at), failure_code = COALESCE(?, failure_code),"
    " failure_reason = CASE WHEN ? IS NULL THEN failure_reason ELSE ? END"
    " WHERE id = ? AND state = ? RETURNING *"
)
JOB_DONE_SQL = (
    "UPDATE jobs SET state = 'done', lease_until = NULL, locked_by = NULL, updated_at = ?"
    " WHERE id = ?"
)
RESOLVE_SQL = (
    "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, pending_id, kind,"
    " timeout_at, created_at)"
    " SELECT id || ?, debit_account_id, credit_account_id, amount, id, ?, NULL, ?"
    " FROM transfers WHERE id IN (?, ?) AND kind = 'pending'"
)
RESOLVED_SQL = (
    "SELECT debit_account_id, credit_account_id, amount FROM transfers WHERE id IN (?, ?)"
)
RESOLVE_DEBIT_SQL = (
    "UPDATE accounts SET debits_pending = debits_pending - ?,"
    " debits_posted = debits_posted + ? WHERE id = ?"
)
RESOLVE_CREDIT_SQL = (
    "UPDATE accounts SET credits_pending = credits_pending - ?,"
    " credits_posted = credits_posted + ? WHERE id = ?"
)


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """The INSERT of one row of `table` with these columns, written once per column set."""
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({names}) VALUES ({marks})"


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    conn.execute(_insert_sql(table, tuple(row)), tuple(row.values()))


def _mapping(table: str, cursor: sqlite3.Cursor, values: Iterable[Any]) -> dict[str, Any]:
    return _typed(table, dict(zip((d[0] for d in cursor.description), values, strict=True)))


def _typed(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row typed as SQLAlchemy would type it (booleans as bool)."""
    for column in _BOOLEANS.get(table, ()):
        if row[column] is not None:
            row[column] = bool(row[column])
    return row


class SqliteHotPath:
    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine

    # ------------------------------------------------------------ lookup

    async def lookup(
        self, project_id: str, idempotency_key: str | None, recipient_key: str | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        def read(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            return _lookup(conn.execute, project_id, idempotency_key, recipient_key)

        try:
            return self._engine.read_inline(read)
        except ReaderBusy:
            return await _lookup_pooled(self._engine, project_id, idempotency_key, recipient_key)

    # ------------------------------------------------------------ tx1

    async def reserve(self, r: Reservation) -> None:
        try:
            await self._engine.run_write(functools.partial(_reserve, r))
        except sqlite3.IntegrityError as error:
            if "payouts.project_id, payouts.idempotency_key" in str(error):
                raise DuplicateKey(str(error)) from None
            raise _wrapped(error) from None
        except sqlite3.Error as error:
            raise _wrapped(error) from None

    # ------------------------------------------------------------ tx2

    async def finalize(self, f: Finalization) -> dict[str, Any] | None:
        try:
            return await self._engine.run_write(functools.partial(_finalize, f))
        except sqlite3.IntegrityError as error:
            if "UNIQUE constraint failed: transfers." in str(error):
                raise ledger.AlreadyResolved(f"already resolved: {list(f.transfer_ids)}") from None
            raise _wrapped(error) from None
        except sqlite3.Error as error:
            raise _wrapped(error) from None

    async def aclose(self) -> None:
        return None  # the engine owns the connections


def _wrapped(error: sqlite3.Error) -> sa_exc.DBAPIError:
    """A driver error as the general path would raise it (SQLAlchemy's wrapper), so callers
    that map database errors see one kind whichever path ran."""
    return sa_exc.DBAPIError.instance(None, None, error, sqlite3.Error)


def _lookup(
    execute: Callable[..., sqlite3.Cursor],
    project_id: str,
    idempotency_key: str | None,
    recipient_key: str | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    payout = recipient = None
    if idempotency_key is not None:
        cursor = execute(LOOKUP_PAYOUT_SQL, (project_id, idempotency_key))
        found = cursor.fetchone()
        payout = None if found is None else _mapping("payouts", cursor, found)
    if recipient_key is not None:
        cursor = execute(LOOKUP_RECIPIENT_SQL, (project_id, recipient_key))
        found = cursor.fetchone()
        recipient = None if found is None else _mapping("recipients", cursor, found)
    return payout, recipient


async def _lookup_pooled(
    engine: SQLiteEngine, project_id: str, idempotency_key: str | None, recipient_key: str | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """_lookup on a pool reader (its thread may wait out the busy file), in one snapshot."""
    found: list[dict[str, Any] | None] = [None, None]
    async with engine.connect() as conn:
        for i, (table, sql, key) in enumerate(
            (
                ("payouts", LOOKUP_PAYOUT_SQL, idempotency_key),
                ("recipients", LOOKUP_RECIPIENT_SQL, recipient_key),
            )
        ):
            if key is not None:
                result = await conn.exec_driver_sql(sql, (project_id, key))
                row = result.first()
                if row is not None:
                    found[i] = _typed(table, dict(zip(result.keys(), row, strict=True)))
    return found[0], found[1]


def _reserve(r: Reservation, conn: sqlite3.Connection) -> None:
    """payrail_reserve_many's steps for one payout, in its order (services/hot_path/__init__)."""
    execute = conn.execute
    row = r.row
    project, key, now = row["project_id"], row["idempotency_key"], row["created_at"]
    policy_row = execute(
        POLICY_SQL, (r.failures_max, r.failure_window_s, r.block_s, project)
    ).fetchone()
    if policy_row is None:
        raise Refused("no_project")
    policy = recipient_guard.Policy(*policy_row)
    if key is not None and execute(KEY_TAKEN_SQL, (project, key)).fetchone() is not None:
        raise Refused("key_taken")
    # The (project, recipient) lock row, written as on PostgreSQL (one writer serialises here).
    execute(LOCK_SQL, (project, r.recipient_key, now))
    until = oldest = None
    if policy.failures_max > 0:
        horizon = now - (policy.failure_window_s + policy.block_s) * 1000
        failed = execute(
            FAILED_SQL,
            (
                project,
                r.recipient_key,
                horizon - r.failure_lookback_ms,
                horizon,
                r.failures_scan_max,
            ),
        ).fetchall()
        until = recipient_guard.blocked_until_ms(sorted(f[0] for f in failed), policy)
    if until is None or until <= now:
        until = None
        found = execute(
            RATE_SQL, (project, r.recipient_key, now - r.rate_window_ms, r.rate_limit - 1)
        ).fetchone()
        oldest = None if found is None else found[0]
    if until is not None or oldest is not None:
        # A same-key request may have committed before this one's turn: replay wins.
        if key is not None and execute(KEY_TAKEN_SQL, (project, key)).fetchone() is not None:
            raise Refused("key_taken")
        if until is not None:
            raise Refused(
                "blocked", until, failures_max=policy.failures_max, window_s=policy.failure_window_s
            )
        raise Refused("rate_limited", oldest)
    # The payout row (its audit row by trigger), its settle job, its created callback.
    _insert(conn, "payouts", row)
    _insert(conn, "jobs", r.job)
    if r.callback is not None:
        assert r.callback_job is not None
        _insert(conn, "callbacks", r.callback)
        _insert(conn, "jobs", r.callback_job)
    # The reservation: the debit with its balance check, then the pending transfers and their
    # credits, the credited accounts in id order (the ledger's one order).
    debits = {t["debit_account_id"] for t in r.transfers}
    assert len(debits) == 1, "linked transfers share one debit account"
    assert all(t["amount"] > 0 for t in r.transfers), "transfer amounts are positive"
    debit = debits.pop()
    total = sum(t["amount"] for t in r.transfers)
    if execute(DEBIT_PENDING_SQL, (total, debit, total)).rowcount != 1:
        available = execute(AVAILABLE_SQL, (debit,)).fetchone()
        if available is None:
            raise ledger.LedgerError(f"unknown account {debit}")
        raise Refused("insufficient", available[0])
    for transfer in r.transfers:
        _insert(conn, "transfers", transfer)
    for account, amount in _by_credit_account(
        (t["credit_account_id"], t["amount"]) for t in r.transfers
    ):
        if execute(CREDIT_PENDING_SQL, (amount, account)).rowcount != 1:
            raise ledger.LedgerError(f"unknown account {account}")


def _finalize(f: Finalization, conn: sqlite3.Connection) -> dict[str, Any] | None:
    """payrail_finalize_many's steps for one payout, in its order."""
    assert len(f.transfer_ids) == 2, "a payout's two linked transfers (RESOLVE_SQL)"
    execute = conn.execute
    values = f.values
    failure_code = values.get("failure_code")
    cursor = execute(
        TRANSITION_SQL,
        (
            f.target,
            f.now,
            f.cause,
            bool(values.get("charge_posted")),
            values.get("settled_at"),
            failure_code,
            failure_code,
            values.get("failure_reason"),
            f.payout_id,
            f.current,
        ),
    )
    found = cursor.fetchone()
    if found is None:
        return None  # not in `current`: someone else won; nothing written
    final = _mapping("payouts", cursor, found)
    cursor.close()  # RETURNING: the statement is complete once its row is read
    if final["callback_url"] is not None:
        raise NeedsGeneralPath(f.payout_id)
    execute(JOB_DONE_SQL, (f.now, f.job_id))
    kind = "post" if f.post else "void"
    # The resolutions: the unique pending_id refuses a second one (the unit rolls back).
    if execute(RESOLVE_SQL, (f":{kind}", kind, f.now, *f.transfer_ids)).rowcount != len(
        f.transfer_ids
    ):
        raise ledger.LedgerError(f"not pending transfers: {list(f.transfer_ids)}")
    resolved = execute(RESOLVED_SQL, f.transfer_ids).fetchall()
    debits = {debit for debit, _, _ in resolved}
    assert len(debits) == 1, "linked transfers share one debit account"
    total = sum(amount for _, _, amount in resolved)
    posted = total if f.post else 0
    if execute(RESOLVE_DEBIT_SQL, (total, posted, debits.pop())).rowcount != 1:
        raise ledger.LedgerError(f"unknown account among {list(f.transfer_ids)}")
    for account, amount in _by_credit_account((c, amount) for _, c, amount in resolved):
        posted = amount if f.post else 0
        if execute(RESOLVE_CREDIT_SQL, (amount, posted, account)).rowcount != 1:
            raise ledger.LedgerError(f"unknown account {account}")
    return final


def _by_credit_account(items: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Amounts summed per credited account, in id order."""
    sums: dict[str, int] = {}
    for account, amount in items:
        sums[account] = sums.get(account, 0) + amount
    return sorted(sums.items())
