"""Double-entry ledger with two-phase transfers, modelled on TigerBeetle.

Every function takes the caller's connection: the caller's unit of work owns the transaction,
so a ledger change commits atomically with the state change that caused it.

Row-lock order is always: the debited account first (it carries the balance check), then the
credited accounts sorted by id. One order everywhere means no deadlocks between transactions.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.db import bulk
from payrail.db.bulk import InList
from payrail.db.tables import accounts, insert_row, transfers
from payrail.ledger.accounts import CURRENCY_SATS, SYSTEM_ACCOUNTS, Code

A = accounts.c


class LedgerError(Exception):
    """A ledger rule would be broken. Callers map the specific subclasses they expect."""


class InsufficientFunds(LedgerError):
    def __init__(self, account_id: str, available: int, required: int) -> None:
        super().__init__(f"{account_id}: available {available}, required {required}")
        self.available = available
        self.required = required


class AlreadyResolved(LedgerError):
    """A pending transfer was already posted or voided; a second resolution is refused."""


@dataclass(frozen=True)
class Transfer:
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int


@dataclass(frozen=True)
class Balance:
    account_id: str
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending


async def ensure_account(
    conn: AsyncConnection,
    account_id: str,
    code: int,
    now_ms: int,
    allow_negative: bool = False,
    currency: str = CURRENCY_SATS,
) -> None:
    """Create the account unless it exists; concurrent callers are fine (ON CONFLICT)."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        dialect_insert(accounts)
        .values(
            id=account_id,
            code=int(code),
            currency=currency,
            debits_pending=0,
            debits_posted=0,
            credits_pending=0,
            credits_posted=0,
            allow_negative=allow_negative,
            created_at=now_ms,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


async def ensure_system_accounts(conn: AsyncConnection, now_ms: int) -> None:
    existing = set(
        (await conn.execute(select(A.id).where(A.id.in_(list(SYSTEM_ACCOUNTS))))).scalars()
    )
    for account_id, (code, allow_negative) in SYSTEM_ACCOUNTS.items():
        if account_id not in existing:
            await ensure_account(conn, account_id, code, now_ms, allow_negative)


async def balance(conn: AsyncConnection, account_id: str) -> Balance | None:
    row = (
        await conn.execute(
            select(A.debits_pending, A.debits_posted, A.credits_pending, A.credits_posted).where(
                A.id == account_id
            )
        )
    ).first()
    return Balance(account_id, *row) if row else None


def _available() -> object:
    return A.credits_posted - A.debits_posted - A.debits_pending


async def _debit(conn: AsyncConnection, account_id: str, amount: int, *, pending: bool) -> None:
    """Debit with the balance check in the same statement: no read-then-write window."""
    statement = _DEBIT_PENDING if pending else _DEBIT_POSTED
    result = await conn.execute(statement, {"b_id": account_id, "b_amount": amount})
    if result.rowcount == 1:
        return
    current = await balance(conn, account_id)
    if current is None:
        raise LedgerError(f"unknown account {account_id}")
    raise InsufficientFunds(account_id, current.available, amount)


def _debit_statement(column: str) -> Any:
    amount = bindparam("b_amount", type_=BigInteger)
    return (
        update(accounts)
        .where(A.id == bindparam("b_id"), A.allow_negative | (_available() >= amount))
        .values({column: getattr(A, column) + amount})
    )


# The hot statements are built once; their values are execute parameters, so a payout pays
# for no expression building or cache-key walk.
_DEBIT_PENDING = _debit_statement("debits_pending")
_DEBIT_POSTED = _debit_statement("debits_posted")


async def _credit(conn: AsyncConnection, amounts: dict[str, int], *, pending: bool) -> None:
    column = "credits_pending" if pending else "credits_posted"
    await _add(conn, {column: amounts})


async def _add(conn: AsyncConnection, deltas: dict[str, dict[str, int]]) -> None:
    """Add per-account amounts to balance columns, all accounts in ONE statement.

    deltas maps column → {account id → amount}. The rows are locked in id order first (a
    locking subquery; SQLite has no row locks and serialises writers anyway), so the lock order
    stays the ledger's one order however the planner scans the table.
    """
    ids = sorted({account_id for amounts in deltas.values() for account_id in amounts})
    columns = tuple(deltas)
    params: dict[str, Any] = {f"b_id{i}": account_id for i, account_id in enumerate(ids)}
    for c, amounts in deltas.items():
        params |= {f"b_{c}{i}": amounts.get(account_id, 0) for i, account_id in enumerate(ids)}
    result = await conn.execute(_add_statement(columns, len(ids)), params)
    if result.rowcount != len(ids):
        raise LedgerError(f"unknown account among {ids}")


@functools.cache
def _add_statement(columns: tuple[str, ...], n: int) -> Any:
    """The UPDATE of `_add` for these columns and n accounts, built once per shape."""
    ids = [bindparam(f"b_id{i}") for i in range(n)]

    def delta(c: str) -> Any:
        if n == 1:
            return bindparam(f"b_{c}0", type_=BigInteger)
        return case(
            *((A.id == ids[i], bindparam(f"b_{c}{i}", type_=BigInteger)) for i in range(n)),
            else_=literal(0, BigInteger),
        )

    if n == 1:
        where = A.id == ids[0]
    else:
        locked = select(A.id).where(A.id.in_(ids)).order_by(A.id).with_for_update()
        where = A.id.in_(locked.scalar_subquery())
    return update(accounts).where(where).values({c: getattr(A, c) + delta(c) for c in columns})


def _credits_by_account(items: Iterable[Transfer]) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for t in items:
        sums[t.credit_account_id] += t.amount
    return dict(sums)


def _single_debit_account(items: Sequence[Transfer]) -> str:
    debit_ids = {t.debit_account_id for t in items}
    assert len(debit_ids) == 1, "linked transfers share one debit account"
    assert all(t.amount > 0 for t in items), "transfer amounts are positive"
    return debit_ids.pop()


_INSERT_TRANSFER = insert_row(transfers)


async def transfer(conn: AsyncConnection, t: Transfer, now_ms: int) -> None:
    """A single-phase transfer, posted at once (funding)."""
    await _debit(conn, t.debit_account_id, t.amount, pending=False)
    await _credit(conn, {t.credit_account_id: t.amount}, pending=False)
    await conn.execute(_INSERT_TRANSFER, transfer_row(t, "single", None, None, now_ms))


async def reserve(
    conn: AsyncConnection, linked: Sequence[Transfer], now_ms: int, timeout_at_ms: int | None
) -> None:
    """Linked pending transfers from one account: all reserved, or none (InsufficientFunds).
    What they write is `pending_writes`; the balance check is in the debit's UPDATE."""
    rows, deltas = pending_writes(linked, timeout_at_ms, now_ms)
    debit_id = _single_debit_account(linked)
    await _debit(conn, debit_id, deltas.pop(debit_id)[0], pending=True)
    await bulk.insert_rows(conn, transfers, rows)
    await _add(conn, _by_column(deltas))


async def available_for_update(conn: AsyncConnection, account_id: str) -> int:
    """The account's available balance, its row locked until COMMIT."""
    query = select(_available()).where(A.id == account_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    available = await conn.scalar(query)
    if available is None:
        raise LedgerError(f"unknown account {account_id}")
    return int(available)


async def post(conn: AsyncConnection, pending_ids: Sequence[str], now_ms: int) -> None:
    """Post pending transfers in full: pending columns move to posted, exactly once."""
    await _resolve(conn, pending_ids, True, now_ms)


async def void(conn: AsyncConnection, pending_ids: Sequence[str], now_ms: int) -> None:
    """Void pending transfers: the reservation is released, exactly once."""
    await _resolve(conn, pending_ids, False, now_ms)


async def _resolve(
    conn: AsyncConnection, pending_ids: Sequence[str], post: bool, now_ms: int
) -> None:
    # What a resolution writes is `resolution_writes`. The unique pending_id refuses a second
    # resolution even if a caller's guard failed; the caller's transaction then rolls back.
    found = await conn.execute(_PENDING_AMONG, {"b_ids": list(pending_ids)})
    pending = [Transfer(*row) for row in found]
    if len(pending) != len(pending_ids):
        raise LedgerError(f"not pending transfers: {sorted(pending_ids)}")
    rows, deltas = resolution_writes(pending, post, now_ms)
    try:
        await bulk.insert_rows(conn, transfers, rows)
    except IntegrityError:
        raise AlreadyResolved(f"already resolved: {sorted(pending_ids)}") from None
    await _add(conn, _by_column(deltas))


def _by_column(deltas: Deltas) -> dict[str, dict[str, int]]:
    """Deltas per account as `_add` takes them: per column, per account (zeros left out)."""
    columns: dict[str, dict[str, int]] = {}
    for account, change in deltas.items():
        for column, value in zip(DELTA_COLUMNS, change, strict=True):
            if value:
                columns.setdefault(column, {})[account] = value
    return columns


_T = transfers.c
_PENDING_AMONG = select(_T.id, _T.debit_account_id, _T.credit_account_id, _T.amount).where(
    InList(_T.id, "b_ids"), _T.kind == "pending"
)


def transfer_row(
    t: Transfer, kind: str, pending_id: str | None, timeout_at: int | None, now_ms: int
) -> dict:
    """A transfers row as the ledger writes it (the payout hot path writes the same rows)."""
    return {
        "id": t.id,
        "debit_account_id": t.debit_account_id,
        "credit_account_id": t.credit_account_id,
        "amount": t.amount,
        "pending_id": pending_id,
        "kind": kind,
        "timeout_at": timeout_at,
        "created_at": now_ms,
    }


# ---------------------------------------------------------------- pure: what a phase writes
#
# The payout engine's storage (db/payout_store) writes these rows and balance changes in its
# own statements; the rules of a two-phase transfer are stated here once.

DELTA_COLUMNS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
Deltas = dict[str, list[int]]  # account id -> a change per DELTA_COLUMNS


def add_deltas(into: Deltas, more: Deltas) -> Deltas:
    for account, change in more.items():
        have = into.setdefault(account, [0, 0, 0, 0])
        for i, value in enumerate(change):
            have[i] += value
    return into


def pending_writes(
    linked: Sequence[Transfer], timeout_at_ms: int | None, now_ms: int
) -> tuple[list[dict[str, Any]], Deltas]:
    """Phase one of linked transfers from one account: their pending rows and the balance
    changes (debits_pending on the debit, credits_pending on each credit). The balance check
    is the caller's, under the debited account's lock (domain/payout_engine.py)."""
    assert linked and all(t.amount > 0 for t in linked)
    debit_id = _single_debit_account(linked)
    total = sum(t.amount for t in linked)
    deltas: Deltas = {debit_id: [total, 0, 0, 0]}
    for credit_id, amount in _credits_by_account(linked).items():
        add_deltas(deltas, {credit_id: [0, 0, amount, 0]})
    rows = [transfer_row(t, "pending", None, timeout_at_ms, now_ms) for t in linked]
    return rows, deltas


def resolution_writes(
    pending: Sequence[Transfer], post: bool, now_ms: int
) -> tuple[list[dict[str, Any]], Deltas]:
    """Phase two: each pending transfer posted in full or voided, exactly once (the unique
    pending_id refuses a second resolution: the writer's transaction then rolls back)."""
    assert pending and all(t.amount > 0 for t in pending)
    kind = "post" if post else "void"
    deltas: Deltas = {}
    rows = []
    for t in pending:
        posted = t.amount if post else 0
        add_deltas(deltas, {t.debit_account_id: [-t.amount, posted, 0, 0]})
        add_deltas(deltas, {t.credit_account_id: [0, 0, -t.amount, posted]})
        resolution = Transfer(f"{t.id}:{kind}", t.debit_account_id, t.credit_account_id, t.amount)
        rows.append(transfer_row(resolution, kind, t.id, None, now_ms))
    return rows, deltas


@dataclass(frozen=True)
class LedgerTotals:
    """Sums over all accounts, for the conservation invariant."""

    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    overdrawn_accounts: list[str]


async def totals(conn: AsyncConnection) -> LedgerTotals:
    from sqlalchemy import func

    row = (
        await conn.execute(
            select(
                func.coalesce(func.sum(A.debits_pending), 0),
                func.coalesce(func.sum(A.debits_posted), 0),
                func.coalesce(func.sum(A.credits_pending), 0),
                func.coalesce(func.sum(A.credits_posted), 0),
            )
        )
    ).one()
    overdrawn = (
        await conn.execute(
            select(A.id).where(
                ~A.allow_negative, A.debits_posted + A.debits_pending > A.credits_posted
            )
        )
    ).scalars()
    return LedgerTotals(*(int(v) for v in row), overdrawn_accounts=list(overdrawn))


__all__ = ["Code", "Transfer", "Balance", "reserve", "post", "void", "transfer", "totals"]
