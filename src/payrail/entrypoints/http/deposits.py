"""HTTP routes of deposits (money in over Lightning): create, read, list, check, LNbits' push.

The sandbox's payer (POST /test/deposits/{id}/pay) is here too, 404 outside the sandbox.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain.deposits import IDEMPOTENCY_KEY_MAX_CHARS, parse_request, parse_status
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, int_param, page_data, read_json
from payrail.entrypoints.http.models import doc, header_param, limit_param, query_param
from payrail.entrypoints.http.models.deposits import (
    Deposit,
    DepositPage,
    DepositRequest,
    LnbitsPush,
    PushChecked,
)
from payrail.services import callback_urls, deposits

LIST_LIMIT_MAX = deposits.LIST_LIMIT_MAX
LIST_LIMIT_DEFAULT = deposits.LIST_LIMIT_DEFAULT


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt, settings = ctx.rt, ctx.settings

    @api.post(
        "/projects/{project_id}/deposits",
        **doc(
            ok={201: (Deposit, "open: pay its invoice"), 200: (Deposit, "Idempotent replay")},
            errors={
                400: (
                    "VALIDATION_ERROR",
                    "INVALID_AMOUNT",
                    "DESCRIPTION_TOO_LONG",
                    "INVALID_CALLBACK_URL",
                ),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
                422: ("IDEMPOTENCY_KEY_REUSED",),
                502: ("LIGHTNING_BACKEND_REFUSED",),
                503: ("LIGHTNING_BACKEND_UNAVAILABLE",),
            },
            body=DepositRequest,
            body_example={
                "amount": 5000,
                "description": "Top-up",
                "expiresInS": 3600,
                "callbackUrl": "https://studio.example/payrail",
            },  # fmt: skip
            headers=[
                header_param(
                    "Idempotency-Key",
                    "A retry with the same key answers the same deposit (same invoice).",
                    IDEMPOTENCY_KEY_MAX_CHARS,
                )
            ],
            summary="Take a deposit: a Lightning invoice credited to the project once paid",
        ),
    )
    async def create_deposit(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require(project_id)
        body = await read_json(request)
        refusal = await callback_urls.refusal_at_creation(  # production: DNS, not in domain
            settings, body.get("callbackUrl") if isinstance(body, dict) else None
        )
        req = parse_request(
            body,
            project_id,
            request.headers.get("idempotency-key"),
            settings.deposit_expiry_s_default,
            callback_url_refusal=refusal,
        )
        created = await deposits.create_deposit(rt, req)
        if created.replay:
            return envelope(
                True,
                "Deposit already created with this Idempotency-Key",
                deposits.view(created.row),
                200,
            )
        return envelope(
            True,
            "Deposit open: the project is credited once its invoice is paid",
            deposits.view(created.row),
            201,
        )

    @api.get(
        "/projects/{project_id}/deposits",
        **doc(
            ok={200: (DepositPage, "Newest first")},
            errors={400: ("VALIDATION_ERROR", "INVALID_STATUS"), 403: ("FORBIDDEN",)},
            query=[
                query_param("status", "open, completed or expired"),
                limit_param(LIST_LIMIT_MAX, LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_deposits(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require(project_id)
        q = request.query_params
        status = parse_status(q["status"]) if q.get("status") else None
        limit = int_param(q.get("limit"), "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
        page, cursor = await deposits.list_deposits(rt, project_id, status, limit, q.get("cursor"))
        data = page_data("deposits", [deposits.view(r) for r in page], cursor)
        return envelope(True, "Deposits", data, 200)

    @api.get(
        "/deposits/{deposit_id}",
        **doc(ok={200: (Deposit, "The deposit")}, errors={404: ("DEPOSIT_NOT_FOUND",)}),
    )
    async def get_deposit(deposit_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        row = await deposits.get_deposit(rt, deposit_id, who.project_id)
        return envelope(True, "Deposit found", deposits.view(row), 200)

    @api.post(
        "/deposits/{deposit_id}/check",
        **doc(
            ok={200: (Deposit, "The deposit after the backend's answer")},
            errors={404: ("DEPOSIT_NOT_FOUND",), 503: ("LIGHTNING_BACKEND_UNAVAILABLE",)},
            summary="Ask the Lightning backend about a deposit now (the watcher does it anyway)",
        ),
    )
    async def check_deposit(deposit_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        await deposits.get_deposit(rt, deposit_id, who.project_id)
        row = await deposits.check_or_unavailable(rt, deposit_id, cause="api: check")
        return envelope(True, f"Deposit {row['status']}", deposits.view(row), 200)

    @api.post(
        "/webhooks/lnbits/deposits",
        **doc(
            ok={200: (PushChecked, "Checked with LNbits; its answer applied")},
            errors={
                400: ("VALIDATION_ERROR",),
                404: ("DEPOSIT_NOT_FOUND",),
                503: ("LIGHTNING_BACKEND_UNAVAILABLE",),
            },
            auth=False,
            body=LnbitsPush,
            summary="LNbits' invoice webhook (PAYRAIL_DEPOSIT_WEBHOOK_URL): a reason to ask "
            "LNbits, never trusted on its own",
        ),
    )
    async def lnbits_push(request: Request) -> JSONResponse:
        row = await deposits.receive_push(rt, await read_json(request))
        # The caller is not authenticated: the answer says only what it already knew.
        data = {"paymentHash": row["payment_hash"], "status": row["status"]}
        return envelope(True, "Checked", data, 200)

    @api.post(
        "/test/deposits/{deposit_id}/pay",
        **doc(
            ok={200: (Deposit, "Paid at the simulated node, then checked")},
            errors={404: ("NOT_FOUND", "DEPOSIT_NOT_FOUND")},
            summary="Sandbox: pay a deposit's invoice (the caller's project only)",
        ),
    )
    async def sandbox_pay(deposit_id: str, request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        row = await deposits.sandbox_pay(rt, deposit_id, who.project_id)
        return envelope(True, f"Invoice paid; deposit {row['status']}", deposits.view(row), 200)
