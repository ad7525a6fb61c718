"""HTTP routes of payouts: create (one, or a batch), look up, list, history, and the sandbox
status change."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain import errors
from payrail.domain.payouts import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    FailureCode,
    PayoutRequest,
    State,
    parse_payout_request,
    parse_player_id,
    parse_status,
)
from payrail.entrypoints.http.auth import Principal
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import (
    envelope,
    int_param,
    mark_replayed,
    page_data,
    read_json,
    status_for,
)
from payrail.entrypoints.http.models import doc, header_param, limit_param, query_param
from payrail.entrypoints.http.models.payouts import (
    BATCH_EXAMPLE,
    PAYOUT_EXAMPLE,
    BatchAnswer,
    BatchRequest,
    Payout,
    PayoutHistory,
    PayoutPage,
    StatusChange,
)
from payrail.entrypoints.http.models.payouts import (
    PayoutRequest as PayoutBody,
)
from payrail.services import approvals, batches, callback_urls, payouts

# 1,000 items of the largest fields fit; the other routes keep the 64 KiB default.
BATCH_BODY_MAX_BYTES = 1024 * 1024


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
                    "IDEMPOTENCY_KEY_MISMATCH",
                ),
                402: ("INSUFFICIENT_BALANCE",),
                403: (
                    "FORBIDDEN",
                    "RECIPIENT_SUSPENDED",
                    "PAYOUT_LIMIT_EXCEEDED",
                    "REJECTED_BY_APPROVER",
                ),
                404: ("PROJECT_NOT_FOUND", "RECIPIENT_NOT_FOUND", "QUOTE_NOT_FOUND"),
                409: ("INVOICE_ALREADY_USED", "INTERNAL_ID_TAKEN", "QUOTE_EXPIRED", "QUOTE_USED"),
                422: ("IDEMPOTENCY_KEY_REUSED", "DESTINATION_UNSUPPORTED"),
                429: (
                    "RATE_LIMIT_EXCEEDED",
                    "RECIPIENT_TEMPORARILY_BLOCKED",
                    "PLAYER_DAILY_LIMIT",
                    "PROJECT_DAILY_LIMIT",
                ),
                502: ("PAYMENT_FAILED", "RECIPIENT_INVOICE_INVALID", "RECIPIENT_UNREACHABLE"),
                504: ("GATEWAY_TIMEOUT",),
            },
            body=PayoutBody,
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
        _same_idempotency_key(body, request.headers.get("idempotency-key"))
        refusal = await callback_urls.refusal_at_creation(  # production: DNS, so not in domain
            settings, body.get("callbackUrl") if isinstance(body, dict) else None
        )
        req = parse_payout_request(
            body, request.headers.get("idempotency-key"), callback_url_refusal=refusal
        )
        who.require(req.project_id)
        outcome = await payouts.create_payout(rt, req)
        return payout_answer(outcome)

    @api.post(
        "/payouts/batch",
        **doc(
            ok={200: (BatchAnswer, "Every item answered as a single POST would be")},
            errors={
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
                422: ("IDEMPOTENCY_KEY_REUSED",),
            },
            body=BatchRequest,
            body_example=BATCH_EXAMPLE,
            headers=[
                header_param(
                    "Idempotency-Key",
                    "Required: a replay of the batch answers the same items.",
                    IDEMPOTENCY_KEY_MAX_CHARS,
                    required=True,
                )
            ],
            summary="Pay up to 1,000 recipients in one request",
        ),
    )
    async def create_batch(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        body = await read_json(request)
        batch_key = request.headers.get("idempotency-key")
        project_id, raw_items = _batch_shape(body, batch_key)
        who.require(project_id)
        assert batch_key is not None
        items = [
            await _batch_item(ctx, raw, project_id, batches.item_key(batch_key, i, None))
            for i, raw in enumerate(raw_items)
        ]
        answer = await batches.create_batch(rt, project_id, batch_key, items)
        data = {"projectId": project_id, "items": [_item_answer(a) for a in answer.items]}
        data["count"] = len(answer.items)
        message = "Batch already processed" if answer.replay else "Batch processed"
        return mark_replayed(envelope(True, message, data, 200), answer.replay)

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
        who = await ctx.principal(request, approver_ok=True)
        row = await visible_payout(ctx, who, payout_id)
        return envelope(True, "Payout found", payouts.view(row), 200)

    @api.get(
        "/payouts/{payout_id}/history",
        **doc(ok={200: (PayoutHistory, "Every state change")}, errors={404: ("PAYOUT_NOT_FOUND",)}),
    )
    async def payout_history(payout_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request, approver_ok=True)
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
                query_param("playerId", "Only this player's payouts (the payouts' playerId)."),
                query_param(
                    "approval",
                    "required: only the payouts waiting for an approver (the approvals "
                    "queue; not with status or playerId)",
                ),
                limit_param(payouts.LIST_LIMIT_MAX, payouts.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_payouts(request: Request) -> JSONResponse:
        who = await ctx.principal(request, approver_ok=True)
        q = request.query_params
        project_id = ctx.scope(who, q.get("projectId"))
        status = parse_status(q["status"]) if q.get("status") else None
        limit = int_param(
            q.get("limit"), "limit", payouts.LIST_LIMIT_DEFAULT, 1, payouts.LIST_LIMIT_MAX
        )
        player_id = parse_player_id(q.get("playerId"))
        if approvals.parse_approval_filter(q.get("approval"), status, player_id):
            page, cursor = await approvals.held_page(rt.reads(), project_id, limit, q.get("cursor"))
        else:
            page, cursor = await payouts.list_payouts(
                rt.reads(), project_id, status, limit, q.get("cursor"), player_id
            )
        data = page_data("payouts", [payouts.view(r) for r in page], cursor)
        return envelope(True, "Payouts", data, 200)

    for verb, decide in (("approve", approvals.approve), ("reject", approvals.reject)):
        _install_decision(api, ctx, verb, decide)

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


def _install_decision(api: APIRouter, ctx: ApiContext, verb: str, decide: Any) -> None:
    """POST /payouts/{id}/approve | reject: an approver's decision on a held payout."""
    outcome = "sent: completed, or pending" if verb == "approve" else "error, voided"

    @api.post(
        f"/payouts/{{payout_id}}/{verb}",
        **doc(
            ok={200: (Payout, f"Decided ({outcome}); who decided is in its history")},
            errors={
                403: ("FORBIDDEN",),
                404: ("PAYOUT_NOT_FOUND",),
                409: ("INVALID_STATUS_TRANSITION",),
            },
            summary=f"Admin or an approver key: {verb} a payout held for approval "
            "(approvalAboveSats)",
        ),
        name=f"{verb}_payout",
    )
    async def decision(payout_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request, approver_ok=True)
        who.require_approver()  # an ordinary project key: 403
        await visible_payout(ctx, who, payout_id)  # another project's payout: 404
        actor = who.actor or "admin:" + (request.client.host if request.client else "unknown")
        row = await decide(ctx.rt, payout_id, actor)
        message = "Payout approved" if verb == "approve" else "Payout rejected"
        return envelope(True, message, payouts.view(row), 200)


