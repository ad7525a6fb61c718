"""HTTP routes of projects: create and list (admin), balance, fund, API key and webhook-secret
rotation (admin), the recipient guard's per-project settings (admin), amount caps (the
project reads, the admin sets)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, int_param, mark_replayed, page_data, read_json
from payrail.entrypoints.http.models import doc, header_param, limit_param, query_param
from payrail.entrypoints.http.models.projects import (
    ApproverKey,
    Balance,
    CreatedProject,
    Funding,
    FundRequest,
    KeyHistory,
    KeyRotation,
    Limits,
    LimitsChange,
    NewProject,
    ProjectPage,
    RotatedKey,
    RotatedSecret,
    Rotation,
)
from payrail.entrypoints.http.models.recipients import GuardOverrides, RecipientGuard
from payrail.services import limits, project_keys, projects, recipient_guard, webhook_secrets
from payrail.support.clock import iso


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt, settings = ctx.rt, ctx.settings

    @api.post(
        "/projects",
        **doc(
            ok={201: (CreatedProject, "Created; the API key and webhook secret are shown once")},
            errors={403: ("FORBIDDEN",), 409: ("PROJECT_EXISTS",)},
            body=NewProject,
            body_required=False,
            body_example={"id": "studio_42", "name": "Studio 42"},
            summary="Admin: create a project",
        ),
    )
    async def create_project(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        project_id, name = projects.parse_new_project(await read_json(request))
        new = await projects.create_project(rt, project_id, name)
        data = {
            "project": projects.project_view(new.row),
            "apiKey": new.api_key,
            "webhookSecret": new.webhook_secret,
        }
        return envelope(
            True,
            "Project created. Store the API key and webhook secret now: they are shown once.",
            data,
            201,
        )

    @api.get(
        "/projects",
        **doc(
            ok={200: (ProjectPage, "Newest first, with each key's rotation state")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",)},
            query=[
                limit_param(project_keys.LIST_LIMIT_MAX, project_keys.LIST_LIMIT_DEFAULT),
                query_param("cursor", "data.nextCursor of the previous page"),
            ],
            summary="Admin: list projects",
        ),
    )
    async def list_projects(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        q = request.query_params
        limit = int_param(
            q.get("limit"), "limit", project_keys.LIST_LIMIT_DEFAULT, 1, project_keys.LIST_LIMIT_MAX
        )
        page, cursor = await project_keys.list_projects(rt, limit, q.get("cursor"))
        return envelope(True, "Projects", page_data("projects", page, cursor), 200)

    @api.post(
        "/projects/{project_id}/keys",
        **doc(
            ok={
                201: (
                    RotatedKey,
                    "The new key (shown once): the project's, the old one working until its "
                    "time; or a new approver key",
                )
            },
            errors={
                400: ("VALIDATION_ERROR",),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
            },
            body=KeyRotation,
            body_required=False,
            body_example={"gracePeriodSeconds": 3600, "reason": "yearly rotation"},
            summary="Admin: rotate a project's API key, or create a key with the approver role",
        ),
    )
    async def rotate_key(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        body = await read_json(request)
        actor = "admin:" + (request.client.host if request.client else "unknown")
        if project_keys.parse_role(body) == project_keys.ROLE_APPROVER:
            label = project_keys.parse_approver_key(body)
            made = await project_keys.create_approver_key(rt, project_id, label, actor)
            data = {
                "projectId": project_id,
                "apiKey": made.api_key,
                "previousKeyExpiresAt": None,
                "role": project_keys.ROLE_APPROVER,
                "keyId": made.key.key_id,
                "label": made.key.label,
            }
            message = (
                "Approver key created: store it now (shown once); it may approve or reject "
                "this project's held payouts, nothing else."
            )
            return envelope(True, message, data, 201)
        grace_s, reason = project_keys.parse_rotation(body)
        rotated = await project_keys.rotate(rt, project_id, grace_s, actor, reason)
        ctx.keys.clear()  # this process forgets the old key's cached project at once
        expires = rotated.previous_expires_at_ms
        data = {
            "projectId": rotated.project_id,
            "apiKey": rotated.api_key,
            "previousKeyExpiresAt": iso(expires) if expires is not None else None,
            "role": project_keys.ROLE_PROJECT,
        }
        ended = f"works until {data['previousKeyExpiresAt']}" if expires else "no longer works"
        message = f"API key rotated: store the new key now (shown once); the old key {ended}."
        return envelope(True, message, data, 201)

    @api.get(
        "/projects/{project_id}/keys",
        **doc(
            ok={200: (KeyHistory, "Every rotation of the project's key, newest first")},
            errors={403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            summary="Admin: the audit of a project's key rotations",
        ),
    )
    async def key_history(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        await projects.get_project(rt, project_id)
        rotations = await project_keys.key_history(rt, project_id)
        expiry = await project_keys.previous_key_expiry(rt, project_id)
        data = {
            "projectId": project_id,
            "rotations": rotations,
            "previousKeyExpiresAt": expiry,
            "approverKeys": await project_keys.approver_keys(rt, project_id),
        }
        return envelope(True, "Key rotations", data, 200)

    @api.delete(
        "/projects/{project_id}/keys/{key_id}",
        **doc(
            ok={200: (ApproverKey, "Revoked: it works no more (again: the same answer)")},
            errors={403: ("FORBIDDEN",), 404: ("NOT_FOUND",)},
            summary="Admin: revoke one of a project's approver keys",
        ),
    )
    async def revoke_approver_key(project_id: str, key_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        revoked = await project_keys.revoke_approver_key(rt, project_id, key_id)
        ctx.keys.clear()  # this process forgets the key at once
        return envelope(True, "Approver key revoked", revoked, 200)

    @api.post(
        "/projects/{project_id}/webhook-secret/rotate",
        **doc(
            ok={200: (RotatedSecret, "The new secret; the old one signs too until it expires")},
            errors={403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            body=Rotation,
            body_required=False,
            summary="Admin: rotate a project's callback signing secret",
        ),
    )
    async def rotate_webhook_secret(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        grace_s = webhook_secrets.parse_rotation(
            await read_json(request), settings.webhook_secret_grace_s
        )
        rotation = await webhook_secrets.rotate_project_secret(rt, project_id, grace_s)
        data = {
            "projectId": rotation.project_id,
            "webhookSecret": rotation.secret,
            "previousSecretExpiresAt": iso(rotation.previous_expires_at_ms),
        }
        return envelope(True, "Webhook secret rotated. Store it now: it is shown once.", data, 200)

    @api.get(
        "/projects/{project_id}/balance",
        **doc(
            ok={200: (Balance, "Available and reserved sats")},
            errors={403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
        ),
    )
    async def balance(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require(project_id)
        return envelope(True, "Balance", await projects.balance(rt, project_id), 200)

    @api.post(
        "/projects/{project_id}/fund",
        **doc(
            ok={200: (Funding, "Funded, or already funded with this Idempotency-Key")},
            errors={
                400: ("INVALID_AMOUNT",),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
                422: ("IDEMPOTENCY_KEY_REUSED",),
            },
            body=FundRequest,
            body_example={"amount": 50000},
            headers=[header_param("Idempotency-Key", "A retry with the same key adds nothing.")],
            summary="Fund a project (admin; any key in sandbox)",
        ),
    )
    async def fund(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        if not settings.sandbox:
            who.require_admin()
        who.require(project_id)
        amount = projects.parse_fund_amount(await read_json(request))
        data = await projects.fund(rt, project_id, amount, request.headers.get("idempotency-key"))
        message = "Funding already processed" if data["replayed"] else "Project funded"
        return mark_replayed(envelope(True, message, data, 200), data["replayed"])

    @api.get(
        "/projects/{project_id}/recipient-guard",
        **doc(
            ok={200: (RecipientGuard, "The effective policy, overrides and defaults")},
            errors={403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            summary="Admin: the failed-payout block policy of a project",
        ),
    )
    async def get_recipient_guard(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        async with rt.engine.connect() as conn:
            data = await recipient_guard.view(conn, settings, project_id)
        return envelope(True, "Recipient guard", data, 200)

    @api.put(
        "/projects/{project_id}/recipient-guard",
        **doc(
            ok={200: (RecipientGuard, "Updated")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            body=GuardOverrides,
            body_example={"failuresMax": 5, "blockS": 1800},
            summary="Admin: override the failed-payout block for a project",
        ),
    )
    async def put_recipient_guard(project_id: str, request: Request) -> JSONResponse:
        """Override failuresMax (0: no block), failureWindowS, blockS; null: the default."""
        who = await ctx.principal(request)
        who.require_admin()
        changes = recipient_guard.parse_overrides(await read_json(request))
        async with rt.engine.begin() as conn:
            data = await recipient_guard.set_overrides(conn, settings, project_id, changes)
        return envelope(True, "Recipient guard updated", data, 200)

    @api.get(
        "/projects/{project_id}/limits",
        **doc(
            ok={200: (Limits, "The project's caps (null: no cap) and their latest changes")},
            errors={403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            summary="A project's amount caps (the project's key or the admin key)",
        ),
    )
    async def get_limits(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require(project_id)
        return envelope(True, "Limits", await limits.view(rt, project_id), 200)

    @api.put(
        "/projects/{project_id}/limits",
        **doc(
            ok={200: (Limits, "Updated; the change is audited")},
            errors={400: ("VALIDATION_ERROR",), 403: ("FORBIDDEN",), 404: ("PROJECT_NOT_FOUND",)},
            body=LimitsChange,
            body_example={"perPayoutMaxSats": 5000, "projectDailyMaxSats": 1000000},
            summary="Admin: set a project's amount caps (the fields named; null: no cap)",
        ),
    )
    async def put_limits(project_id: str, request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        who.require_admin()
        changes = limits.parse_limits(await read_json(request))
        actor = "admin:" + (request.client.host if request.client else "unknown")
        data = await limits.set_limits(rt, project_id, changes, actor)
        return envelope(True, "Limits updated", data, 200)
