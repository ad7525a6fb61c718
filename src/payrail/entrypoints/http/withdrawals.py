"""HTTP routes of claim links (LNURL-withdraw, LUD-03; docs/claim-links.md).

The API (project key or admin, under /api/v1): create, read, list, revoke. The public side
(no key: the secret in the link is the credential), outside the API and its document:

    GET /lnurlw/{id}?k1=…            LUD-03 withdrawRequest (what the LNURL decodes to)
    GET /lnurlw/{id}/callback?k1=…&pr=…   claim with an invoice: {"status": "OK"} | ERROR
    GET /claim/{id}?k1=…             the claim page: amount, expiry, the LNURL's QR (SVG)

The public routes answer LNURL's own JSON, never the envelope, and are rate-limited per link
and per client address; an unknown link and a wrong secret get the same answer.
"""

from __future__ import annotations

from html import escape

import segno
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from payrail.domain.claims import STATUS_DESCRIPTIONS, Status
from payrail.domain.payouts import IDEMPOTENCY_KEY_MAX_CHARS
from payrail.entrypoints.http.auth import client_address
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, int_param, mark_replayed, page_data, read_json
from payrail.entrypoints.http.models import doc, header_param, limit_param, query_param
from payrail.entrypoints.http.models.withdrawals import (
    SandboxInvoice,
    Withdrawal,
    WithdrawalPage,
    WithdrawalRequest,
)
from payrail.services import withdrawals
from payrail.services.withdrawals import ClaimRefused
from payrail.support.clock import iso

