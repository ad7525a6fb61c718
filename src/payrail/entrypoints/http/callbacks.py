"""HTTP routes of callback deliveries: list a project's deliveries, replay a dead one."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, int_param, page_data
from payrail.entrypoints.http.models import doc, limit_param, query_param
from payrail.entrypoints.http.models.ops import Callback, CallbackPage
from payrail.services import callbacks


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.get(
        "/callbacks",
        **doc(
            ok={200: (CallbackPage, "Deliveries, newest first")},
            errors={400: ("VALIDATION_ERROR", "INVALID_STATUS"), 403: ("FORBIDDEN",)},
            query=[
                query_param("status", "pending, delivered or dead"),
                query_param("projectId", "Admin key: one project (default all)."),
                limit_param(callbacks.LIST_LIMIT_MAX, callbacks.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_callbacks(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        q = request.query_params
        project_id = ctx.scope(who, q.get("projectId"))
        status = callbacks.parse_status(q.get("status"))
        limit = int_param(
            q.get("limit"), "limit", callbacks.LIST_LIMIT_DEFAULT, 1, callbacks.LIST_LIMIT_MAX
        )
        page, cursor = await callbacks.list_callbacks(
            rt.reads(), project_id, status, limit, q.get("cursor")
        )
        data = page_data("callbacks", [callbacks.view(r) for r in page], cursor)
        return envelope(True, "Callbacks", data, 200)

    @api.post(
        "/callbacks/{callback_id}/replay",
        **doc(
            ok={200: (Callback, "Pending again, with a fresh set of attempts")},
            errors={404: ("CALLBACK_NOT_FOUND",), 409: ("CALLBACK_NOT_DEAD",)},
        ),
    )
    async def replay_callback(callback_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        row = await callbacks.replay(rt, callback_id, None if who.admin else who.project_id)
        return envelope(True, "Callback queued for delivery again", callbacks.view(row), 200)
