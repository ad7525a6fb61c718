"""Deposit use cases: money in over Lightning (docs/deposits.md).

    create   the backend makes an invoice (no transaction open during the call) → one tx:
             the deposit row (open) + its watch job. A lost answer makes no deposit: the
             invoice nobody was shown can be paid by nobody.
    check    ask the backend about the invoice's payment hash (no transaction open) → one tx:
             paid     → guarded open|expired → completed + the ledger credit
                        deposit:<payment_hash> (lightning inbound → the project), or nothing
                        when another check won
             not paid → past expiry: guarded open → expired (nothing was credited)
    watch    the deposit_watch job: check, then run again by the deposit's schedule
             (domain/deposits.WatchPlan: backoff, once more at expiry, a late window), in
             the worker's own lane for deposits (its capacity is the per-run limit)
    push     LNbits' invoice webhook names a payment hash: it is only a reason to check;
             the backend's own answer decides, never the push's body

Exactly once: the guarded UPDATE lets one transaction move the row to completed; the
credit is written in that transaction; the transfer's primary key (one per payment hash) and
the deposit's unique transfer_id refuse a second even if a guard failed.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.tables import callbacks as callbacks_table
from payrail.db.tables import deposits, projects
from payrail.domain import errors
from payrail.domain.deposits import (
    CREDITABLE,
    DepositRequest,
    DepositStatus,
    WatchPlan,
    is_legal,
    transfer_id,
)
from payrail.jobs import queue
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.lightning.backend import (
    InvoiceRefused,
    InvoiceState,
    InvoiceStatus,
    UnknownOutcome,
    is_payment_hash,
)
from payrail.services import callbacks, pagination
from payrail.support import metrics
from payrail.support.clock import iso

log = structlog.get_logger("payrail.deposits")
D = deposits.c

WATCH_JOB = "deposit_watch"
# The outside world's side of every deposit credit (like sys:funding for operator funding):
# it may go negative; its debits are the sum of credited deposits, which reconcile checks.
INBOUND_ACCOUNT = "sys:lightning_inbound"
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
MEMO_DEFAULT = "payrail deposit"


def watch_job_id(deposit_id: str) -> str:
    return f"{WATCH_JOB}:{deposit_id}"


def plan(rt: Runtime) -> WatchPlan:
    s = rt.settings
    return WatchPlan(s.deposit_check_base_ms, s.deposit_check_cap_ms, s.deposit_late_window_ms)


# ---------------------------------------------------------------- the guarded transition


@dataclass
class DepositTx:
    """One transaction over deposits; its transitions are counted once it commits."""

    conn: AsyncConnection
    moves: list[tuple[str, str, int]] = field(default_factory=list)

    async def move(
        self,
        deposit_id: str,
        current: frozenset[DepositStatus],
        target: DepositStatus,
        now: int,
        **values: Any,
    ) -> RowMapping | None:
        """current → target if the deposit is still in one of `current`; None if it is not
        (another check won)."""
        assert all(is_legal(c, target) for c in current), f"illegal → {target}"
        before = await self.conn.scalar(select(D.status).where(D.id == deposit_id))
        row = (
            (
                await self.conn.execute(
                    update(deposits)
                    .where(D.id == deposit_id, D.status.in_([c.value for c in current]))
                    .values(status=target.value, updated_at=now, **values)
                    .returning(*deposits.c)
                )
            )
            .mappings()
            .first()
        )
        if row is not None:
            self.moves.append((str(before), target.value, int(row["amount"])))
            await _callback(self.conn, row, now)
        return row


@asynccontextmanager
async def deposit_tx(rt: Runtime) -> AsyncIterator[DepositTx]:
    async with rt.engine.begin() as conn:
        tx = DepositTx(conn)
        yield tx
    for from_status, to_status, amount in tx.moves:
        metrics.DEPOSIT_TRANSITIONS.labels(from_status=from_status, to_status=to_status).inc()
        if to_status == DepositStatus.COMPLETED.value:
            metrics.DEPOSIT_CREDITED_SATS.inc(amount)


CALLBACK_EVENTS = {
    DepositStatus.COMPLETED.value: "deposit.completed",
    DepositStatus.EXPIRED.value: "deposit.expired",
}


async def _callback(conn: AsyncConnection, row: RowMapping, now: int) -> None:
    """In the transition's transaction: the signed event to the deposit's callbackUrl and its
    delivery job (services/callbacks.py delivers, retries and logs it like a payout's; the
    callbacks row's payout_id column holds the deposit id). Sequence 1, 2: an expired
    deposit paid late sends deposit.expired, then deposit.completed."""
    event_name = CALLBACK_EVENTS.get(row["status"])
    if not row["callback_url"] or event_name is None:
        return
    C = callbacks_table.c
    previous = await conn.scalar(
        select(func.coalesce(func.max(C.sequence), 0)).where(C.payout_id == row["id"])
    )
    event, job = callbacks.event_rows(row, view(row), now, int(previous or 0) + 1)
    payload = json.loads(event["payload"]) | {"event": event_name}
    event["payload"] = json.dumps(payload, separators=(",", ":"))
    await conn.execute(insert(callbacks_table).values(**event))
    await conn.execute(queue.INSERT_JOB, job)


# ---------------------------------------------------------------- reads


async def load(conn: AsyncConnection, deposit_id: str) -> RowMapping | None:
    return (await conn.execute(select(deposits).where(D.id == deposit_id))).mappings().first()


async def get_deposit(rt: Runtime, deposit_id: str, project_id: str | None = None) -> RowMapping:
    """One deposit; another project's is as missing as an unknown one (404)."""
    async with rt.engine.connect() as conn:
        row = await load(conn, deposit_id)
    if row is None or (project_id is not None and row["project_id"] != project_id):
        raise errors.DepositNotFound(f"No deposit with id {deposit_id}.")
    return row


async def list_deposits(
    rt: Runtime,
    project_id: str,
    status: DepositStatus | None,
    limit: int = LIST_LIMIT_DEFAULT,
    cursor: str | None = None,
) -> tuple[list[RowMapping], str | None]:
    """Newest first; the cursor is (created_at, id), so pages never skip or repeat one."""
    where = [D.project_id == project_id]
    if status is not None:
        where.append(D.status == status.value)
    return await pagination.newest_first(rt.engine, deposits, limit, cursor, *where)


def view(row: RowMapping) -> dict[str, Any]:
    """The public deposit object (camelCase, ISO 8601 UTC times, amounts in sats)."""
    return {
        "id": row["id"],
        "projectId": row["project_id"],
        "amount": row["amount"],
        "status": row["status"],
        "invoice": row["invoice"],
        "paymentHash": row["payment_hash"],
        "description": row["description"],
        "expiresAt": iso(row["expires_at"]),
        "createdAt": iso(row["created_at"]),
        "completedAt": iso(row["completed_at"]),
        "expiredAt": iso(row["expired_at"]),
        # Completed after it had been expired: the payment arrived late and was credited.
        "late": row["status"] == DepositStatus.COMPLETED.value and row["expired_at"] is not None,
        "callbackUrl": row["callback_url"],
    }


# ---------------------------------------------------------------- create


@dataclass(frozen=True)
class Created:
    row: RowMapping
    replay: bool


async def create_deposit(rt: Runtime, req: DepositRequest) -> Created:
    async with rt.engine.connect() as conn:
        if await conn.scalar(select(projects.c.id).where(projects.c.id == req.project_id)) is None:
            raise errors.ProjectNotFound(f"No project with id {req.project_id}.")
    if req.idempotency_key is not None:
        earlier = await _by_key(rt, req)
        if earlier is not None:
            return Created(earlier, replay=True)
    try:
        invoice = await rt.node.create_invoice(
            req.amount,
            req.description or MEMO_DEFAULT,
            req.expires_in_s,
            rt.settings.deposit_webhook_url or None,
        )
    except UnknownOutcome as exc:
        raise errors.LightningBackendUnavailable(
            f"The Lightning backend did not answer the invoice request ({exc}). No deposit "
            "was made; try again (with the same Idempotency-Key, if you sent one)."
        ) from None
    except InvoiceRefused as exc:
        raise errors.LightningBackendRefused(
            f"The Lightning backend made no invoice: {exc}. No deposit was made."
        ) from None
    now = rt.clock.now_ms()
    deposit_id = "dep_" + secrets.token_hex(12)
    try:
        async with rt.engine.begin() as conn:
            await ledger.ensure_account(
                conn, INBOUND_ACCOUNT, acct.Code.FUNDING, now, allow_negative=True
            )
            row = (
                (
                    await conn.execute(
                        insert(deposits)
                        .values(
                            id=deposit_id,
                            project_id=req.project_id,
                            amount=req.amount,
                            description=req.description,
                            status=DepositStatus.OPEN.value,
                            invoice=invoice.bolt11,
                            payment_hash=invoice.payment_hash,
                            idempotency_key=req.idempotency_key,
                            request_hash=req.fingerprint(),
                            expires_at=now + req.expires_in_s * 1000,
                            callback_url=req.callback_url,
                            checks=0,
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(*deposits.c)
                    )
                )
                .mappings()
                .one()
            )
            first_check = plan(rt).next_check_ms(
                DepositStatus.OPEN, 1, row["expires_at"], now, _jitter()
            )
            await queue.enqueue(
                conn,
                WATCH_JOB,
                {"depositId": deposit_id},
                now,
                job_id=watch_job_id(deposit_id),
                run_at_ms=first_check,
            )
    except IntegrityError:
        # The same Idempotency-Key raced us and won: answer as it did. (Our invoice was
        # shown to nobody, so nobody can pay it.)
        earlier = await _by_key(rt, req) if req.idempotency_key is not None else None
        if earlier is None:
            raise
        return Created(earlier, replay=True)
    metrics.DEPOSIT_TRANSITIONS.labels(from_status="none", to_status="open").inc()
    log.info("deposit_created", deposit_id=deposit_id, project_id=req.project_id)
    return Created(row, replay=False)


async def _by_key(rt: Runtime, req: DepositRequest) -> RowMapping | None:
    async with rt.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(deposits).where(
                        D.project_id == req.project_id, D.idempotency_key == req.idempotency_key
                    )
                )
            )
            .mappings()
            .first()
        )
    if row is not None and row["request_hash"] != req.fingerprint():
        raise errors.IdempotencyKeyReused(
            "This Idempotency-Key already made another deposit (other amount, description or "
            "expiresInS). Use a new key for a new deposit.",
            depositId=row["id"],
        )
    return row


