"""HTTP routes for the admin key: the reconciliation report and feature flags."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, read_json
from payrail.entrypoints.http.models import doc, header_param
from payrail.entrypoints.http.models.ops import (
    FlagChange,
    FlagDetail,
    FlagList,
    FlagUpdated,
    Reconciliation,
)
from payrail.services import flags, reconcile


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.get(
        "/admin/reconciliation",
        **doc(ok={200: (Reconciliation, "The report")}, errors={403: ("FORBIDDEN",)}),
    )
    async def reconciliation(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        # What changed since the checkpoint: never the full audit in an API process.
        report = await reconcile.reconcile_incremental(rt)
        reconcile.export_metrics(report, rt.clock.now_ms() / 1000)
        message = "Ledger and node agree" if report.clean else "Discrepancies found"
        return envelope(True, message, reconcile.report_dict(report), 200)

    @api.get("/admin/flags", **doc(ok={200: (FlagList, "Flags")}, errors={403: ("FORBIDDEN",)}))
    async def list_flags(request: Request) -> JSONResponse:
        (await ctx.principal(request)).require_admin()
        found = [f.to_dict() for f in await flags.list_flags(rt)]
        return envelope(True, "Feature flags", {"flags": found, "count": len(found)}, 200)

    @api.get(
        "/admin/flags/{name}",
        **doc(
            ok={200: (FlagDetail, "The flag and its audited changes")},
            errors={403: ("FORBIDDEN",), 404: ("FLAG_NOT_FOUND",)},
        ),
    )
    async def get_flag(name: str, request: Request) -> JSONResponse:
        (await ctx.principal(request)).require_admin()
        flag = await flags.get_flag(rt, name)
        data = flag.to_dict() | {"history": await flags.history(rt, name)}
        return envelope(True, f"Flag {name}", data, 200)

    @api.put(
        "/admin/flags/{name}",
        **doc(
            ok={200: (FlagUpdated, "The flag after and before")},
            errors={403: ("FORBIDDEN",), 404: ("FLAG_NOT_FOUND",)},
            body=FlagChange,
            body_example={"enabled": True, "rolloutPercent": 10},
            headers=[header_param("X-Payrail-Actor", "Who makes the change (audited).")],
        ),
    )
    async def put_flag(name: str, request: Request) -> JSONResponse:
        (await ctx.principal(request)).require_admin()
        actor = "api:" + _actor(request.headers.get("x-payrail-actor"))
        old, new = await flags.update_flag(rt, name, await read_json(request), actor)
        data = new.to_dict() | {"previous": old.to_dict()}
        return envelope(True, f"Flag {name} updated", data, 200)


def _actor(given: str | None) -> str:
    """Who made a change, as the caller names itself (the admin key names no one)."""
    if given and len(given) <= 64 and all(c.isalnum() or c in "-_.@" for c in given):
        return given
    return "admin"
