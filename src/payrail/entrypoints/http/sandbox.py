"""Sandbox-only routes (404 in production): failure injection, reset, expiry, callback log.

Each acts on the caller's project only: a project key reads and changes its own knobs and
resets its own project; the global knobs and the global reset need the admin key, which may
also name one project with ?projectId= (services/faults.py, services/sandbox.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain import errors
from payrail.entrypoints.http.auth import Principal
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, read_json
from payrail.entrypoints.http.models import Empty, doc, query_param
from payrail.entrypoints.http.models.ops import CallbackLog, FailureInjectionChange
from payrail.entrypoints.http.models.ops import FailureInjection as FailureInjectionKnobs
from payrail.entrypoints.http.models.payouts import Payout
from payrail.entrypoints.http.payouts import visible_payout
from payrail.services import callbacks, payouts, projects, sandbox
from payrail.services.faults import GLOBAL_ONLY_KNOBS, FailureInjection

PROJECT_QUERY = [
    query_param("projectId", "Admin key: that project's knobs (none: the global knobs).")
]


def _knobs_scope(ctx: ApiContext, who: Principal, request: Request) -> str | None:
    """The project whose knobs a call is about; None: the global knobs (admin key only)."""
    return ctx.scope(who, request.query_params.get("projectId"))


def _whose(project_id: str | None) -> str:
    return "the global knobs" if project_id is None else f"project {project_id}'s knobs"


def _global_only_unchanged(current: FailureInjection, updated: FailureInjection) -> None:
    changed = sorted(k for k in GLOBAL_ONLY_KNOBS if getattr(current, k) != getattr(updated, k))
    if changed:
        raise errors.Forbidden(
            "The card-payment knobs drive the one simulated Stripe account every project "
            f"shares: only the admin key changes them ({', '.join(changed)}).",
            fields=changed,
        )


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.get(
        "/test/failure-injection",
        **doc(
            ok={200: (FailureInjectionKnobs, "The knobs that apply to the caller's project")},
            errors={403: ("FORBIDDEN",), 404: ("NOT_FOUND",)},
            query=PROJECT_QUERY,
        ),
    )
    async def get_faults(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        project_id = _knobs_scope(ctx, who, request)
        knobs = await rt.faults.effective(project_id)
        return envelope(True, f"Failure injection: {_whose(project_id)}", knobs.to_dict(), 200)

    @api.post(
        "/test/failure-injection",
        **doc(
            ok={200: (FailureInjectionKnobs, "The knobs after the change")},
            errors={403: ("FORBIDDEN",), 404: ("NOT_FOUND", "PROJECT_NOT_FOUND")},
            query=PROJECT_QUERY,
            body=FailureInjectionChange,
            body_required=False,
            body_example={"enabled": True, "timeoutRate": 0.05, "rollbackOnTimeout": True},
        ),
    )
    async def set_faults(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        project_id = _knobs_scope(ctx, who, request)
        current = await rt.faults.effective(project_id)
        body = await read_json(request)  # only an empty body means "no change"; `false` is a 400
        updated = current.merged({} if body is None else body)
        if project_id is not None:
            _global_only_unchanged(current, updated)
            await projects.get_project(rt, project_id)  # no knobs for a project that is not
        await rt.faults.put(updated, project_id)
        message = f"Failure injection updated: {_whose(project_id)}"
        return envelope(True, message, updated.to_dict(), 200)

    @api.delete(
        "/test/reset",
        **doc(
            ok={200: (Empty, "A project key: its project reset; the admin key: the seeded state")},
            errors={403: ("FORBIDDEN",), 404: ("NOT_FOUND", "PROJECT_NOT_FOUND")},
            query=[query_param("projectId", "Admin key: reset only this project.")],
        ),
    )
    async def reset(request: Request) -> JSONResponse:
        ctx.sandbox_only()
        who = await ctx.principal(request)
        project_id = ctx.scope(who, request.query_params.get("projectId"))
        if project_id is not None:
            done = await sandbox.reset_project(rt, project_id)
            return envelope(True, f"Project {project_id} reset", done, 200)
        who.require_admin()  # ctx.scope gives None to the admin key only; said again here
        await rt.drain()
        await projects.reset_sandbox(rt)
        ctx.keys.clear()
        return envelope(True, "Sandbox reset to its seeded state", {"scope": "global"}, 200)

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
