"""The HTTP API of API.md: routes only; the use cases live in services/."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from payrail import __version__
from payrail.api import cards
from payrail.api import errors as api_errors
from payrail.api.auth import KeyCache, Principal, authenticate
from payrail.api.errors import envelope, page_data, read_json
from payrail.api.errors import int_param as _int_param
from payrail.api.limits import BodyLimit
from payrail.api.observe import API_PREFIX, Observe
from payrail.clock import iso
from payrail.config import STRIPE_SIMULATOR_PATH, Settings
from payrail.db import migrate
from payrail.domain import errors
from payrail.domain.payouts import (
    STATUS_DESCRIPTIONS,
    FailureCode,
    State,
    Status,
    parse_payout_request,
    parse_status,
)
from payrail.jobs import worker
from payrail.psp.simulator import StripeSimulator
from payrail.services import (
    callback_urls,
    callbacks,
    flags,
    ops_metrics,
    payouts,
    projects,
    readiness,
    reconcile,
    webhook_secrets,
)
from payrail.services.runtime import Runtime, build_runtime

log = structlog.get_logger("payrail.api")


def create_app(
    settings: Settings, runtime: Runtime | None = None, *, migrate_db: bool = True
) -> FastAPI:
    rt = runtime or build_runtime(settings)
    keys = KeyCache()
    stop = asyncio.Event()
    stripe_sim = _stripe_simulator(settings, rt)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if migrate_db:
            migrate.upgrade(settings.database_url)
        if settings.sandbox:
            await projects.seed_sandbox(rt)
        background = []
        if settings.run_worker:
            background.append(asyncio.create_task(worker.run_forever(rt, stop)))
            if stripe_sim is not None:  # tests run without the worker and deliver by hand
                background.append(asyncio.create_task(stripe_sim.run(stop)))
            if settings.reconcile_interval_s:
                background.append(
                    asyncio.create_task(
                        reconcile.run_periodically(rt, stop, settings.reconcile_interval_s)
                    )
                )
            if settings.flag_guard_interval_s:
                background.append(
                    asyncio.create_task(
                        flags.run_guards_periodically(rt, stop, settings.flag_guard_interval_s)
                    )
                )
        try:
            yield
        finally:
            stop.set()
            for task in background:
                await task
            if stripe_sim is not None:
                await stripe_sim.aclose()
            if runtime is None:
                await rt.aclose()

    app = FastAPI(
        title="payrail",
        version=__version__,
        lifespan=lifespan,
        docs_url=f"{API_PREFIX}/docs",
        openapi_url=f"{API_PREFIX}/openapi.json",
        redoc_url=None,
    )
    app.state.runtime = rt
    app.state.stripe_sim = stripe_sim
    api_errors.install(app)

    async def principal(request: Request) -> Principal:
        return await authenticate(rt, keys, request)

    def sandbox_only() -> None:
        if not settings.sandbox:
            raise errors.NotFound("Test endpoints exist only in sandbox mode.")

    api = APIRouter(prefix=API_PREFIX)
    cards.install(api, rt, principal)

    # ------------------------------------------------------------ payouts

    @api.post("/payouts")
    async def create_payout(request: Request) -> JSONResponse:
        who = await principal(request)
        body = await read_json(request)
        refusal = await callback_urls.refusal_at_creation(  # production: DNS, so not in domain
            settings, body.get("callbackUrl") if isinstance(body, dict) else None
        )
        req = parse_payout_request(
            body, request.headers.get("idempotency-key"), callback_url_refusal=refusal
        )
        who.require(req.project_id)
        outcome = await payouts.create_payout(rt, req)
        return _payout_answer(outcome)

    @api.get("/payouts/by-internal-id/{internal_id}")
    async def by_internal_id(internal_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        project_id = request.query_params.get("projectId") or who.project_id
        if project_id is None:
            raise errors.ValidationError("The admin key needs ?projectId= for this lookup.")
        who.require(project_id)
        row = await payouts.get_by_internal_id(rt, project_id, internal_id)
        return envelope(True, "Payout found", payouts.view(row), 200)

    @api.get("/payouts/{payout_id}")
    async def get_payout(payout_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        row = await _visible_payout(who, payout_id)
        return envelope(True, "Payout found", payouts.view(row), 200)

    @api.get("/payouts/{payout_id}/history")
    async def payout_history(payout_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        await _visible_payout(who, payout_id)
        events = await payouts.history(rt, payout_id)
        data = {"payoutId": payout_id, "events": events, "count": len(events)}
        return envelope(True, "Payout history", data, 200)

    @api.get("/payouts")
    async def list_payouts(request: Request) -> JSONResponse:
        who = await principal(request)
        q = request.query_params
        project_id = q.get("projectId") or who.project_id
        if project_id is not None:
            who.require(project_id)
        status = parse_status(q["status"]) if q.get("status") else None
        limit = _int_param(
            q.get("limit"), "limit", payouts.LIST_LIMIT_DEFAULT, 1, payouts.LIST_LIMIT_MAX
        )
        page, cursor = await payouts.list_payouts(rt, project_id, status, limit, q.get("cursor"))
        data = page_data("payouts", [payouts.view(r) for r in page], cursor)
        return envelope(True, "Payouts", data, 200)

    @api.patch("/payouts/{payout_id}/status")
    async def patch_status(payout_id: str, request: Request) -> JSONResponse:
        sandbox_only()
        who = await principal(request)
        body = await read_json(request)
        status = parse_status(body.get("status") if isinstance(body, dict) else None)
        await _visible_payout(who, payout_id)
        row = await payouts.set_status(rt, payout_id, status)
        return envelope(True, f"Payout is {status.value}", payouts.view(row), 200)

    async def _visible_payout(who: Principal, payout_id: str) -> Any:
        row = await payouts.get_payout(rt, payout_id)
        if not who.admin and row["project_id"] != who.project_id:
            raise errors.PayoutNotFound(f"No payout with id {payout_id}.")
        return row

    # ------------------------------------------------------------ projects

    @api.post("/projects")
    async def create_project(request: Request) -> JSONResponse:
        who = await principal(request)
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

    @api.post("/projects/{project_id}/webhook-secret/rotate")
    async def rotate_webhook_secret(project_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
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

    # ------------------------------------------------------------ callbacks

    @api.get("/callbacks")
    async def list_callbacks(request: Request) -> JSONResponse:
        who = await principal(request)
        q = request.query_params
        project_id = q.get("projectId") or who.project_id
        if project_id is not None:
            who.require(project_id)
        status = callbacks.parse_status(q.get("status"))
        limit = _int_param(
            q.get("limit"), "limit", callbacks.LIST_LIMIT_DEFAULT, 1, callbacks.LIST_LIMIT_MAX
        )
        page, cursor = await callbacks.list_callbacks(
            rt, project_id, status, limit, q.get("cursor")
        )
        data = page_data("callbacks", [callbacks.view(r) for r in page], cursor)
        return envelope(True, "Callbacks", data, 200)

    @api.post("/callbacks/{callback_id}/replay")
    async def replay_callback(callback_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        row = await callbacks.replay(rt, callback_id, None if who.admin else who.project_id)
        return envelope(True, "Callback queued for delivery again", callbacks.view(row), 200)

    @api.get("/projects/{project_id}/balance")
    async def balance(project_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        who.require(project_id)
        return envelope(True, "Balance", await projects.balance(rt, project_id), 200)

    @api.post("/projects/{project_id}/fund")
    async def fund(project_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        if not settings.sandbox:
            who.require_admin()
        who.require(project_id)
        amount = projects.parse_fund_amount(await read_json(request))
        data = await projects.fund(rt, project_id, amount, request.headers.get("idempotency-key"))
        message = "Funding already processed" if data["replayed"] else "Project funded"
        return envelope(True, message, data, 200)

    # ------------------------------------------------------------ admin

    @api.get("/admin/reconciliation")
    async def reconciliation(request: Request) -> JSONResponse:
        who = await principal(request)
        who.require_admin()
        report = await reconcile.reconcile(rt)
        reconcile.export_metrics(report, rt.clock.now_ms() / 1000)
        message = "Ledger and node agree" if report.clean else "Discrepancies found"
        return envelope(True, message, reconcile.report_dict(report), 200)

    @api.get("/admin/flags")
    async def list_flags(request: Request) -> JSONResponse:
        (await principal(request)).require_admin()
        found = [f.to_dict() for f in await flags.list_flags(rt)]
        return envelope(True, "Feature flags", {"flags": found, "count": len(found)}, 200)

    @api.get("/admin/flags/{name}")
    async def get_flag(name: str, request: Request) -> JSONResponse:
        (await principal(request)).require_admin()
        flag = await flags.get_flag(rt, name)
        data = flag.to_dict() | {"history": await flags.history(rt, name)}
        return envelope(True, f"Flag {name}", data, 200)

    @api.put("/admin/flags/{name}")
    async def put_flag(name: str, request: Request) -> JSONResponse:
        (await principal(request)).require_admin()
        actor = "api:" + _actor(request.headers.get("x-payrail-actor"))
        old, new = await flags.update_flag(rt, name, await read_json(request), actor)
        data = new.to_dict() | {"previous": old.to_dict()}
        return envelope(True, f"Flag {name} updated", data, 200)

    # ------------------------------------------------------------ reference and health

    @api.get("/statuses")
    async def statuses() -> JSONResponse:
        data = {
            "statuses": [s.value for s in Status],
            "descriptions": {s.value: d for s, d in STATUS_DESCRIPTIONS.items()},
        }
        return envelope(True, "Payout statuses", data, 200)

    async def health() -> JSONResponse:
        try:
            async with rt.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            database = "reachable"
        except Exception:
            database = "unreachable"
        healthy = database == "reachable"
        data = {
            "status": "healthy" if healthy else "unhealthy",
            "database": database,
            "mode": settings.mode,
            "version": __version__,
        }
        return envelope(healthy, "payrail is " + data["status"], data, 200 if healthy else 503)

    api.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])

    async def ready() -> JSONResponse:
        """Readiness: the database answers, its schema is at head, and a worker is alive."""
        data = await readiness.check(rt)
        ok = data["status"] == "ready"
        return envelope(
            ok, "payrail is " + data["status"].replace("_", " "), data, 200 if ok else 503
        )

    api.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(await ops_metrics.render(rt), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ sandbox-only

    @api.get("/test/failure-injection")
    async def get_faults(request: Request) -> JSONResponse:
        sandbox_only()
        await principal(request)
        return envelope(True, "Failure injection", (await rt.faults.get()).to_dict(), 200)

    @api.post("/test/failure-injection")
    async def set_faults(request: Request) -> JSONResponse:
        sandbox_only()
        await principal(request)
        current = await rt.faults.get()
        updated = await rt.faults.put(current.merged(await read_json(request) or {}))
        return envelope(True, "Failure injection updated", updated.to_dict(), 200)

    @api.delete("/test/reset")
    async def reset(request: Request) -> JSONResponse:
        sandbox_only()
        await principal(request)
        await rt.drain()
        await projects.reset_sandbox(rt)
        keys.clear()
        return envelope(True, "Sandbox reset to its seeded state", {}, 200)

    @api.post("/test/expire/{payout_id}")
    async def expire(payout_id: str, request: Request) -> JSONResponse:
        sandbox_only()
        who = await principal(request)
        await _visible_payout(who, payout_id)
        row = await payouts.expire_now(rt, payout_id)
        return envelope(
            True, "Payout expired; its reservation was released", payouts.view(row), 200
        )

    @api.get("/test/callbacks")
    async def callback_log(request: Request) -> JSONResponse:
        sandbox_only()
        who = await principal(request)
        log_rows = await callbacks.delivery_log(rt, who.project_id)
        return envelope(
            True, "Callback deliveries", {"callbacks": log_rows, "count": len(log_rows)}, 200
        )

    app.include_router(api)
    if stripe_sim is not None:
        app.include_router(stripe_sim.router(STRIPE_SIMULATOR_PATH))
    app.add_middleware(BodyLimit, max_bytes=settings.body_max_bytes)

    app.add_middleware(Observe)  # outermost: it sees the 413s of BodyLimit too

    return app


def _stripe_simulator(settings: Settings, rt: Runtime) -> StripeSimulator | None:
    """Sandbox only: the Stripe simulator, served by this app, posting to its webhook."""
    if not (settings.sandbox and settings.stripe_backend == "simulator"):
        return None
    seed = settings.sim_seed if settings.sim_seed is not None else random.randrange(2**32)
    log.info("stripe_simulator", seed=seed, path=STRIPE_SIMULATOR_PATH)
    return StripeSimulator(
        rt.engine,
        rt.clock,
        rt.faults,
        seed,
        api_key=settings.stripe_api_key,
        webhook_secret=settings.stripe_webhook_secret,
        webhook_url=f"http://127.0.0.1:{settings.port}{API_PREFIX}/webhooks/stripe",
    )


def _actor(given: str | None) -> str:
    """Who made a change, as the caller names itself (the admin key names no one)."""
    if given and len(given) <= 64 and all(c.isalnum() or c in "-_.@" for c in given):
        return given
    return "admin"


def _payout_answer(outcome: payouts.CreateOutcome) -> JSONResponse:
    """201 completed, 202 pending, 504/502 error; a replay answers as the original did."""
    row = outcome.payout
    data = payouts.view(row)
    state = State(row["state"])
    if state == State.FAILED:
        code = FailureCode(row["failure_code"] or FailureCode.PAYMENT_FAILED)
        charged = row["charge_posted"]
        status = 504 if code == FailureCode.GATEWAY_TIMEOUT else 502
        what = "timed out" if status == 504 else "failed"
        rolled = (
            "the balance was charged (legacy mode)" if charged else "the balance was rolled back"
        )
        message = f"Lightning payment {what}; {rolled}."
        if outcome.replay:
            message = "Payout already processed: " + message
        data |= {
            "error": code.value,
            "balanceRolledBack": not charged,
            "chargedAmount": data["totalCost"] if charged else 0,
        }
        return envelope(False, message, data, status)
    if outcome.replay:
        return envelope(True, "Payout already processed", data, 200)
    if state == State.COMPLETED:
        return envelope(True, "Payout completed", data, 201)
    if state == State.EXPIRED:
        return envelope(True, "Payout expired before it was sent", data, 200)
    return envelope(True, "Payout accepted; the payment is in flight", data, 202)