def _same_idempotency_key(body: Any, header_key: str | None) -> None:
    """400 IDEMPOTENCY_KEY_MISMATCH when the header and the body each name a different key.

    The body's key used to win silently: a client whose retry layer sets the header would
    then get a second payout where it expected a replay (or the reverse)."""
    body_key = body.get("idempotencyKey") if isinstance(body, dict) else None
    if header_key is not None and body_key is not None and body_key != header_key:
        raise errors.IdempotencyKeyMismatch(
            "The Idempotency-Key header and the body's idempotencyKey differ; send one of "
            "them, or the same key in both. Nothing was created.",
            field="idempotencyKey",
        )


def _batch_shape(body: Any, batch_key: str | None) -> tuple[str, list[Any]]:
    """The batch's own fields; each item is checked on its own later, as a single POST is."""
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    project_id, items = body.get("projectId"), body.get("items")
    if not isinstance(project_id, str) or not project_id or len(project_id) > 64:
        raise errors.ValidationError("projectId must be a string.", field="projectId")
    if not isinstance(items, list) or not 1 <= len(items) <= batches.BATCH_ITEMS_MAX:
        raise errors.ValidationError(
            f"items must be a list of 1 to {batches.BATCH_ITEMS_MAX:,} payouts.",
            field="items",
            maxItems=batches.BATCH_ITEMS_MAX,
        )
    if not batch_key or len(batch_key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise errors.ValidationError(
            f"A batch needs an Idempotency-Key header of 1-{IDEMPOTENCY_KEY_MAX_CHARS} "
            "characters, so that a retry pays nobody twice.",
            field="Idempotency-Key",
        )
    return project_id, items


async def _batch_item(
    ctx: ApiContext, raw: Any, project_id: str, derived_key: str
) -> PayoutRequest | errors.PayrailError:
    """One item as a single POST /payouts body of the batch's project, or its refusal."""
    if not isinstance(raw, dict):
        return errors.ValidationError("Each item must be a JSON object.")
    body = raw | {"projectId": project_id}
    try:
        refusal = await callback_urls.refusal_at_creation(ctx.settings, body.get("callbackUrl"))
        return parse_payout_request(body, derived_key, callback_url_refusal=refusal)
    except errors.PayrailError as refused:
        return refused


def _item_answer(item: batches.ItemAnswer) -> dict[str, Any]:
    """What a single POST /payouts would have answered, with its HTTP status."""
    if item.error is not None:
        success, message = False, item.error.message
        data, status = {"error": item.error.code, **item.error.extra}, status_for(item.error)
    else:
        assert item.payout is not None
        success, message, data, status = payout_answer_parts(
            payouts.CreateOutcome(item.payout, item.replay)
        )
    return {"httpStatus": status, "success": success, "message": message, "data": data}


def payout_answer(outcome: payouts.CreateOutcome) -> JSONResponse:
    """201 completed, 202 pending, 504/502 error; a replay answers as the original did, with
    `Idempotent-Replayed: true`."""
    return mark_replayed(envelope(*payout_answer_parts(outcome)), outcome.replay)


def payout_answer_parts(outcome: payouts.CreateOutcome) -> tuple[bool, str, dict[str, Any], int]:
    """The envelope's success, message, data and the HTTP status of a create answer."""
    row = outcome.payout
    data = payouts.view(row)
    state = State(row["state"])
    if state == State.FAILED and row["failure_code"] == FailureCode.REJECTED_BY_APPROVER:
        message = "Payout rejected by an approver; the balance was rolled back."
        data |= {"error": FailureCode.REJECTED_BY_APPROVER.value, "balanceRolledBack": True}
        return False, message, data, 403
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
        return False, message, data, status
    if outcome.replay:
        return True, "Payout already processed", data, 200
    if state == State.COMPLETED:
        return True, "Payout completed", data, 201
    if state == State.EXPIRED:
        return True, "Payout expired before it was sent", data, 200
    if row.get("approval") == "required":
        return True, "Payout held for approval: its amount is reserved until decided", data, 202
    return True, "Payout accepted; the payment is in flight", data, 202
