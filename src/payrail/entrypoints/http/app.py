"""The FastAPI application: lifespan (migrations, seed, background loops), routers, middleware.

Routes live in one module per resource beside this one; the use cases live in services/.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI

from payrail import __version__
from payrail.bootstrap import Runtime, build_runtime
from payrail.config import STRIPE_SIMULATOR_PATH, Settings
from payrail.db import maintenance, migrate
from payrail.entrypoints import worker
from payrail.entrypoints.http import admin as admin_routes
from payrail.entrypoints.http import callbacks as callback_routes
from payrail.entrypoints.http import cards
from payrail.entrypoints.http import dashboard as dashboard_routes
from payrail.entrypoints.http import deposits as deposit_routes
from payrail.entrypoints.http import errors as api_errors
from payrail.entrypoints.http import front as front_routes
from payrail.entrypoints.http import health as health_routes
from payrail.entrypoints.http import payouts as payout_routes
from payrail.entrypoints.http import projects as project_routes
from payrail.entrypoints.http import quotes as quote_routes
from payrail.entrypoints.http import recipients as recipient_routes
from payrail.entrypoints.http import sandbox as sandbox_routes
from payrail.entrypoints.http import withdrawals as withdrawal_routes
from payrail.entrypoints.http import zbd as zbd_routes
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.limits import BodyLimit, RequestLineText
from payrail.entrypoints.http.models import install_openapi
from payrail.entrypoints.http.observe import API_PREFIX, Observe
from payrail.entrypoints.http.payouts import BATCH_BODY_MAX_BYTES
from payrail.psp.simulator import StripeSimulator
from payrail.services import flags, projects

log = structlog.get_logger("payrail.entrypoints.http")


def create_app(
    settings: Settings, runtime: Runtime | None = None, *, migrate_db: bool = True
) -> FastAPI:
    rt = runtime or build_runtime(settings)
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
            background.append(
                asyncio.create_task(
                    maintenance.run_periodically(rt.engine, settings.db_maintenance, stop)
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
        docs_url=None,  # served below from bundled files, not a CDN
        openapi_url=f"{API_PREFIX}/openapi.json",
        redoc_url=None,
    )
    app.state.runtime = rt
    app.state.stripe_sim = stripe_sim
    api_errors.install(app)

    ctx = ApiContext(settings, rt)
    api = APIRouter(prefix=API_PREFIX)
    # One router module per resource; each adds its routes to the /api/v1 router.
    payout_routes.install(api, ctx)
    project_routes.install(api, ctx)
    recipient_routes.install(api, ctx)
    callback_routes.install(api, ctx)
    cards.install(api, rt, ctx.principal)
    admin_routes.install(api, ctx)
    health_routes.install(app, api, ctx)
    sandbox_routes.install(api, ctx)
    deposit_routes.install(api, ctx)
    withdrawal_routes.install(api, ctx)
    quote_routes.install(api, ctx)

    app.include_router(api)
    withdrawal_routes.install_public(app, ctx)  # LNURL-withdraw and the claim page
    zbd_routes.install(app, ctx)  # ZBD's API at /v0 (docs/zbd.md), same services
    dashboard_routes.install(app, ctx)  # HTML at /dashboard, outside /api/v1 and its schema
    install_openapi(app)

    front_routes.install(app, settings)

    if stripe_sim is not None:
        app.include_router(stripe_sim.router(STRIPE_SIMULATOR_PATH))
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.body_max_bytes,
        path_max_bytes={f"{API_PREFIX}/payouts/batch": BATCH_BODY_MAX_BYTES},
    )
    app.add_middleware(RequestLineText)

    # Outermost: it sees the 413s of BodyLimit too. A request that wrote wakes the worker loop.
    app.add_middleware(Observe, after_write=rt.work_ready.set)

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
