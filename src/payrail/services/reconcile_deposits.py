"""Reconciliation of deposits (called by services/reconcile.py, full and incremental runs):
paid at the backend ⇔ credited once.

On the run's snapshot (`read`), against the ledger:
- a completed deposit has exactly one credit, deposit:<payment_hash>, of its amount into its
  project's account; a deposit not completed has none          (state-ledger-mismatch)
- every credit from the lightning inbound account belongs to a completed deposit
                                                                 (orphaned-charge)
- the full audit's expected balances include the deposits' credits (`with_credits`)

Then against the backend (`check`), for the deposits the run reads that are no longer
watched: a completed one must be paid there (deposit-credited-not-paid), an expired one
past its late window must not be (deposit-paid-not-credited). Open deposits, and expired
ones still in their late window, are the watcher's: not findings yet. The incremental run
reads only deposits changed since its checkpoint, so each is asked about about once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.engine import is_sqlite
from payrail.db.tables import deposits, transfers
from payrail.domain.deposits import DepositStatus, transfer_id
from payrail.ledger import accounts as acct
from payrail.lightning.backend import InvoiceState, UnknownOutcome
from payrail.services.deposits import INBOUND_ACCOUNT

log = structlog.get_logger("payrail.reconcile")
D = deposits.c
T = transfers.c
BACKEND_ASKED_MAX = 10_000  # deposits one run asks the backend about (newest changes first)
BACKEND_CONCURRENT_MAX = 8


@dataclass
class DepositReads:
    rows: list[Any] = field(default_factory=list)
    credits: dict[str, list[Any]] = field(default_factory=dict)  # transfer id → rows


async def read(conn: AsyncConnection, since_ms: int | None) -> DepositReads:
    """Deposits changed since since_ms (None: all) and the inbound credits written since."""
    query = select(deposits)
    credit_query = select(T.id, T.credit_account_id, T.amount).where(
        T.debit_account_id == INBOUND_ACCOUNT
    )
    if since_ms is not None:
        query = query.where(D.updated_at > since_ms)
        credit_query = credit_query.where(T.created_at > since_ms)
    rows = list((await conn.execute(query)).mappings())
    credits: dict[str, list[Any]] = {}
    for r in await conn.execute(credit_query):
        credits.setdefault(r.id, []).append(r)
    if since_ms is not None and rows:  # a changed deposit's credit may be older than since
        ids = [transfer_id(r["payment_hash"]) for r in rows]
        for start in range(0, len(ids), 1_000):
            chunk = [i for i in ids[start : start + 1_000] if i not in credits]
            if chunk:
                for r in await conn.execute(
                    select(T.id, T.credit_account_id, T.amount).where(T.id.in_(chunk))
                ):
                    credits.setdefault(r.id, []).append(r)
    return DepositReads(rows, credits)


def with_credits(expected: dict[str, int], reads: DepositReads) -> dict[str, int]:
    """The full audit's expected project balances plus what deposits credited."""
    out = dict(expected)
    for rows in reads.credits.values():
        for r in rows:
            out[r.credit_account_id] = out.get(r.credit_account_id, 0) + int(r.amount)
    return out


async def check(rt: Runtime, reads: DepositReads, found: list[Any]) -> int:
    """Append the findings (reconcile.Discrepancy) about the deposits read; returns how many
    deposits were checked."""
    from payrail.services.reconcile import Discrepancy

    by_credit = {transfer_id(r["payment_hash"]): r for r in reads.rows}
    for row in reads.rows:
        credit_rows = reads.credits.get(transfer_id(row["payment_hash"]), [])
        completed = row["status"] == DepositStatus.COMPLETED.value
        account = acct.project_account(row["project_id"])
        good = [c for c in credit_rows if c.credit_account_id == account]
        if completed and (
            len(credit_rows) != 1 or not good or int(good[0].amount) != row["amount"]
        ):
            found.append(
                Discrepancy(
                    "state-ledger-mismatch",
                    f"deposit completed with {len(credit_rows)} credit(s), not one of its amount",
                    [row["id"]],
                    row["amount"],
                )
            )
        if not completed and credit_rows:
            found.append(
                Discrepancy(
                    "state-ledger-mismatch",
                    f"deposit {row['status']}, credited",
                    [row["id"]],
                    row["amount"],
                )
            )
    for credit_id, credit_rows in reads.credits.items():
        owner = by_credit.get(credit_id)
        if owner is None and not await _deposit_exists(rt, credit_id):
            for r in credit_rows:
                found.append(
                    Discrepancy("orphaned-charge", "deposit credit with no deposit", [r.id], 0)
                )
    await _ask_backend(rt, reads, found, Discrepancy)
    return len(reads.rows)


async def _deposit_exists(rt: Runtime, credit_id: str) -> bool:
    """An older deposit (not read by an incremental run) that owns this credit."""
    payment_hash = credit_id.removeprefix(transfer_id(""))
    async with rt.engine.connect() as conn:
        status = await conn.scalar(select(D.status).where(D.payment_hash == payment_hash))
    return status == DepositStatus.COMPLETED.value


async def _ask_backend(rt: Runtime, reads: DepositReads, found: list[Any], make: Any) -> None:
    now = rt.clock.now_ms()
    late_ms = rt.settings.deposit_late_window_ms

    def settled(row: Any) -> bool:
        if row["status"] == DepositStatus.COMPLETED.value:
            return True
        return row["status"] == DepositStatus.EXPIRED.value and now >= (row["expires_at"] + late_ms)

    asked = sorted((r for r in reads.rows if settled(r)), key=lambda r: -r["updated_at"])
    asked = asked[:BACKEND_ASKED_MAX]
    limit = asyncio.Semaphore(1 if is_sqlite(rt.engine) else BACKEND_CONCURRENT_MAX)

    async def one(row: Any) -> None:
        async with limit:
            try:
                status = await rt.node.invoice_status(row["payment_hash"])
            except UnknownOutcome:
                log.warning("reconcile_deposit_unanswered", deposit_id=row["id"])
                return
        paid = status.state == InvoiceState.PAID
        if row["status"] == DepositStatus.COMPLETED.value and not paid:
            found.append(
                make(
                    "deposit-credited-not-paid",
                    f"deposit credited; the backend says {status.state.value}",
                    [row["id"]],
                    row["amount"],
                )
            )
        if row["status"] == DepositStatus.EXPIRED.value and paid:
            found.append(
                make(
                    "deposit-paid-not-credited",
                    "deposit expired; the backend says its invoice is paid",
                    [row["id"]],
                    row["amount"],
                )
            )

    await asyncio.gather(*(one(r) for r in asked))
