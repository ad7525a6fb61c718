"""ZBD's charges on payrail's deposits: an invoice that credits the wallet once it is paid.

POST /v0/charges is POST /api/v1/projects/{id}/deposits (services/deposits.py) with ZBD's
fields and units; GET /v0/charges/{id} is that deposit. The deposit engine decides the limits,
expiry, idempotency and the one credit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain.deposits import parse_request
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
from payrail.services import deposits

# payrail's deposit status → ZBD's charge status.
CHARGE_STATUS = {"open": "pending", "completed": "completed", "expired": "expired"}


def charge(view: dict[str, Any]) -> dict[str, Any]:
    """A deposit's public view as ZBD's charge object."""
    return {
        "id": view["id"],
        "unit": zbd.UNIT,
        "amount": zbd.msat(view["amount"]),
        "createdAt": view["createdAt"],
        "callbackUrl": None,  # deposits keep no callback URL (docs/zbd.md)
        "internalId": None,
        "description": zbd.text(view["description"]),
        "expiresAt": view["expiresAt"],
        "confirmedAt": view["completedAt"],
        "status": CHARGE_STATUS[view["status"]],
        "invoice": {"request": view["invoice"], "uri": f"lightning:{view['invoice']}"},
    }


def install(router: APIRouter, ctx: ApiContext) -> None:
    rt, settings = ctx.rt, ctx.settings

    @router.post(
        "/charges",
        **doc(
            ok={200: (models.Charge, "Pending: pay invoice.request; or a replay")},
            errors={
                400: ("VALIDATION_ERROR", "INVALID_AMOUNT", "DESCRIPTION_TOO_LONG"),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
                422: ("IDEMPOTENCY_KEY_REUSED",),
                502: ("LIGHTNING_BACKEND_REFUSED",),
                503: ("LIGHTNING_BACKEND_UNAVAILABLE",),
            },
            body=models.ChargeBody,
            body_example={"amount": "5000000", "description": "Top-up", "expiresIn": 300},
            headers=KEY_HEADER,
            summary="ZBD: a charge (payrail deposit): an invoice credited to the wallet once paid",
        ),
    )
    @zbd_route
    async def create_charge(request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        fields: dict[str, Any] = {
            "amount": zbd.sats_of_msat(body.get("amount")),
            "description": optional_text(body, "description"),
        }
        if body.get("expiresIn") is not None:  # ZBD's seconds: payrail's expiresInS
            fields["expiresInS"] = body["expiresIn"]
        key = idempotency_key(ctx, request, optional_text(body, "internalId"))
        req = parse_request(fields, wallet, key, settings.deposit_expiry_s_default)
        created = await deposits.create_deposit(rt, req)
        data = charge(deposits.view(created.row))
        data["internalId"] = optional_text(body, "internalId")  # echoed, not kept
        return mark_replayed(ok("Charge created.", data), created.replay)

    @router.get(
        "/charges/{charge_id}",
        **doc(
            ok={200: (models.Charge, "The charge")},
            errors={403: ("FORBIDDEN",), 404: ("DEPOSIT_NOT_FOUND",)},
        ),
    )
    @zbd_route
    async def get_charge(charge_id: str, request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        row = await deposits.get_deposit(rt, charge_id, wallet)
        return ok("Fetched Charge.", charge(deposits.view(row)))
