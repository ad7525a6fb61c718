"""HTTP routes of the recipient directory: register (PUT), look up, remove, list, history."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain import errors
from payrail.domain.recipients import parse_gamertag, parse_recipient
from payrail.entrypoints.http.auth import Principal
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, int_param, page_data, read_json
from payrail.entrypoints.http.models import doc, limit_param, query_param
from payrail.entrypoints.http.models.recipients import (
    RECIPIENT_EXAMPLE,
    Recipient,
    RecipientBody,
    RecipientHistory,
    RecipientPage,
)
from payrail.services import recipients


def _project(ctx: ApiContext, who: Principal, request: Request) -> str:
    """One project per call: the key's own; the admin key names it with ?projectId=."""
    project_id = ctx.scope(who, request.query_params.get("projectId"))
    if project_id is None:
        raise errors.ValidationError("The admin key needs ?projectId= here.", field="projectId")
    return project_id


def _actor(who: Principal) -> str:
    return "admin" if who.admin else f"project:{who.project_id}"


PROJECT_QUERY = [query_param("projectId", "Admin key: the project (a project key: its own).")]
NOT_FOUND = {400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",), 404: ("RECIPIENT_NOT_FOUND",)}


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.put(
        "/recipients/{gamertag}",
        **doc(
            ok={201: (Recipient, "Registered"), 200: (Recipient, "Updated")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",)},
            body=RecipientBody,
            body_example=RECIPIENT_EXAMPLE,
            query=PROJECT_QUERY,
            summary="Register or update where a gamertag is paid (audited)",
        ),
    )
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

    @api.get(
        "/recipients/{gamertag}",
        **doc(ok={200: (Recipient, "The recipient")}, errors=NOT_FOUND, query=PROJECT_QUERY),
    )
    async def get_recipient(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        row = await recipients.get(rt, _project(ctx, who, request), parse_gamertag(gamertag))
        return envelope(True, "Recipient found", recipients.view(row), 200)

    @api.get(
        "/recipients/{gamertag}/history",
        **doc(
            ok={200: (RecipientHistory, "Every change, oldest first")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",)},
            query=PROJECT_QUERY,
        ),
    )
    async def recipient_history(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id = _project(ctx, who, request)
        events = await recipients.changes(rt, project_id, parse_gamertag(gamertag))
        data = {"gamertag": gamertag, "events": events, "count": len(events)}
        return envelope(True, "Recipient history", data, 200)

    @api.delete(
        "/recipients/{gamertag}",
        **doc(ok={200: (Recipient, "Removed (audited)")}, errors=NOT_FOUND, query=PROJECT_QUERY),
    )
    async def delete_recipient(gamertag: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id = _project(ctx, who, request)
        row = await recipients.remove(rt, project_id, parse_gamertag(gamertag), _actor(who))
        return envelope(True, "Recipient removed", recipients.view(row), 200)

    @api.get(
        "/recipients",
        **doc(
            ok={200: (RecipientPage, "Newest first; pass data.nextCursor as ?cursor=")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",)},
            query=PROJECT_QUERY
            + [
                limit_param(recipients.LIST_LIMIT_MAX, recipients.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
        ),
    )
    async def list_recipients(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        q = request.query_params
        project_id = ctx.scope(who, q.get("projectId"))
        limit = int_param(
            q.get("limit"), "limit", recipients.LIST_LIMIT_DEFAULT, 1, recipients.LIST_LIMIT_MAX
        )
        page, cursor = await recipients.list_recipients(
            rt.reads(), project_id, limit, q.get("cursor")
        )
        data = page_data("recipients", [recipients.view(r) for r in page], cursor)
        return envelope(True, "Recipients", data, 200)
