"""ZBD's withdrawal requests on payrail's claim links (LNURL-withdraw, docs/claim-links.md).

POST /v0/withdrawal-requests is POST /api/v1/withdrawals with ZBD's fields and units: the
payout engine reserves amount + fee at once, and `invoice.request` is the link's LNURL.
GET /v0/withdrawal-requests/{id} is that link. The service decides everything.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import mark_replayed, read_json
from payrail.entrypoints.http.models import doc
from payrail.entrypoints.http.zbd import models
from payrail.entrypoints.http.zbd import translate as zbd
from payrail.entrypoints.http.zbd.common import (
    body_object,
    idempotency_key,
    ok,
    optional_text,
    wallet_of,
    zbd_route,
)
from payrail.entrypoints.http.zbd.payments import KEY_HEADER
from payrail.services import withdrawals

# payrail's claim-link status → ZBD's withdrawal-request status (ZBD cannot revoke a link;
# one revoked through payrail's own API reads as expired: nobody can claim it). ZBD has no
# approval step: a link held for approval (above approvalAboveSats, docs/controls.md) reads
# as pending (its `approval` says why no wallet can claim it yet), a rejected one as error.
STATUS = {
    "open": "pending",
    "awaiting_approval": "pending",
    "rejected": "error",
    "claimed": "processing",
    "completed": "completed",
    "error": "error",
    "expired": "expired",
    "revoked": "expired",
}


def withdrawal_request(view: dict[str, Any]) -> dict[str, Any]:
    """A claim link's public view as ZBD's withdrawal-request object."""
    return {
        "id": view["id"],
        "unit": zbd.UNIT,
        "amount": zbd.msat(view["amount"]),
        "fee": zbd.msat(view["fee"]),
        "createdAt": view["createdAt"],
        "expiresAt": view["expiresAt"],
        "internalId": view["internalId"],
        "description": zbd.text(view["description"]),
        "callbackUrl": None,
        "status": STATUS[view["status"]],
        "invoice": {"request": view["lnurl"], "uri": f"lightning:{view['lnurl']}"},
        "url": view["url"],
        "approval": view["approval"],
    }


def install(router: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @router.post(
        "/withdrawal-requests",
        **doc(
            ok={
                200: (models.ZbdWithdrawalRequest, "Pending: hand out invoice.request; or a replay")
            },
            errors={
                400: (
                    "VALIDATION_ERROR",
                    "INVALID_AMOUNT",
                    "DESCRIPTION_TOO_LONG",
                    "INSUFFICIENT_BALANCE",
                ),
                403: ("FORBIDDEN", "PAYOUT_LIMIT_EXCEEDED"),
                404: ("PROJECT_NOT_FOUND",),
                409: ("INTERNAL_ID_TAKEN",),
                422: ("IDEMPOTENCY_KEY_REUSED",),
                429: (
                    "RATE_LIMIT_EXCEEDED",
                    "RECIPIENT_TEMPORARILY_BLOCKED",
                    "PLAYER_DAILY_LIMIT",
                    "PROJECT_DAILY_LIMIT",
                ),
                503: ("CLAIM_LINKS_DISABLED",),
            },
            body=models.ZbdWithdrawalRequestBody,
            body_example={"amount": "1000000", "expiresIn": 3600, "description": "Reward"},
            headers=KEY_HEADER,
            summary="ZBD: a withdrawal request (payrail claim link): amount + fee reserved, "
            "paid once to the wallet that claims its LNURL",
        ),
    )
    @zbd_route
    async def create_withdrawal_request(request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        fields: dict[str, Any] = {
            "projectId": wallet,
            "amount": zbd.sats_of_msat(body.get("amount")),
            "description": optional_text(body, "description"),
            "internalId": optional_text(body, "internalId"),
        }
        if body.get("expiresIn") is not None:  # ZBD's seconds: payrail's expiresInS
            fields["expiresInS"] = body["expiresIn"]
        key = idempotency_key(ctx, request, fields["internalId"])
        created = await withdrawals.create(rt, fields, key)
        data = withdrawal_request(withdrawals.view(rt, created.link))
        return mark_replayed(ok("Withdrawal request created.", data), created.replay)

    @router.get(
        "/withdrawal-requests/{withdrawal_id}",
        **doc(
            ok={200: (models.ZbdWithdrawalRequest, "The withdrawal request")},
            errors={
                403: ("FORBIDDEN",),
                404: ("WITHDRAWAL_NOT_FOUND",),
                503: ("CLAIM_LINKS_DISABLED",),
            },
        ),
    )
    @zbd_route
    async def get_withdrawal_request(withdrawal_id: str, request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        link = await withdrawals.get(rt, withdrawal_id, wallet)
        return ok("Fetched withdrawal request.", withdrawal_request(withdrawals.view(rt, link)))
