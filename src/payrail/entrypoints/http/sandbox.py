"""Sandbox-only routes (404 in production): failure injection, reset, expiry, callback log."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, read_json
from payrail.entrypoints.http.models import Empty, doc
from payrail.entrypoints.http.models.ops import (
    CallbackLog,
    FailureInjection,
    FailureInjectionChange,
)
from payrail.entrypoints.http.models.payouts import Payout
from payrail.entrypoints.http.payouts import visible_payout
from payrail.services import callbacks, payouts, projects


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.get(
        "/test/failure-injection",
        **doc(ok={200: (FailureInjection, "The knobs")}, errors={404: ("NOT_FOUND",)}),
    )
    async def get_faults(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        await ctx.principal(request)
        return envelope(True, "Failure injection", (await rt.faults.get()).to_dict(), 200)

    @api.post(
        "/test/failure-injection",
        **doc(
            ok={200: (FailureInjection, "The knobs after the change")},
            errors={404: ("NOT_FOUND",)},
            body=FailureInjectionChange,
            body_required=False,
            body_example={"enabled": True, "timeoutRate": 0.05, "rollbackOnTimeout": True},
        ),
    )
    async def set_faults(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        await ctx.principal(request)
        current = await rt.faults.get()
        body = await read_json(request)  # only an empty body means "no change"; `false` is a 400
        updated = await rt.faults.put(current.merged({} if body is None else body))
        return envelope(True, "Failure injection updated", updated.to_dict(), 200)

    @api.delete(
        "/test/reset", **doc(ok={200: (Empty, "Seeded state")}, errors={404: ("NOT_FOUND",)})
    )
    async def reset(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        await ctx.principal(request)
        await rt.drain()
        await projects.reset_sandbox(rt)
        ctx.keys.clear()
        return envelope(True, "Sandbox reset to its seeded state", {}, 200)

    @api.post(
        "/test/expire/{payout_id}",
        **doc(
            ok={200: (Payout, "Expired; the reservation was released")},
            errors={404: ("NOT_FOUND", "PAYOUT_NOT_FOUND"), 409: ("INVALID_STATUS_TRANSITION",)},
        ),
    )
    async def expire(payout_id: str, request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        await visible_payout(ctx, who, payout_id)
        row = await payouts.expire_now(rt, payout_id)
        return envelope(
            True, "Payout expired; its reservation was released", payouts.view(row), 200
        )

    @api.get(
        "/test/callbacks", **doc(ok={200: (CallbackLog, "The log")}, errors={404: ("NOT_FOUND",)})
    )
    async def callback_log(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        log_rows = await callbacks.delivery_log(rt, who.project_id)
        return envelope(
            True, "Callback deliveries", {"callbacks": log_rows, "count": len(log_rows)}, 200
        )
