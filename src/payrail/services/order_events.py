"""The second half of the pay-in saga: the provider's word applied to orders.

    webhook   verify Stripe-Signature → insert the event (unique id) + its job → 200 at once
    job       lock the order row → not ready (payment_pending/processing)? retry with backoff,
              dead after the configured attempts (replayable) → else apply if legal:
              payment_complete writes ONE payment log row, the ledger transfer (provider
              clearing → merchant revenue) and the fulfilment job, in the same transaction
    sweeper   orders waiting on the provider past a threshold: processing → ask create again
              with the same key (Stripe answers what the first call did); submitted →
              retrieve the intent; the truth is applied exactly as an event would be
    fulfil    payment_complete → fulfilled

Nothing here trusts arrival order: an event is applied only to the attempt it belongs to
(its intent id), only by a legal transition, and only once (the event id, the payment
log's key and the ledger transfer's id each refuse a second).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from payrail.bootstrap import Runtime
from payrail.db.tables import order_payments, orders, provider_events
from payrail.domain import errors
from payrail.domain.orders import (
    AWAITING_PROVIDER,
    CHARGED,
    EVENT_OUTCOMES,
    IntentOutcome,
    OrderStatus,
    intent_outcome,
    is_legal,
)
from payrail.domain.text import check_json
from payrail.jobs import queue
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.psp.provider import (
    Intent,
    InvalidEvent,
    ProviderRefused,
    ProviderUnreachable,
)
from payrail.services import orders as order_service
from payrail.services.orders import OrderTx, order_tx
from payrail.support import metrics

log = structlog.get_logger("payrail.order_events")
O = orders.c  # noqa: E741
E = provider_events.c

PROVIDER = "stripe"
EVENT_JOB = "stripe_event"
FULFIL_JOB = "fulfil_order"
EVENT_ID_MAX_CHARS = 64  # Stripe's are evt_ + 24; the job id adds a prefix to 80 at most
WEBHOOK_BACKOFF_CAP_MS = 900_000
SWEEP_BATCH_MAX = 50
NOT_READY = frozenset({OrderStatus.PENDING, OrderStatus.PROCESSING})


def event_job_id(event_id: str) -> str:
    return f"{EVENT_JOB}:{event_id}"


def fulfil_job_id(order_id: str) -> str:
    return f"{FULFIL_JOB}:{order_id}"


# ---------------------------------------------------------------- the webhook endpoint


@dataclass(frozen=True)
class Received:
    event_id: str
    duplicate: bool


def _event_fields(event: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
    """(event id, type, intent id, order id) of a verified event, or a 400."""
    check_json(event, "The Stripe event")  # a NUL in a field PostgreSQL stores was a 500
    event_id, type_, data = event.get("id"), event.get("type"), event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if (
        not isinstance(event_id, str)
        or not event_id.startswith("evt_")
        or len(event_id) > EVENT_ID_MAX_CHARS
        or not isinstance(type_, str)
        or len(type_) > 64
        or not isinstance(obj, dict)
    ):
        raise errors.ValidationError("The payload is not a Stripe event (id, type, data.object).")
    intent_id = obj.get("id") if obj.get("object") == "payment_intent" else None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    order_id = metadata.get("orderId")
    if not isinstance(order_id, str) or len(order_id) > 64:
        order_id = None
    if not isinstance(intent_id, str) or len(intent_id) > 255:
        intent_id = None
    return event_id, type_, intent_id, order_id


async def receive_webhook(rt: Runtime, payload: bytes, signature: str | None) -> Received:
    """Verify, store once, enqueue: nothing else, so the answer is immediate."""
    try:
        event = rt.provider.verify_event(payload, signature)
    except InvalidEvent as exc:
        metrics.WEBHOOK_EVENTS_RECEIVED.labels(provider=PROVIDER, result="bad_signature").inc()
        reason = str(exc).rstrip(".")
        raise errors.InvalidSignature(
            f"The Stripe-Signature header does not verify: {reason}. Nothing was stored."
        ) from None
    event_id, type_, intent_id, order_id = _event_fields(event)
    now = rt.clock.now_ms()
    # A type the saga does not act on (payment_intent.created, …) is recorded as processed:
    # kept for the record and for deduplication, with no job to run.
    acted_on = type_ in EVENT_OUTCOMES
    try:
        async with rt.engine.begin() as conn:
            await conn.execute(
                insert(provider_events).values(
                    id=event_id,
                    provider=PROVIDER,
                    type=type_,
                    order_id=order_id,
                    payment_intent_id=intent_id,
                    payload=payload.decode(),
                    received_at=now,
                    processed_at=None if acted_on else now,
                    outcome=None if acted_on else "ignored",
                )
            )
            if acted_on:
                await queue.enqueue(
                    conn,
                    EVENT_JOB,
                    {"eventId": event_id},
                    now,
                    job_id=event_job_id(event_id),
                    max_attempts=rt.settings.webhook_attempts_max,
                )
    except IntegrityError:  # the provider sent it again: stored once already
        metrics.WEBHOOK_EVENTS_RECEIVED.labels(provider=PROVIDER, result="duplicate").inc()
        return Received(event_id, duplicate=True)
    metrics.WEBHOOK_EVENTS_RECEIVED.labels(provider=PROVIDER, result="accepted").inc()
    return Received(event_id, duplicate=False)


# ---------------------------------------------------------------- applying the provider's word


async def apply_intent(
    rt: Runtime,
    tx: OrderTx,
    order: RowMapping,
    intent_id: str,
    outcome: IntentOutcome,
    *,
    cause: str,
) -> str:
    """Apply an intent's outcome to its (locked) order. Returns applied | ignored | illegal."""
    current = OrderStatus(order["status"])
    if order["payment_intent_id"] != intent_id or outcome == IntentOutcome.PENDING:
        return "ignored"  # another attempt's intent, or nothing final yet
    target = OrderStatus.COMPLETE if outcome == IntentOutcome.SUCCEEDED else OrderStatus.FAILED
    if current == target or (target == OrderStatus.COMPLETE and current in CHARGED):
        return "ignored"  # applied before: a duplicate or a late copy
    if not is_legal(current, target):
        log.warning("order_event_illegal", order_id=order["id"], status=current, target=target)
        return "illegal_transition"
    now = rt.clock.now_ms()
    if target == OrderStatus.FAILED:
        moved = await tx.move(
            order["id"],
            current,
            target,
            now,
            cause=cause,
            failure_code="PAYMENT_FAILED",
            failure_reason="Stripe: the payment intent did not succeed.",
            check_at=None,
        )
        return "applied" if moved is not None else "ignored"
    moved = await tx.move(
        order["id"], current, target, now, cause=cause, completed_at=now, check_at=None
    )
    if moved is None:
        return "ignored"
    await _post_payment(tx, moved, cause, now)
    return "applied"


