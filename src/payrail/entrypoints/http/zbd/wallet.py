"""GET /v0/wallet: the project's balance, as ZBD shows a project wallet's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.models import doc
from payrail.entrypoints.http.zbd import models
from payrail.entrypoints.http.zbd import translate as zbd
from payrail.entrypoints.http.zbd.common import ok, wallet_of, zbd_route
from payrail.services import projects


def install(router: APIRouter, ctx: ApiContext) -> None:
    @router.get(
        "/wallet",
        **doc(
            ok={200: (models.Wallet, "The available balance, in msats")},
            errors={403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            summary="ZBD: the project wallet's balance",
        ),
    )
    @zbd_route
    async def wallet(request: Request) -> JSONResponse:
        project_id = await wallet_of(ctx, request)
        # The balance payrail's own API shows: what is available, reservations excluded.
        balance = await projects.balance(ctx.rt, project_id)
        data = {"balance": zbd.msat(balance["balance"]), "unit": zbd.UNIT, "walletId": project_id}
        return ok("Successfully retrieved Wallet.", data)
