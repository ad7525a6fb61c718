"""HTTP routes of the operator dashboard at /dashboard: server-rendered HTML, no script.

Sign-in opens a server-side session (services/dashboard/sessions.py) behind an HttpOnly,
SameSite=Strict cookie. Every POST carries the session's CSRF token in a hidden field and is
refused (403, nothing changed) without it; sign-in itself is guarded by a double-submit cookie.
Pages never render a key or a webhook secret. Styles are served from here: nothing leaves the
server, so the dashboard works offline. The routes are HTML, so not in the OpenAPI schema.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape

from payrail.domain import errors
from payrail.domain.orders import OrderStatus, format_amount
from payrail.domain.payouts import Status
from payrail.entrypoints.http.auth import client_address
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import status_for
from payrail.jobs import queue
from payrail.services import approvals, callbacks, flags
from payrail.services import payouts as payout_service
from payrail.services.auth_throttle import Caller
from payrail.services.dashboard import deposits as dashboard_deposits
from payrail.services.dashboard import pages, reconcile_runs, sessions
from payrail.services.dashboard.sessions import Viewer
from payrail.support.wording import plural

log = structlog.get_logger("payrail.dashboard")

PREFIX = "/dashboard"
SESSION_COOKIE = "payrail_session"
LOGIN_COOKIE = "payrail_login_csrf"
LOGIN_COOKIE_MAX_AGE_S = 600
FORM_FIELDS_MAX = 20
STATIC_DIR = Path(__file__).parent / "dashboard_static"
STATIC_FILES = frozenset({"dashboard.css"})

# No script at all; inline style attributes only for the SVG charts' font.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no-referrer would make Chromium send Origin: null
    "cache-control": "no-store",
}

# What a POST may announce on the page it redirects to: fixed texts, never echoed input.
NOTICES = {
    "callback-replayed": "The callback is queued for delivery again.",
    "job-replayed": "The job is queued again.",
    "flag-changed": "The flag was changed; the change is in its audit log.",
    "reconciled": "Reconciliation ran; its result is below.",
    "approved": "The payout was approved and sent; its status is in its history.",
    "rejected": "The payout was rejected; its reservation was voided.",
}
APPROVALS_PAGE_MAX = 50  # held payouts a page of the approvals queue shows

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "dashboard_templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["sats"] = lambda v: "—" if v is None else f"{v:,}"
templates.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f}%"
# An order's amount is in its currency's minor unit: 1999 usd reads "19.99 USD".
templates.filters["money"] = lambda v, currency: "—" if v is None else format_amount(v, currency)
templates.filters["counted"] = lambda v, noun: plural(int(v or 0), noun)  # "1 discrepancy"
# ISO 8601 (as the API shows times) → "2026-12-03 10:14:42", short enough for a table cell.
templates.filters["when"] = lambda v: "—" if not v else v[:19].replace("T", " ")


# The filtered lists: how to read the filters, how to fetch a page, the statuses offered.
LISTS = {
    "payouts": (pages.parse_payout_filter, pages.payout_page, [s.value for s in Status]),
    "orders": (pages.parse_order_filter, pages.order_page, [s.value for s in OrderStatus]),
    "deposits": (
        dashboard_deposits.parse_filter,
        dashboard_deposits.page,
        dashboard_deposits.STATUSES,
    ),
}


class _SignInFirst(Exception):
    """No live session: a page redirects to the sign-in form, an action is refused."""


class HtmlRoute(APIRoute):
    """Errors become HTML pages here, not the API's JSON envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except _SignInFirst:
                if request.method == "GET":
                    return RedirectResponse(f"{PREFIX}/login", status_code=303)
                return error_page(request, 401, "Your session is over: sign in again.")
            except errors.PayrailError as exc:
                return error_page(request, status_for(exc), exc.message)

        return handler