async def _post_payment(tx: OrderTx, order: RowMapping, cause: str, now: int) -> None:
    """The payment log row, the ledger transfer and the fulfilment job of a completed order."""
    transfer_id = acct.order_transfer_id(order["id"])
    await tx.conn.execute(
        insert(order_payments).values(
            order_id=order["id"],
            payment_intent_id=order["payment_intent_id"],
            amount=order["amount"],
            currency=order["currency"],
            transfer_id=transfer_id,
            cause=cause[:120],
            created_at=now,
        )
    )
    await queue.enqueue(
        tx.conn, FULFIL_JOB, {"orderId": order["id"]}, now, job_id=fulfil_job_id(order["id"])
    )
    # Last: the ledger, whose clearing-account row lock is held until COMMIT.
    await ledger.transfer(
        tx.conn,
        ledger.Transfer(
            transfer_id,
            acct.provider_clearing(order["currency"]),
            acct.merchant_revenue(order["project_id"], order["currency"]),
            order["amount"],
        ),
        now,
    )


async def process_event(rt: Runtime, job: queue.Job) -> None:
    """The event job: apply once, or reschedule while the order is not ready. Self-completing."""
    event_id = job.payload["eventId"]
    now = rt.clock.now_ms()
    result, received_at, state = "ignored", now, "done"
    async with order_tx(rt) as tx:
        event = (
            (await tx.conn.execute(select(provider_events).where(E.id == event_id)))
            .mappings()
            .first()
        )
        if event is None or event["processed_at"] is not None:
            await queue.complete(tx.conn, job.id, now)
            return
        received_at = event["received_at"]
        outcome = EVENT_OUTCOMES.get(event["type"])
        order = None
        if outcome is not None and event["order_id"] and event["payment_intent_id"]:
            order = await order_service.load(tx.conn, event["order_id"], lock=True)
            if order is None or OrderStatus(order["status"]) in NOT_READY:
                result = "not_ready"
            else:
                result = await apply_intent(
                    rt,
                    tx,
                    order,
                    event["payment_intent_id"],
                    outcome,
                    cause=f"webhook: {event['type']} {event_id}",
                )
        if result == "not_ready":
            retry_ms = queue.backoff_ms(
                job.attempts,
                base_ms=rt.settings.webhook_retry_base_ms,
                cap_ms=WEBHOOK_BACKOFF_CAP_MS,
            )
            status = order["status"] if order is not None else "unknown order"
            state = await queue.reschedule(
                tx.conn, job.id, now + retry_ms, now, f"order not ready: {status}"
            )
        else:
            await tx.conn.execute(
                update(provider_events)
                .where(E.id == event_id)
                .values(processed_at=now, outcome=result)
            )
            await queue.complete(tx.conn, job.id, now)
    if result == "not_ready":
        metrics.WEBHOOK_EVENTS_RETRIED.labels(provider=PROVIDER, reason="order_not_ready").inc()
        if state == "dead":
            log.warning("stripe_event_dead", event_id=event_id, attempts=job.attempts)
        return
    metrics.WEBHOOK_EVENTS_APPLIED.labels(provider=PROVIDER, outcome=result).inc()
    if result == "applied":
        metrics.WEBHOOK_LAG_SECONDS.labels(provider=PROVIDER).observe(
            max(0, now - received_at) / 1000
        )


