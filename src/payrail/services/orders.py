"""Order use cases: create, read, pay (the first half of the pay-in saga, docs/architecture.md).

    pay   tx1: pay request row (order, Idempotency-Key) → guarded payment_pending|failed →
               payment_processing, storing the provider idempotency key              COMMIT
          provider.create_intent(key, metadata.orderId)    no transaction is open during the call
          tx2: intent      → guarded payment_processing → payment_submitted + intent id
               refused     → payment_failed (nothing was charged)
               no answer   → stays payment_processing: the outcome is unknown, never guessed;
                             the sweeper asks again with the same key (order_events.py)

The order completes only from the provider's word (a webhook event or the sweeper), in
order_events.py. Every status change goes through `OrderTx.move`: a guarded UPDATE and its
audit row in one transaction, counted in the metrics once committed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime
from payrail.db.tables import order_pay_requests, orders, projects
from payrail.domain import errors
from payrail.domain.orders import (
    PAYABLE,
    OrderRequest,
    OrderStatus,
    PayRequest,
    is_legal,
)
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.psp.provider import Intent, ProviderRefused, ProviderUnreachable
from payrail.services import audit, pagination
from payrail.support import metrics
from payrail.support.clock import iso

log = structlog.get_logger("payrail.orders")
O = orders.c  # noqa: E741
Q = order_pay_requests.c

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
REPLAY_POLL_MS = 20
REPLAY_WAIT_EXTRA_MS = 1_000  # a replay waits for the original's provider call, plus this


class OutcomeCode:
    """How a pay request ended, stored so a replay with its key answers the same."""

    SUBMITTED = "submitted"
    FAILED = "failed"
    UNKNOWN = "unknown"


# ---------------------------------------------------------------- the guarded transition


@dataclass
class OrderTx:
    """One transaction over orders; the transitions it made are counted once it commits."""

    conn: AsyncConnection
    moves: list[tuple[str, str]] = field(default_factory=list)

    async def move(
        self,
        order_id: str,
        current: OrderStatus,
        target: OrderStatus,
        now: int,
        *conditions: Any,
        cause: str,
        **values: Any,
    ) -> RowMapping | None:
        """current → target if the order is still in `current`; None when someone else won."""
        assert is_legal(current, target), f"illegal order transition {current} → {target}"
        row = (
            (
                await self.conn.execute(
                    update(orders)
                    .where(O.id == order_id, O.status == current.value, *conditions)
                    .values(status=target.value, updated_at=now, **values)
                    .returning(*orders.c)
                )
            )
            .mappings()
            .first()
        )
        if row is not None:
            await audit.record_order_transition(
                self.conn, order_id, current.value, target.value, cause, now
            )
            self.moves.append((current.value, target.value))
        return row


@asynccontextmanager
async def order_tx(rt: Runtime) -> AsyncIterator[OrderTx]:
    async with rt.engine.begin() as conn:
        tx = OrderTx(conn)
        yield tx
    for from_status, to_status in tx.moves:
        metrics.ORDER_TRANSITIONS.labels(from_status=from_status, to_status=to_status).inc()


# ---------------------------------------------------------------- reads


async def load(conn: AsyncConnection, order_id: str, *, lock: bool = False) -> RowMapping | None:
    """The order row; with lock, held until COMMIT (PostgreSQL; SQLite serialises writers)."""
    query = select(orders).where(O.id == order_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).mappings().first()


async def get_order(rt: Runtime, order_id: str, project_id: str | None = None) -> RowMapping:
    """One order; another project's order is as missing as an unknown one (404)."""
    async with rt.engine.connect() as conn:
        row = await load(conn, order_id)
    if row is None or (project_id is not None and row["project_id"] != project_id):
        raise errors.OrderNotFound(f"No order with id {order_id}.")
    return row


async def history(rt: Runtime, order_id: str) -> list[dict[str, Any]]:
    async with rt.engine.connect() as conn:
        return await audit.order_history(conn, order_id)


async def list_orders(
    rt: Runtime,
    project_id: str | None,
    status: OrderStatus | None,
    limit: int = LIST_LIMIT_DEFAULT,
    cursor: str | None = None,
) -> tuple[list[RowMapping], str | None]:
    """Newest first; the cursor is (created_at, id) so pages never skip or repeat an order."""
    where = []
    if project_id is not None:
        where.append(O.project_id == project_id)
    if status is not None:
        where.append(O.status == status.value)
    return await pagination.newest_first(rt.engine, orders, limit, cursor, *where)


