"""Routes with no key: the status reference, health, readiness and Prometheus metrics.

Metrics show platform-wide figures; PAYRAIL_METRICS_TOKEN puts them behind a bearer token.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail import __version__
from payrail.db.engine import PGBOUNCER_URL_PARAM, is_sqlite
from payrail.domain import errors
from payrail.domain.payouts import STATUS_DESCRIPTIONS, Status
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope
from payrail.entrypoints.http.models import doc, error_response
from payrail.entrypoints.http.models.ops import Health, NotReadyEnvelope, Readiness, Statuses
from payrail.services import ops_metrics, readiness


def install(app: FastAPI, api: APIRouter, ctx: ApiContext) -> None:
    rt, settings = ctx.rt, ctx.settings

    @api.get("/statuses", **doc(ok={200: (Statuses, "The four statuses")}, auth=False))
    async def statuses() -> JSONResponse:
        data = {
            "statuses": [s.value for s in Status],
            "descriptions": {s.value: d for s, d in STATUS_DESCRIPTIONS.items()},
        }
        return envelope(True, "Payout statuses", data, 200)

    async def health() -> JSONResponse:
        try:
            await database_answers(rt.engine)
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

    health_doc = doc(
        ok={200: (Health, "Healthy")},
        other={503: (NotReadyEnvelope, "The database is unreachable")},
        auth=False,
    )
    api.add_api_route("/health", health, methods=["GET"], **health_doc)
    app.add_api_route("/health", health, methods=["GET"], **health_doc)

    async def ready() -> JSONResponse:
        """Readiness: the database answers, its schema is at head, and a worker is alive."""
        data = await readiness.check(rt)
        ok = data["status"] == "ready"
        return envelope(
            ok, "payrail is " + data["status"].replace("_", " "), data, 200 if ok else 503
        )

    ready_doc = doc(
        ok={200: (Readiness, "Ready")},
        other={503: (NotReadyEnvelope, "Not ready: data.checks says what is missing")},
        auth=False,
    )
    api.add_api_route("/ready", ready, methods=["GET"], **ready_doc)
    app.add_api_route("/ready", ready, methods=["GET"], **ready_doc)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            401: error_response(401, ("UNAUTHORIZED",)),  # PAYRAIL_METRICS_TOKEN set, not sent
        },
    )
    async def metrics_endpoint(request: Request) -> Response:
        if settings.metrics_token and not _bearer_matches(request, settings.metrics_token):
            raise errors.Unauthorized(
                "GET /metrics needs the header 'Authorization: Bearer <PAYRAIL_METRICS_TOKEN>'."
            )
        return Response(await ops_metrics.render(rt), media_type=CONTENT_TYPE_LATEST)


async def database_answers(engine: AsyncEngine) -> None:
    """SELECT 1, raising if the database does not answer. On PostgreSQL in autocommit: one round
    trip, not three (BEGIN, SELECT 1, ROLLBACK), so a probe costs the least it can and waits on
    the fewest database turns on a busy machine. Behind PgBouncer (transaction pooling) and on
    SQLite, a plain connection."""
    async with engine.connect() as conn:
        if not (is_sqlite(engine) or engine.get_execution_options().get(PGBOUNCER_URL_PARAM)):
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(_SELECT_1)


_SELECT_1 = text("SELECT 1")


def _bearer_matches(request: Request, token: str) -> bool:
    """Constant-time comparison, so the answer's timing does not spell the token out."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
