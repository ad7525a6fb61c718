"""HTTP routes of the recipient directory: register (PUT), look up, remove, list, history."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.api.auth import Principal
from payrail.api.context import ApiContext
from payrail.api.errors import envelope, int_param, page_data, read_json
from payrail.domain import errors
from payrail.domain.recipients import parse_gamertag, parse_recipient
from payrail.services import recipients


def _project(ctx: ApiContext, who: Principal, request: Request) -> str:
    """One project per call: the key's own; the admin key names it with ?projectId=."""
    project_id = ctx.scope(who, request.query_params.get("projectId"))
    if project_id is None:
        raise errors.ValidationError("The admin key needs ?projectId= here.", field="projectId")
    return project_id


def _actor(who: Principal) -> str:
    return "admin" if who.admin else f"project:{who.project_id}"


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.put("/recipients/{gamertag}")
    async def put_recipient(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id = _project(ctx, who, request)
        change = parse_recipient(await read_json(request))
        done = await recipients.upsert(
            rt, project_id, parse_gamertag(gamertag), change, _actor(who)
        )
        if done.created:
            return envelope(True, "Recipient registered", recipients.view(done.row), 201)
        return envelope(True, "Recipient updated", recipients.view(done.row), 200)

    @api.get("/recipients/{gamertag}")
    async def get_recipient(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        row = await recipients.get(rt, _project(ctx, who, request), parse_gamertag(gamertag))
        return envelope(True, "Recipient found", recipients.view(row), 200)

    @api.get("/recipients/{gamertag}/history")
    async def recipient_history(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id = _project(ctx, who, request)
        events = await recipients.changes(rt, project_id, parse_gamertag(gamertag))
        data = {"gamertag": gamertag, "events": events, "count": len(events)}
        return envelope(True, "Recipient history", data, 200)

    @api.delete("/recipients/{gamertag}")
    async def delete_recipient(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id = _project(ctx, who, request)
        row = await recipients.remove(rt, project_id, parse_gamertag(gamertag), _actor(who))
        return envelope(True, "Recipient removed", recipients.view(row), 200)

    @api.get("/recipients")
    async def list_recipients(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        q = request.query_params
        project_id = ctx.scope(who, q.get("projectId"))
        limit = int_param(
            q.get("limit"), "limit", recipients.LIST_LIMIT_DEFAULT, 1, recipients.LIST_LIMIT_MAX
        )
        page, cursor = await recipients.list_recipients(rt, project_id, limit, q.get("cursor"))
        data = page_data("recipients", [recipients.view(r) for r in page], cursor)
        return envelope(True, "Recipients", data, 200)