# ---------------------------------------------------------------- check (the one credit path)


async def check(rt: Runtime, deposit_id: str, *, cause: str) -> RowMapping:
    """Ask the backend about the deposit's invoice and apply its answer. UnknownOutcome when
    the backend does not answer (nothing changes then but the count of checks)."""
    async with rt.engine.connect() as conn:
        row = await load(conn, deposit_id)
    if row is None:
        raise errors.DepositNotFound(f"No deposit with id {deposit_id}.")
    if row["status"] == DepositStatus.COMPLETED.value:
        return row  # final: the backend is not asked again
    try:
        status = await rt.node.invoice_status(row["payment_hash"])
    except UnknownOutcome:
        await _count_check(rt, deposit_id)
        raise
    rt.crashpoint("deposit_after_status")
    return await apply(rt, row, status, cause=cause)


async def apply(rt: Runtime, row: RowMapping, status: InvoiceStatus, *, cause: str) -> RowMapping:
    """The backend's answer about this deposit's invoice, in one transaction."""
    now = rt.clock.now_ms()
    deposit_id = row["id"]
    moved = None
    async with deposit_tx(rt) as tx:
        if status.state == InvoiceState.PAID and _covers(row, status):
            credit = transfer_id(row["payment_hash"])
            moved = await tx.move(
                deposit_id,
                CREDITABLE,
                DepositStatus.COMPLETED,
                now,
                completed_at=now,
                transfer_id=credit,
                checks=D.checks + 1,
            )
            if moved is not None:
                await ledger.transfer(
                    tx.conn,
                    ledger.Transfer(
                        credit,
                        INBOUND_ACCOUNT,
                        acct.project_account(row["project_id"]),
                        row["amount"],
                    ),
                    now,
                )
        elif status.state != InvoiceState.PAID and now >= row["expires_at"]:
            moved = await tx.move(
                deposit_id,
                frozenset({DepositStatus.OPEN}),
                DepositStatus.EXPIRED,
                now,
                expired_at=now,
                checks=D.checks + 1,
            )
        if moved is None:
            await tx.conn.execute(
                update(deposits).where(D.id == deposit_id).values(checks=D.checks + 1)
            )
            moved = await load(tx.conn, deposit_id)
    assert moved is not None
    if moved["status"] != row["status"]:
        log.info(
            "deposit_transition",
            deposit_id=deposit_id,
            from_status=row["status"],
            to_status=moved["status"],
            cause=cause,
        )
    return moved