async def fulfil(rt: Runtime, job: queue.Job) -> None:
    """payment_complete → fulfilled. Self-completing; a second run changes nothing."""
    now = rt.clock.now_ms()
    async with order_tx(rt) as tx:
        await tx.move(
            job.payload["orderId"],
            OrderStatus.COMPLETE,
            OrderStatus.FULFILLED,
            now,
            cause="fulfilment: done",
            fulfilled_at=now,
        )
        await queue.complete(tx.conn, job.id, now)


# ---------------------------------------------------------------- the sweeper


async def sweep_due(rt: Runtime, *, everything: bool = False) -> int:
    """Ask the provider about orders waiting on it past the threshold. Returns orders checked.

    Each order is claimed by moving its check_at forward in a guarded UPDATE, so several
    workers never ask about one order at once.
    """
    now = rt.clock.now_ms()
    waiting = [s.value for s in AWAITING_PROVIDER]
    query = select(O.id, O.check_at).where(O.status.in_(waiting))
    if not everything:
        query = query.where(O.check_at <= now)
    async with rt.engine.connect() as conn:
        due = list((await conn.execute(query.order_by(O.check_at).limit(SWEEP_BATCH_MAX))).all())
    checked = 0
    for order_id, check_at in due:
        async with rt.engine.begin() as conn:
            claimed = await conn.execute(
                update(orders)
                .where(O.id == order_id, O.status.in_(waiting), O.check_at == check_at)
                .values(check_at=now + rt.settings.order_sweep_after_ms)
            )
        if claimed.rowcount == 1:
            await check_order(rt, order_id)
            checked += 1
    return checked


async def check_order(rt: Runtime, order_id: str) -> None:
    """Find out from the provider what happened to an order's attempt, and apply it."""
    async with rt.engine.connect() as conn:
        order = await order_service.load(conn, order_id)
    assert order is not None
    status = OrderStatus(order["status"])
    try:
        if status == OrderStatus.PROCESSING:
            # Same key, same parameters: Stripe answers what the first call did (or makes
            # the call now, if it never arrived). Either way the outcome becomes known.
            key = order["provider_idempotency_key"]
            try:
                result: Intent | ProviderRefused = await rt.provider.create_intent(
                    order_id=order_id,
                    amount=order["amount"],
                    currency=order["currency"],
                    payment_method=order["payment_method"],
                    idempotency_key=key,
                )
            except ProviderRefused as refusal:
                result = refusal
            await order_service.record_create_result(rt, order_id, key, result, cause="sweeper")
            if not isinstance(result, Intent):
                return
            intent: Intent | None = result
        elif status == OrderStatus.SUBMITTED:
            intent = await rt.provider.retrieve_intent(order["payment_intent_id"])
        else:
            return
    except ProviderUnreachable:
        log.info("order_check_unanswered", order_id=order_id)  # asked again next sweep
        return
    if intent is None:
        log.warning("order_intent_missing", order_id=order_id)
        return
    async with order_tx(rt) as tx:
        locked = await order_service.load(tx.conn, order_id, lock=True)
        assert locked is not None
        result_name = await apply_intent(
            rt,
            tx,
            locked,
            intent.id,
            intent_outcome(intent.status),
            cause=f"sweeper: Stripe says {intent.status}",
        )
    log.info("order_checked", order_id=order_id, intent_status=intent.status, result=result_name)
