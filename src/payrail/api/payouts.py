"""HTTP routes of payouts: create, look up, list, history, and the sandbox status change."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.api.auth import Principal
from payrail.api.context import ApiContext
from payrail.api.errors import envelope, int_param, page_data, read_json
from payrail.api.models import doc, header_param, limit_param, query_param
from payrail.api.models.payouts import (
    PAYOUT_EXAMPLE,
    Payout,
    PayoutHistory,
    PayoutPage,
    PayoutRequest,
    StatusChange,
)
from payrail.domain import errors
from payrail.domain.payouts import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    FailureCode,
    State,
    parse_payout_request,
    parse_status,
)
from payrail.services import callback_urls, payouts


async def visible_payout(ctx: ApiContext, who: Principal, payout_id: str) -> Any:
    """The payout, if the caller may see it; another project's payout is a 404, not a 403."""
    row = await payouts.get_payout(ctx.rt, payout_id)
    if not who.admin and row["project_id"] != who.project_id:
        raise errors.PayoutNotFound(f"No payout with id {payout_id}.")
    return row


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt, settings = ctx.rt, ctx.settings

    @api.post(
        "/payouts",
        **doc(
            ok={
                200: (Payout, "Replay: the same key and body; the original payout (or expired)"),
                201: (Payout, "Completed: paid at the node, charge posted"),
                202: (Payout, "Pending: in flight; the worker finishes it"),
            },
            errors={
                400: (
                    "VALIDATION_ERROR",
                    "INVALID_AMOUNT",
                    "DESCRIPTION_TOO_LONG",
                    "INVALID_CALLBACK_URL",
                    "INVALID_INVOICE",
                ),
                402: ("INSUFFICIENT_BALANCE",),
                403: ("FORBIDDEN", "RECIPIENT_SUSPENDED"),
                404: ("PROJECT_NOT_FOUND", "RECIPIENT_NOT_FOUND"),
                422: ("IDEMPOTENCY_KEY_REUSED", "DESTINATION_UNSUPPORTED"),
                429: ("RATE_LIMIT_EXCEEDED", "RECIPIENT_TEMPORARILY_BLOCKED"),
                502: ("PAYMENT_FAILED", "RECIPIENT_INVOICE_INVALID", "RECIPIENT_UNREACHABLE"),
                504: ("GATEWAY_TIMEOUT",),
            },
            body=PayoutRequest,
            body_example=PAYOUT_EXAMPLE,
            headers=[
                header_param(
                    "Idempotency-Key", "One key per logical payout.", IDEMPOTENCY_KEY_MAX_CHARS
                )
            ],
            summary="Create a payout (502/504: the balance was rolled back)",
        ),
    )
    async def create_payout(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        body = await read_json(request)
        refusal = await callback_urls.refusal_at_creation(  # production: DNS, so not in domain
            settings, body.get("callbackUrl") if isinstance(body, dict) else None
        )
        req = parse_payout_request(
            body, request.headers.get("idempotency-key"), callback_url_refusal=refusal
        )
        who.require(req.project_id)
        outcome = await payouts.create_payout(rt, req)
        return payout_answer(outcome)

    @api.get(
        "/payouts/by-internal-id/{internal_id}",
        **doc(
            ok={200: (Payout, "The payout")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",), 404: ("PAYOUT_NOT_FOUND",)},
            query=[query_param("projectId", "Admin key: the project to look in.")],
        ),
    )
    async def by_internal_id(internal_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id = request.query_params.get("projectId") or who.project_id
        if project_id is None:
            raise errors.ValidationError("The admin key needs ?projectId= for this lookup.")
        who.require(project_id)
        row = await payouts.get_by_internal_id(rt, project_id, internal_id)
        return envelope(True, "Payout found", payouts.view(row), 200)

    @api.get(
        "/payouts/{payout_id}",
        **doc(ok={200: (Payout, "The payout")}, errors={404: ("PAYOUT_NOT_FOUND",)}),
    )
    async def get_payout(payout_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        row = await visible_payout(ctx, who, payout_id)
        return envelope(True, "Payout found", payouts.view(row), 200)

    @api.get(
        "/payouts/{payout_id}/history",
        **doc(ok={200: (PayoutHistory, "Every state change")}, errors={404: ("PAYOUT_NOT_FOUND",)}),
    )
    async def payout_history(payout_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        await visible_payout(ctx, who, payout_id)
        events = await payouts.history(rt, payout_id)
        data = {"payoutId": payout_id, "events": events, "count": len(events)}
        return envelope(True, "Payout history", data, 200)

    @api.get(
        "/payouts",
        **doc(
            ok={200: (PayoutPage, "Newest first")},
            errors={400: ("VALIDATION_ERROR", "INVALID_STATUS"), 403: ("FORBIDDEN",)},
            query=[
                query_param("projectId", "Admin key: one project (default all)."),
                query_param("status", "pending, completed, expired or error"),
                limit_param(payouts.LIST_LIMIT_MAX, payouts.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_payouts(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        q = request.query_params
        project_id = ctx.scope(who, q.get("projectId"))
        status = parse_status(q["status"]) if q.get("status") else None
        limit = int_param(
            q.get("limit"), "limit", payouts.LIST_LIMIT_DEFAULT, 1, payouts.LIST_LIMIT_MAX
        )
        page, cursor = await payouts.list_payouts(rt, project_id, status, limit, q.get("cursor"))
        data = page_data("payouts", [payouts.view(r) for r in page], cursor)
        return envelope(True, "Payouts", data, 200)

    @api.patch(
        "/payouts/{payout_id}/status",
        **doc(
            ok={200: (Payout, "Moved through the state machine")},
            errors={
                400: ("VALIDATION_ERROR", "INVALID_STATUS"),
                404: ("NOT_FOUND", "PAYOUT_NOT_FOUND"),
                409: ("INVALID_STATUS_TRANSITION",),
            },
            body=StatusChange,
            summary="Sandbox only: change a payout's status",
        ),
    )
    async def patch_status(payout_id: str, request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        body = await read_json(request)
        status = parse_status(body.get("status") if isinstance(body, dict) else None)
        await visible_payout(ctx, who, payout_id)
        row = await payouts.set_status(rt, payout_id, status)
        return envelope(True, f"Payout is {status.value}", payouts.view(row), 200)


def payout_answer(outcome: payouts.CreateOutcome) -> JSONResponse:
    """201 completed, 202 pending, 504/502 error; a replay answers as the original did."""
    row = outcome.payout
    data = payouts.view(row)
    state = State(row["state"])
    if state == State.FAILED:
        code = FailureCode(row["failure_code"] or FailureCode.PAYMENT_FAILED)
        charged = row["charge_posted"]
        status = 504 if code == FailureCode.GATEWAY_TIMEOUT else 502
        what = "timed out" if status == 504 else "failed"
        rolled = (
            "the balance was charged (legacy mode)" if charged else "the balance was rolled back"
        )
        message = f"Lightning payment {what}; {rolled}."
        if outcome.replay:
            message = "Payout already processed: " + message
        data |= {
            "error": code.value,
            "balanceRolledBack": not charged,
            "chargedAmount": data["totalCost"] if charged else 0,
        }
        return envelope(False, message, data, status)
    if outcome.replay:
        return envelope(True, "Payout already processed", data, 200)
    if state == State.COMPLETED:
        return envelope(True, "Payout completed", data, 201)
    if state == State.EXPIRED:
        return envelope(True, "Payout expired before it was sent", data, 200)
    return envelope(True, "Payout accepted; the payment is in flight", data, 202)