def _covers(row: RowMapping, status: InvoiceStatus) -> bool:
    """A paid invoice is credited with the deposit's amount; a backend that reports less
    received than the invoice asked is not believed (logged; reconcile shows it)."""
    paid = status.amount_paid_msat
    if paid is not None and paid < row["amount"] * 1000:
        log.error("deposit_underpaid", deposit_id=row["id"], paid_msat=paid)
        return False
    return True


async def _count_check(rt: Runtime, deposit_id: str) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(update(deposits).where(D.id == deposit_id).values(checks=D.checks + 1))


# ---------------------------------------------------------------- the watcher (a job)


def _jitter() -> int:
    return random.randint(0, 1000)


async def watch(rt: Runtime, job: queue.Job) -> None:
    """The deposit_watch job: one check, then due again by the deposit's schedule, or done
    (completed; expired and past the late window). Finishes its own job row."""
    deposit_id = str(job.payload.get("depositId", ""))
    async with rt.engine.connect() as conn:
        row = await load(conn, deposit_id)
    if row is not None and row["status"] != DepositStatus.COMPLETED.value:
        try:
            row = await check(rt, deposit_id, cause="watcher")
        except UnknownOutcome as exc:
            log.warning("deposit_check_unanswered", deposit_id=deposit_id, error=str(exc))
            async with rt.engine.connect() as conn:
                row = await load(conn, deposit_id)
    now = rt.clock.now_ms()
    due = None
    if row is not None:
        due = plan(rt).next_check_ms(
            DepositStatus(row["status"]), row["checks"], row["expires_at"], now, _jitter()
        )
    async with rt.engine.begin() as conn:
        if due is None:
            await queue.complete(conn, job.id, now)
        else:
            await queue.again(conn, job.id, due, now)