def view(row: RowMapping) -> dict[str, Any]:
    """The public order object (camelCase, ISO 8601 UTC times, amount in minor units)."""
    return {
        "id": row["id"],
        "projectId": row["project_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "customerId": row["customer_id"],
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
        "status": row["status"],
        "paymentMethod": row["payment_method"],
        "paymentIntentId": row["payment_intent_id"],
        "payAttempts": row["pay_attempts"],
        "failureCode": row["failure_code"],
        "failureReason": row["failure_reason"],
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
        "completedAt": iso(row["completed_at"]),
        "fulfilledAt": iso(row["fulfilled_at"]),
    }


# ---------------------------------------------------------------- create


async def create_order(rt: Runtime, req: OrderRequest) -> RowMapping:
    order_id = "ord_" + secrets.token_hex(12)
    now = rt.clock.now_ms()
    async with order_tx(rt) as tx:
        project = await tx.conn.scalar(select(projects.c.id).where(projects.c.id == req.project_id))
        if project is None:
            raise errors.ProjectNotFound(f"No project with id {req.project_id}.")
        row = (
            (
                await tx.conn.execute(
                    insert(orders)
                    .values(
                        id=order_id,
                        project_id=req.project_id,
                        amount=req.amount,
                        currency=req.currency,
                        customer_id=req.customer_id,
                        metadata=json.dumps(req.metadata) if req.metadata is not None else None,
                        status=OrderStatus.PENDING.value,
                        pay_attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*orders.c)
                )
            )
            .mappings()
            .one()
        )
        await audit.record_order_transition(
            tx.conn, order_id, None, OrderStatus.PENDING.value, "api: order created", now
        )
        # The accounts its payment will post to exist before any payment can complete.
        await ledger.ensure_account(
            tx.conn,
            acct.provider_clearing(req.currency),
            acct.Code.PROVIDER_CLEARING,
            now,
            allow_negative=True,
            currency=req.currency,
        )
        await ledger.ensure_account(
            tx.conn,
            acct.merchant_revenue(req.project_id, req.currency),
            acct.Code.MERCHANT_REVENUE,
            now,
            currency=req.currency,
        )
    log.info("order_created", order_id=order_id, project_id=req.project_id)
    return row


# ---------------------------------------------------------------- pay


@dataclass(frozen=True)
class PayOutcome:
    order: RowMapping
    error: errors.PayrailError | None  # the answer is this error, with the order
    replay: bool


def provider_key(order_id: str, idempotency_key: str) -> str:
    """The key sent to the provider: one per pay request, never shared between orders."""
    return f"payrail:{order_id}:{idempotency_key}"


async def pay_order(
    rt: Runtime, project_id: str | None, order_id: str, req: PayRequest
) -> PayOutcome:
    order = await get_order(rt, order_id, project_id)
    key = provider_key(order_id, req.idempotency_key)
    try:
        order = await _start_attempt(rt, order, req, key)
    except IntegrityError:  # this Idempotency-Key was used on this order: answer as it did
        return await _replay(rt, order_id, req)
    try:
        result: Intent | ProviderRefused | ProviderUnreachable = await rt.provider.create_intent(
            order_id=order_id,
            amount=order["amount"],
            currency=order["currency"],
            payment_method=req.payment_method,
            idempotency_key=key,
        )
    except (ProviderRefused, ProviderUnreachable) as answer:
        result = answer
    rt.crashpoint("after_intent_created")
    row = await record_create_result(rt, order_id, key, result, cause="pay")
    return PayOutcome(row, error_for(row, result), replay=False)


async def _start_attempt(rt: Runtime, order: RowMapping, req: PayRequest, key: str) -> RowMapping:
    """tx1: the pay request and the key are stored, the status guarded, before any call."""
    now = rt.clock.now_ms()
    current = OrderStatus(order["status"])
    async with order_tx(rt) as tx:
        await tx.conn.execute(
            insert(order_pay_requests).values(
                order_id=order["id"],
                idempotency_key=req.idempotency_key,
                request_hash=req.fingerprint(),
                attempt=order["pay_attempts"] + 1,
                created_at=now,
                updated_at=now,
            )
        )
        started = None
        if current in PAYABLE:
            # The optimistic lock: only from the status read above; a concurrent pay wins once.
            started = await tx.move(
                order["id"],
                current,
                OrderStatus.PROCESSING,
                now,
                cause="api: pay requested",
                payment_method=req.payment_method,
                provider_idempotency_key=key,
                payment_intent_id=None,
                failure_code=None,
                failure_reason=None,
                pay_attempts=O.pay_attempts + 1,
                check_at=now + rt.settings.order_sweep_after_ms,
            )
        if started is None:
            status = await tx.conn.scalar(select(O.status).where(O.id == order["id"]))
            raise errors.OrderNotPayable(
                f"Order {order['id']} is {status}: it is being paid or was paid, so it cannot "
                "be paid now. GET the order for its outcome.",
                currentStatus=status,
            )
    return started


async def record_create_result(
    rt: Runtime,
    order_id: str,
    key: str,
    result: Intent | ProviderRefused | ProviderUnreachable,
    *,
    cause: str,
) -> RowMapping:
    """tx2 (pay, or the sweeper asking again): what the provider said about the create call.

    Guarded on payment_processing AND this attempt's key: an answer for an older attempt, or
    one that another actor already recorded, changes nothing.
    """
    now = rt.clock.now_ms()
    same_attempt = O.provider_idempotency_key == key
    async with order_tx(rt) as tx:
        if isinstance(result, Intent):
            row = await tx.move(
                order_id,
                OrderStatus.PROCESSING,
                OrderStatus.SUBMITTED,
                now,
                same_attempt,
                cause=f"{cause}: Stripe created {result.id} ({result.status})",
                payment_intent_id=result.id,
                check_at=now + rt.settings.order_sweep_after_ms,
            )
            outcome, code = OutcomeCode.SUBMITTED, None
        elif isinstance(result, ProviderRefused):
            code = "CARD_DECLINED" if result.declined else "PROVIDER_ERROR"
            row = await tx.move(
                order_id,
                OrderStatus.PROCESSING,
                OrderStatus.FAILED,
                now,
                same_attempt,
                cause=f"{cause}: Stripe refused ({result.code})",
                payment_intent_id=result.intent.id if result.intent else None,
                failure_code=code,
                failure_reason=f"Stripe: {result.message}"[:500],
                check_at=None,
            )
            outcome = OutcomeCode.FAILED
        else:
            row, outcome, code = None, OutcomeCode.UNKNOWN, "PROVIDER_TIMEOUT"
        if row is not None or outcome == OutcomeCode.UNKNOWN:
            await tx.conn.execute(
                update(order_pay_requests)
                .where(Q.order_id == order_id, Q.outcome.is_(None))
                .values(outcome=outcome, error_code=code, updated_at=now)
            )
        current = row or await load(tx.conn, order_id)
    assert current is not None
    log.info("order_create_result", order_id=order_id, outcome=outcome, status=current["status"])
    return current


def error_for(
    order: RowMapping, result: Intent | ProviderRefused | ProviderUnreachable | None
) -> errors.PayrailError | None:
    """The answer a pay request gets, from the order as it stands after it."""
    status = OrderStatus(order["status"])
    if status == OrderStatus.FAILED:
        reason = order["failure_reason"] or "Stripe refused the payment."
        if order["failure_code"] == "CARD_DECLINED":
            return errors.CardDeclined(
                f"{reason} The order is payment_failed; pay again with another card and a "
                "new Idempotency-Key."
            )
        return errors.ProviderError(
            f"{reason} Nothing was charged. The order is payment_failed; pay again with a new "
            "Idempotency-Key."
        )
    if status == OrderStatus.PROCESSING and isinstance(result, ProviderUnreachable | None):
        return errors.ProviderTimeout(
            "Stripe did not answer in time, so the outcome is unknown and the order was not "
            "failed: payrail asks Stripe again with the same idempotency key and the order "
            "ends payment_complete or payment_failed by Stripe's answer. Do not pay it again "
            "before then; GET the order for its outcome."
        )
    return None


async def _replay(rt: Runtime, order_id: str, req: PayRequest) -> PayOutcome:
    """Same key, same body: the first request's outcome (waiting for it if it is running)."""
    wait_ms = rt.settings.stripe_timeout_ms + REPLAY_WAIT_EXTRA_MS
    deadline = rt.clock.now_ms() + wait_ms
    while True:
        async with rt.engine.connect() as conn:
            request = (
                await conn.execute(
                    select(order_pay_requests).where(
                        Q.order_id == order_id, Q.idempotency_key == req.idempotency_key
                    )
                )
            ).first()
            order = await load(conn, order_id)
        assert request is not None and order is not None
        if request.request_hash != req.fingerprint():
            raise errors.IdempotencyKeyReused(
                "This Idempotency-Key was already used to pay this order with another "
                "paymentMethod. Use a new key for a new attempt.",
                orderId=order_id,
            )
        if request.outcome is not None or rt.clock.now_ms() >= deadline:
            break
        await asyncio.sleep(REPLAY_POLL_MS / 1000)
    error: errors.PayrailError | None = None
    if request.outcome == OutcomeCode.FAILED:
        error = _failed_again(request.error_code)
    elif OrderStatus(order["status"]) == OrderStatus.PROCESSING:
        error = error_for(order, None)  # still unknown: the same 504 as the first answer
    return PayOutcome(order, error, replay=True)


def _failed_again(code: str | None) -> errors.PayrailError:
    if code == "CARD_DECLINED":
        return errors.CardDeclined(
            "This payment attempt was declined. Pay again with a new Idempotency-Key."
        )
    return errors.ProviderError(
        "This payment attempt failed at Stripe; nothing was charged. Pay again with a new "
        "Idempotency-Key."
    )