DISABLED = {503: ("CLAIM_LINKS_DISABLED",)}
# The claim page loads nothing: no script, no style sheet, no image from anywhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the page's address holds the link's secret
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
LNURL_HEADERS = {"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"}


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.post(
        "/withdrawals",
        **doc(
            ok={
                201: (Withdrawal, "open: amount + fee reserved; hand out lnurl or url"),
                202: (
                    Withdrawal,
                    "awaiting_approval: amount + fee reserved, above approvalAboveSats; no "
                    "wallet can claim it until an approver approves its payoutId",
                ),
                200: (Withdrawal, "Replay: the same Idempotency-Key and body; the same link"),
            },
            errors={
                400: ("VALIDATION_ERROR", "INVALID_AMOUNT", "DESCRIPTION_TOO_LONG"),
                402: ("INSUFFICIENT_BALANCE",),
                403: ("FORBIDDEN", "PAYOUT_LIMIT_EXCEEDED"),
                404: ("PROJECT_NOT_FOUND", "QUOTE_NOT_FOUND"),
                409: ("INTERNAL_ID_TAKEN", "QUOTE_USED", "QUOTE_EXPIRED"),
                422: ("IDEMPOTENCY_KEY_REUSED",),
                429: (
                    "RATE_LIMIT_EXCEEDED",
                    "RECIPIENT_TEMPORARILY_BLOCKED",
                    "PLAYER_DAILY_LIMIT",
                    "PROJECT_DAILY_LIMIT",
                ),
                **DISABLED,
            },
            body=WithdrawalRequest,
            body_example={
                "projectId": "project_test_001",
                "amount": 1000,
                "gamertag": "player1",
                "description": "Season reward",
                "expiresInS": 86400,
            },
            headers=[
                header_param(
                    "Idempotency-Key",
                    "A retry with the same key answers the same link (nothing reserved twice).",
                    IDEMPOTENCY_KEY_MAX_CHARS,
                )
            ],
            summary="Make a claim link (LNURL-withdraw): amount + fee reserved now, paid to "
            "the first wallet that claims it",
        ),
    )
    async def create_withdrawal(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        body = await read_json(request)
        project_id = body.get("projectId") if isinstance(body, dict) else None
        if isinstance(project_id, str):
            who.require(project_id)
        created = await withdrawals.create(rt, body, request.headers.get("idempotency-key"))
        data = withdrawals.view(rt, created.link)
        if created.replay:
            answer = envelope(True, "Claim link already created with this key", data, 200)
            return mark_replayed(answer, True)
        if data["status"] == Status.AWAITING_APPROVAL:
            message = "Claim link held for approval: amount + fee reserved"
            return envelope(True, message, data, 202)
        return envelope(True, "Claim link open: amount + fee reserved", data, 201)

    @api.get(
        "/withdrawals",
        **doc(
            ok={200: (WithdrawalPage, "Newest first")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",), **DISABLED},
            query=[
                query_param("projectId", "The admin key: one project's links (else all)"),
                limit_param(withdrawals.LIST_LIMIT_MAX, withdrawals.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_withdrawals(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        q = request.query_params
        project_id = ctx.scope(who, q.get("projectId"))
        limit = int_param(
            q.get("limit"), "limit", withdrawals.LIST_LIMIT_DEFAULT, 1, withdrawals.LIST_LIMIT_MAX
        )
        links, cursor = await withdrawals.list_links(rt, project_id, limit, q.get("cursor"))
        data = page_data("withdrawals", [withdrawals.view(rt, x) for x in links], cursor)
        return envelope(True, "Withdrawals", data, 200)

    @api.get(
        "/withdrawals/{withdrawal_id}",
        **doc(
            ok={200: (Withdrawal, "The claim link")},
            errors={404: ("WITHDRAWAL_NOT_FOUND",), **DISABLED},
        ),
    )
    async def get_withdrawal(withdrawal_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        link = await withdrawals.get(rt, withdrawal_id, who.project_id)
        return envelope(True, "Withdrawal found", withdrawals.view(rt, link), 200)

    @api.delete(
        "/withdrawals/{withdrawal_id}",
        **doc(
            ok={200: (Withdrawal, "revoked: the reservation voided (again: the same answer)")},
            errors={
                404: ("WITHDRAWAL_NOT_FOUND",),
                409: ("INVALID_STATUS_TRANSITION",),
                **DISABLED,
            },
            summary="Revoke an open claim link (or one awaiting approval): its reservation is "
            "voided (409 once claimed)",
        ),
    )
    async def revoke_withdrawal(withdrawal_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        link = await withdrawals.revoke(rt, withdrawal_id, who.project_id)
        return envelope(True, "Claim link revoked", withdrawals.view(rt, link), 200)

    @api.post(
        "/test/wallet-invoices",
        **doc(
            ok={200: (SandboxInvoice, "A signed invoice for the server's network")},
            errors={400: ("INVALID_AMOUNT",), 404: ("NOT_FOUND",)},
            body={"type": "object", "properties": {"amount": {"type": "integer"}}},
            summary="Sandbox: an invoice a player's wallet would make, to claim a link with "
            "(the simulated node pays it)",
        ),
    )
    async def sandbox_wallet_invoice(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        await ctx.principal(request)
        data = withdrawals.sandbox_wallet_invoice(rt, await read_json(request))
        return envelope(True, "Invoice made", data, 200)


def install_public(app: FastAPI, ctx: ApiContext) -> None:
    """The wallet's side and the claim page (no key; outside /api/v1 and its document)."""
    rt = ctx.rt
    throttle = withdrawals.PublicThrottle()

    def refused(refusal: ClaimRefused) -> JSONResponse:
        status = 429 if refusal.throttled else 200
        body = {"status": "ERROR", "reason": refusal.reason}
        return JSONResponse(body, status_code=status, headers=LNURL_HEADERS)

    def admit(request: Request, withdrawal_id: str) -> None:
        throttle.admit(withdrawal_id, client_address(request), rt.clock.now_ms())

    @app.get(withdrawals.LNURL_PATH + "/{withdrawal_id}", include_in_schema=False)
    async def withdraw_request(withdrawal_id: str, request: Request) -> JSONResponse:
        try:
            admit(request, withdrawal_id)
            answer = await withdrawals.withdraw_request(
                rt, withdrawal_id, request.query_params.get("k1")
            )
        except ClaimRefused as refusal:
            return refused(refusal)
        return JSONResponse(answer, headers=LNURL_HEADERS)

    @app.get(withdrawals.LNURL_PATH + "/{withdrawal_id}/callback", include_in_schema=False)
    async def withdraw_callback(withdrawal_id: str, request: Request) -> JSONResponse:
        q = request.query_params
        try:
            admit(request, withdrawal_id)
            await withdrawals.claim(rt, withdrawal_id, q.get("k1"), q.get("pr"))
        except ClaimRefused as refusal:
            return refused(refusal)
        return JSONResponse({"status": "OK"}, headers=LNURL_HEADERS)

    @app.get(withdrawals.CLAIM_PAGE_PATH + "/{withdrawal_id}", include_in_schema=False)
    async def claim_page(withdrawal_id: str, request: Request) -> HTMLResponse:
        try:
            admit(request, withdrawal_id)
            link, status = await withdrawals.page(rt, withdrawal_id, request.query_params.get("k1"))
        except ClaimRefused as refusal:
            code = 429 if refusal.throttled else 404
            return HTMLResponse(_page(refusal.reason), status_code=code, headers=PAGE_HEADERS)
        return HTMLResponse(_claim_page(rt, link, status), headers=PAGE_HEADERS)


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;"
    "color:#0f172a;text-align:center}.amount{font-size:2rem;font-weight:700}"
    ".qr svg{width:100%;height:auto;max-width:320px}.lnurl{word-break:break-all;"
    "font-family:monospace;font-size:.7rem;color:#475569}.status{color:#475569}"
    "a.open{display:inline-block;margin:1rem 0;padding:.6rem 1.2rem;background:#0f172a;"
    "color:#fff;border-radius:.4rem;text-decoration:none}"
)


def _when(ms: int) -> str:
    """2026-12-08 11:55 UTC"""
    return (iso(ms) or "")[:16].replace("T", " ") + " UTC"


def _page(message: str, body: str = "") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>payrail claim link</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(message)}</h1>{body}</body></html>"
    )


def _claim_page(rt: object, link: withdrawals.Link, status: Status) -> str:
    row = link.row
    lnurl = withdrawals.lnurl(rt, row["id"])  # type: ignore[arg-type]
    amount = f'<p class="amount">{row["amount"]:,} sats</p>'
    if row["description"]:
        amount += f"<p>{escape(row['description'])}</p>"
    if status != Status.OPEN:
        return _page(
            f"This link is {status.value}", amount + f"<p>{STATUS_DESCRIPTIONS[status]}</p>"
        )
    qr = segno.make(lnurl, error="m").svg_inline(
        scale=6, omitsize=True, title="LNURL-withdraw QR code"
    )
    body = (
        amount
        + f'<p class="status">Open until {escape(_when(row["expires_at"]))}</p>'
        + f'<div class="qr">{qr}</div>'
        + f'<p><a class="open" href="lightning:{escape(lnurl)}">Open in a wallet</a></p>'
        + f'<p class="lnurl">{escape(lnurl)}</p>'
        + "<p>Scan with a Lightning wallet that supports LNURL-withdraw; the first claim "
        "is paid.</p>"
    )
    return _page("Claim your sats", body)