# ---------------------------------------------------------------- the push (LNbits' webhook)


async def receive_push(rt: Runtime, body: Any) -> RowMapping:
    """LNbits posts the paid Payment to the webhook given with the invoice. Its body only
    names the payment hash to check: the backend is asked, and its answer decides.

    LNbits 1.6 sends `json=payment.json()`: the Payment encoded twice, a JSON string that
    holds the object; both that and the object itself are read."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    payment_hash = body.get("payment_hash") if isinstance(body, dict) else None
    if not is_payment_hash(payment_hash):
        raise errors.ValidationError(
            "The push must carry payment_hash (64 hex characters).", field="payment_hash"
        )
    async with rt.engine.connect() as conn:
        deposit_id = await conn.scalar(select(D.id).where(D.payment_hash == payment_hash))
    if deposit_id is None:
        raise errors.DepositNotFound("No deposit has that payment hash.")
    return await check_or_unavailable(rt, deposit_id, cause="push")


async def check_or_unavailable(rt: Runtime, deposit_id: str, *, cause: str) -> RowMapping:
    """check(), its UnknownOutcome as the API's 503 (nothing changed; the watcher asks again)."""
    try:
        return await check(rt, deposit_id, cause=cause)
    except UnknownOutcome as exc:
        raise errors.LightningBackendUnavailable(
            f"The Lightning backend did not answer ({exc}); nothing changed. The watcher asks "
            "again on its own."
        ) from None


# ---------------------------------------------------------------- sandbox


async def sandbox_pay(rt: Runtime, deposit_id: str, project_id: str | None) -> RowMapping:
    """Sandbox: the simulated node's invoice of this deposit is paid, then checked (as the
    watcher would a moment later)."""
    row = await get_deposit(rt, deposit_id, project_id)
    pay = getattr(rt.node, "pay_invoice", None)
    if pay is None:
        raise errors.NotFound("Paying a deposit by hand needs the simulated Lightning node.")
    await pay(row["payment_hash"])
    return await check_or_unavailable(rt, deposit_id, cause="sandbox: invoice paid")