def render(
    request: Request,
    template: str,
    *,
    code: int = 200,
    viewer: Viewer | None = None,
    **context: Any,
) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    body = templates.get_template(template).render(
        viewer=viewer, notice=notice, prefix=PREFIX, path=request.url.path, **context
    )
    return HTMLResponse(body, status_code=code, headers=SECURITY_HEADERS)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", code=status, status=status, message=message)


def _secure(request: Request, ctx: ApiContext) -> bool:
    return request.url.scheme == "https" or not ctx.settings.sandbox


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (BodyLimit bounds its size). Any other body counts as no form, so
    it carries no CSRF token and is refused as one without it."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        parsed = parse_qs((await request.body()).decode(), max_num_fields=FORM_FIELDS_MAX)
    except (UnicodeDecodeError, ValueError):
        raise errors.ValidationError("The form could not be read.") from None
    return {k: v[0] for k, v in parsed.items()}


def _same_origin(request: Request) -> bool:
    """A browser's Origin, when it sends one, must be this server (defence in depth)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def _csrf_refusal() -> errors.Forbidden:
    return errors.Forbidden(
        "This form is not from your dashboard session (its CSRF token is missing or wrong). "
        "Reload the page and try again; nothing was changed."
    )


def install(app: FastAPI, ctx: ApiContext) -> None:
    rt = ctx.rt
    router = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=HtmlRoute)

    async def viewer_of(request: Request) -> Viewer:
        viewer = await sessions.viewer_for(rt, request.cookies.get(SESSION_COOKIE))
        if viewer is None:
            raise _SignInFirst
        return viewer

    async def action(request: Request) -> tuple[Viewer, dict[str, str]]:
        """A POST: a live session, same origin, and the session's CSRF token in the form."""
        viewer = await viewer_of(request)
        form = await _form(request)
        if not _same_origin(request) or not sessions.csrf_ok(viewer, form.get("csrf")):
            log.warning("dashboard_csrf_refused", path=request.url.path)
            raise _csrf_refusal()
        return viewer, form

    def back(path: str, notice: str, **query: str) -> RedirectResponse:
        query = {k: v for k, v in query.items() if v} | {"notice": notice}
        return RedirectResponse(f"{PREFIX}{path}?{urlencode(query)}", status_code=303)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise errors.NotFound(f"No file {name}.")
        return FileResponse(
            STATIC_DIR / name,
            media_type="text/css",
            headers={"cache-control": "max-age=3600", "x-content-type-options": "nosniff"},
        )

    # ------------------------------------------------------------ sign in, sign out

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        response = render(request, "login.html", csrf=token, name="")
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=LOGIN_COOKIE_MAX_AGE_S,
            path=f"{PREFIX}/login",
            httponly=True,
            samesite="strict",
            secure=_secure(request, ctx),
        )
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        expected = request.cookies.get(LOGIN_COOKIE)
        given = form.get("csrf")
        if not expected or not given or not secrets.compare_digest(expected, given):
            raise _csrf_refusal()
        caller = Caller(client_address(request), form.get("key", ""))
        try:
            ctx.throttle.check(caller, rt.clock.now_ms(), "dashboard")
            actor = sessions.parse_actor(form.get("name"))
            try:
                token = await sessions.sign_in(rt, form.get("key", ""), actor)
            except errors.Unauthorized:
                ctx.throttle.failed(caller, rt.clock.now_ms(), "dashboard")
                raise
        except (errors.Unauthorized, errors.ValidationError, errors.AuthThrottled) as exc:
            # A new form token each try; the key typed is not sent back.
            fresh = secrets.token_urlsafe(32)
            response = render(
                request,
                "login.html",
                code=status_for(exc),
                csrf=fresh,
                error=exc.message,
                name=form.get("name", "")[: sessions.ACTOR_MAX_CHARS],
            )
            response.set_cookie(
                LOGIN_COOKIE,
                fresh,
                max_age=LOGIN_COOKIE_MAX_AGE_S,
                path=f"{PREFIX}/login",
                httponly=True,
                samesite="strict",
                secure=_secure(request, ctx),
            )
            if "retryAfter" in exc.extra:
                response.headers["Retry-After"] = str(exc.extra["retryAfter"])
            return response
        response = RedirectResponse(PREFIX, status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=sessions.SESSION_MAX_MS // 1000,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=_secure(request, ctx),
        )
        log.info("dashboard_signed_in", actor=actor)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await action(request)
        await sessions.sign_out(rt, request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # ------------------------------------------------------------ pages
    # Every page reads through rt.reads(): the read replica when PAYRAIL_READ_DATABASE_URL is
    # set (a person's view tolerates its lag); the actions below stay on the primary.

    @router.get("")
    async def overview(request: Request) -> Response:
        viewer = await viewer_of(request)
        q = request.query_params
        window = pages.parse_window(q.get("window"))
        ids = await pages.project_ids(rt.reads(), viewer.scope(q.get("project")))
        if q.get("project") and q["project"] not in ids:
            raise errors.ProjectNotFound(f"No project with id {q['project']}.")
        selected = ids[0] if ids else None
        summary = []
        if viewer.admin:
            for project_id in await pages.project_ids(rt.reads(), None):
                summary.append(await pages.overview_row(rt.reads(), project_id))
        return render(
            request,
            "overview.html",
            viewer=viewer,
            summary=summary,
            project=await pages.overview(rt.reads(), selected, window) if selected else None,
            windows=pages.WINDOWS,
        )

    async def list_page(request: Request, kind: str) -> Response:
        """The payouts or orders list: the same filters form, table and next-page link."""
        viewer = await viewer_of(request)
        q = dict(request.query_params)
        parse, fetch, statuses = LISTS[kind]
        f = parse(viewer.scope(q.get("project")), q)
        rows, next_cursor = await fetch(rt.reads(), f, q.get("cursor") or None)
        return render(
            request,
            f"{kind}.html",
            viewer=viewer,
            rows=rows,
            q=q,
            statuses=statuses,
            next_query=_next(q, next_cursor),
        )

    @router.get("/payouts")
    async def payout_list(request: Request) -> Response:
        return await list_page(request, "payouts")

    @router.get("/orders")
    async def order_list(request: Request) -> Response:
        return await list_page(request, "orders")

    @router.get("/deposits")
    async def deposit_list(request: Request) -> Response:
        return await list_page(request, "deposits")

    @router.get("/payouts/{payout_id}")
    async def payout_detail(payout_id: str, request: Request) -> Response:
        viewer = await viewer_of(request)
        detail = await pages.payout_detail(rt.reads(), payout_id, viewer.only_project)
        return render(request, "payout.html", viewer=viewer, **detail)

    @router.get("/orders/{order_id}")
    async def order_detail(order_id: str, request: Request) -> Response:
        viewer = await viewer_of(request)
        detail = await pages.order_detail(rt.reads(), order_id, viewer.only_project)
        return render(request, "order.html", viewer=viewer, **detail)

    @router.get("/reconciliation")
    async def reconciliation(request: Request) -> Response:
        viewer = await viewer_of(request)
        if not viewer.admin:
            raise errors.Forbidden("Reconciliation covers every project: it needs the admin key.")
        return render(
            request, "reconciliation.html", viewer=viewer, run=await reconcile_runs.last(rt.reads())
        )

    @router.post("/reconciliation/run")
    async def reconcile_now(request: Request) -> Response:
        viewer, _ = await action(request)
        if not viewer.admin:
            raise errors.Forbidden("Reconciliation covers every project: it needs the admin key.")
        await reconcile_runs.run_and_record(rt, "dashboard")
        return back("/reconciliation", "reconciled")

    @router.get("/dead")
    async def dead(request: Request) -> Response:
        viewer = await viewer_of(request)
        scope = viewer.only_project
        return render(
            request,
            "dead.html",
            viewer=viewer,
            callbacks=await pages.dead_callbacks(rt.reads(), scope),
            jobs=await pages.dead_jobs(rt.reads()) if viewer.admin else None,
        )

    # ------------------------------------------------------------ the approvals queue

    @router.get("/approvals")
    async def approvals_queue(request: Request) -> Response:
        """The payouts waiting for an approver, newest first (keyset on the held payouts'
        partial index); Approve / Reject forms for the admin and an approver key's session."""
        viewer = await viewer_of(request)
        q = dict(request.query_params)
        scope = viewer.scope(q.get("project"))
        rows, next_cursor = await approvals.held_page(
            rt.reads(), scope, APPROVALS_PAGE_MAX, q.get("cursor") or None
        )
        return render(
            request,
            "approvals.html",
            viewer=viewer,
            rows=[payout_service.view(r) for r in rows],
            q=q,
            next_query=_next(q, next_cursor),
        )

    def _install_decision(router: APIRouter, verb: str, decide: Any) -> None:
        @router.post(f"/payouts/{{payout_id}}/{verb}", name=f"dashboard_{verb}")
        async def decision(payout_id: str, request: Request) -> Response:
            viewer, _ = await action(request)  # a session, same origin, its CSRF token
            if not viewer.may_decide:
                raise errors.Forbidden(
                    "Approving or rejecting needs the admin key or an approver key: sign in "
                    "with one."
                )
            row = await payout_service.get_payout(rt, payout_id)
            if viewer.only_project is not None and row["project_id"] != viewer.only_project:
                raise errors.PayoutNotFound(f"No payout with id {payout_id}.")
            await decide(rt, payout_id, viewer.decision_actor)
            log.info(f"dashboard_payout_{verb}d", payout_id=payout_id, actor=viewer.actor)
            return back("/approvals", f"{verb}d")

    for verb, decide in (("approve", approvals.approve), ("reject", approvals.reject)):
        _install_decision(router, verb, decide)

    @router.post("/callbacks/{callback_id}/replay")
    async def replay_callback(callback_id: str, request: Request) -> Response:
        viewer, _ = await action(request)
        if viewer.approver:
            raise errors.Forbidden("An approver key approves or rejects payouts, nothing else.")
        await callbacks.replay(rt, callback_id, viewer.only_project)
        log.info("dashboard_callback_replayed", callback_id=callback_id, actor=viewer.actor)
        return back("/dead", "callback-replayed")

    @router.post("/jobs/{job_id}/replay")
    async def replay_job(job_id: str, request: Request) -> Response:
        viewer, _ = await action(request)
        if not viewer.admin:
            raise errors.Forbidden("Jobs span every project: replaying one needs the admin key.")
        await queue.replay_dead(rt.engine, job_id, rt.clock.now_ms())
        log.info("dashboard_job_replayed", job_id=job_id, actor=viewer.actor)
        return back("/dead", "job-replayed")

    @router.get("/flags")
    async def flag_list(request: Request) -> Response:
        viewer = await viewer_of(request)
        rows = await pages.flag_rows(rt, viewer.project_id, viewer.admin)
        return render(request, "flags.html", viewer=viewer, flags=rows)

    @router.post("/flags/{name}")
    async def change_flag(name: str, request: Request) -> Response:
        viewer, form = await action(request)
        if not viewer.admin:
            raise errors.Forbidden("Changing a flag needs the admin key.")
        body = pages.parse_flag_form(form)
        await flags.update_flag(rt, name, body, viewer.actor)
        return back("/flags", "flag-changed")

    app.include_router(router)


def _next(q: dict[str, str], cursor: str | None) -> str | None:
    """The query string of the next page: the same filters, the new cursor."""
    if cursor is None:
        return None
    return urlencode(
        {k: v for k, v in q.items() if v and k not in ("cursor", "notice")} | {"cursor": cursor}
    )
