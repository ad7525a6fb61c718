"""HTTP routes of card payments: orders, pay, the Stripe webhook, dead-job replay (admin)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.bootstrap import Runtime
from payrail.domain import errors
from payrail.domain.orders import (
    PAY_KEY_MAX_CHARS,
    parse_order_request,
    parse_pay_request,
    parse_status,
)
from payrail.entrypoints.http.auth import Principal
from payrail.entrypoints.http.errors import (
    envelope,
    error_response,
    int_param,
    mark_replayed,
    page_data,
    read_json,
)
from payrail.entrypoints.http.models import doc, header_param, limit_param, query_param
from payrail.entrypoints.http.models.cards import (
    JobId,
    JobList,
    Order,
    OrderDetail,
    OrderPage,
    OrderRequest,
    PayRequest,
    ReceivedEvent,
)
from payrail.jobs import queue
from payrail.services import order_events, orders

JOB_STATES = ("queued", "done", "dead")


def install(
    api: APIRouter, rt: Runtime, principal: Callable[[Request], Awaitable[Principal]]
) -> None:
    def cards_on() -> None:
        """Production without Stripe: payouts work, the card routes say why they do not."""
        if not rt.settings.card_payments:
            raise errors.CardPaymentsDisabled(
                "Card payments are disabled: this server runs without Stripe. Set "
                "PAYRAIL_STRIPE_API_KEY and PAYRAIL_STRIPE_WEBHOOK_SECRET to enable them."
            )

    def scope(who: Principal, project_id: str | None) -> str | None:
        """The project a request acts on: the key's own; the admin key may name one or none."""
        if project_id is not None:
            who.require(project_id)
            return project_id
        return who.project_id

    @api.post(
        "/orders",
        **doc(
            ok={201: (Order, "payment_pending")},
            errors={
                503: ("CARD_PAYMENTS_DISABLED",),
                400: ("VALIDATION_ERROR", "INVALID_AMOUNT", "INVALID_CURRENCY"),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
            },
            body=OrderRequest,
            body_example={"amount": 1999, "currency": "usd", "customerId": "cust_42"},
        ),
    )
    async def create_order(request: Request) -> JSONResponse:
        cards_on()
        who = await principal(request)
        body = await read_json(request)
        named = body.get("projectId") if isinstance(body, dict) else None
        project_id = scope(who, named if isinstance(named, str) else None)
        if project_id is None:
            raise errors.ValidationError("The admin key must name the order's projectId.")
        row = await orders.create_order(rt, parse_order_request(body, project_id))
        return envelope(
            True, "Order created; pay it with POST /orders/{id}/pay", orders.view(row), 201
        )

    @api.get(
        "/orders",
        **doc(
            ok={200: (OrderPage, "Newest first")},
            errors={
                503: ("CARD_PAYMENTS_DISABLED",),
                400: ("VALIDATION_ERROR", "INVALID_STATUS"),
                403: ("FORBIDDEN",),
            },
            query=[
                query_param("status", "an order status"),
                query_param("projectId", "Admin key: one project (default all)."),
                limit_param(orders.LIST_LIMIT_MAX, orders.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_orders(request: Request) -> JSONResponse:
        cards_on()
        who = await principal(request)
        q = request.query_params
        status = parse_status(q["status"]) if q.get("status") else None
        limit = int_param(
            q.get("limit"), "limit", orders.LIST_LIMIT_DEFAULT, 1, orders.LIST_LIMIT_MAX
        )
        page, cursor = await orders.list_orders(
            rt.reads(), scope(who, q.get("projectId")), status, limit, q.get("cursor")
        )
        data = page_data("orders", [orders.view(r) for r in page], cursor)
        return envelope(True, "Orders", data, 200)

    @api.get(
        "/orders/{order_id}",
        **doc(
            ok={200: (OrderDetail, "The order and its history")},
            errors={503: ("CARD_PAYMENTS_DISABLED",), 404: ("ORDER_NOT_FOUND",)},
        ),
    )
    async def get_order(order_id: str, request: Request) -> JSONResponse:
        cards_on()
        who = await principal(request)
        row = await orders.get_order(rt, order_id, who.project_id)
        data = orders.view(row) | {"history": await orders.history(rt, order_id)}
        return envelope(True, "Order found", data, 200)

    @api.post(
        "/orders/{order_id}/pay",
        **doc(
            ok={200: (Order, "payment_submitted (or already requested with this key)")},
            errors={
                503: ("CARD_PAYMENTS_DISABLED",),
                402: ("CARD_DECLINED",),
                404: ("ORDER_NOT_FOUND",),
                409: ("ORDER_NOT_PAYABLE",),
                502: ("PROVIDER_ERROR",),
                504: ("PROVIDER_TIMEOUT",),
            },
            body=PayRequest,
            body_example={"paymentMethod": "pm_card_visa"},
            headers=[
                header_param(
                    "Idempotency-Key",
                    "One key per payment attempt.",
                    PAY_KEY_MAX_CHARS,
                    required=True,
                )
            ],
        ),
    )
    async def pay(order_id: str, request: Request) -> JSONResponse:
        cards_on()
        who = await principal(request)
        req = parse_pay_request(await read_json(request), request.headers.get("idempotency-key"))
        outcome = await orders.pay_order(rt, who.project_id, order_id, req)
        data = orders.view(outcome.order)
        replayed = "Payment already requested with this Idempotency-Key: " if outcome.replay else ""
        if outcome.error is not None:
            answer = error_response(outcome.error)
            refused = envelope(
                False,
                replayed + outcome.error.message,
                data | {"error": outcome.error.code},
                answer.status_code,
            )
            return mark_replayed(refused, outcome.replay)
        message = "Payment submitted to Stripe; the order completes when Stripe confirms it."
        return mark_replayed(envelope(True, replayed + message, data, 200), outcome.replay)

    @api.post(
        "/webhooks/stripe",
        **doc(
            ok={200: (ReceivedEvent, "Stored (once per event id)")},
            errors={
                503: ("CARD_PAYMENTS_DISABLED",),
                400: ("INVALID_SIGNATURE", "VALIDATION_ERROR"),
            },
            auth=False,
            headers=[header_param("Stripe-Signature", "t=…,v1=… (verified, 300 s tolerance)")],
            summary="Stripe's events (signed by Stripe, not by an apikey)",
        ),
    )
    async def stripe_webhook(request: Request) -> JSONResponse:
        cards_on()
        received = await order_events.receive_webhook(
            rt, await request.body(), request.headers.get("stripe-signature")
        )
        message = "Event already received" if received.duplicate else "Event received"
        data = {"eventId": received.event_id, "duplicate": received.duplicate}
        return envelope(True, message, data, 200)

    # ------------------------------------------------------------ dead jobs (admin)

    @api.get(
        "/admin/jobs",
        **doc(
            ok={200: (JobList, "Jobs")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",)},
            query=[
                query_param("state", "queued, done or dead (default dead)"),
                query_param("kind", "e.g. stripe_event"),
                limit_param(queue.JOBS_LIST_MAX, 50),
            ],
        ),
    )
    async def list_jobs(request: Request) -> JSONResponse:
        (await principal(request)).require_admin()
        q = request.query_params
        state = q.get("state", "dead")
        if state not in JOB_STATES:
            raise errors.ValidationError(
                f"state must be one of {', '.join(JOB_STATES)}.", validStates=list(JOB_STATES)
            )
        limit = int_param(q.get("limit"), "limit", 50, 1, queue.JOBS_LIST_MAX)
        async with rt.engine.connect() as conn:
            found = await queue.list_jobs(conn, state, q.get("kind"), limit)
        return envelope(True, f"Jobs {state}", {"jobs": found, "count": len(found)}, 200)

    @api.post(
        "/admin/jobs/{job_id}/replay",
        **doc(
            ok={200: (JobId, "Queued again")},
            errors={403: ("FORBIDDEN",), 404: ("JOB_NOT_FOUND",), 409: ("JOB_NOT_DEAD",)},
        ),
    )
    async def replay_job(job_id: str, request: Request) -> JSONResponse:
        (await principal(request)).require_admin()
        await queue.replay_dead(rt.engine, job_id, rt.clock.now_ms())
        return envelope(True, "Job queued again with a fresh set of attempts", {"id": job_id}, 200)
