"""While the database is unreachable the API answers 503 DATABASE_UNAVAILABLE with
Retry-After (never a 500), and serves again as soon as the database is back."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, payout_body

from payrail.bootstrap import build_runtime
from payrail.config import Settings
from payrail.db.availability import is_database_unavailable
from payrail.entrypoints.http.app import create_app

NOTHING_LISTENS = "postgresql://postgres@127.0.0.1:18499/payrail_gone_14"  # our range, unused


def _client(settings: Settings):  # type: ignore[no-untyped-def]
    rt = build_runtime(settings)
    app = create_app(settings, runtime=rt, migrate_db=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": SANDBOX_KEY}
    )
    return rt, client


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["success"] is False
    assert body["data"]["error"] == "DATABASE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) == body["data"]["retryAfter"] > 0


async def test_refused_connection_is_503_with_retry_after_not_500() -> None:
    settings = Settings(database_url=NOTHING_LISTENS, run_worker=False, admin_key=ADMIN_KEY)
    rt, client = _client(settings)
    try:
        _assert_unavailable(await client.get(f"/projects/{PROJECT}/balance"))
        _assert_unavailable(
            await client.post("/payouts", json=payout_body(), headers={"Idempotency-Key": "k1"})
        )
        health = await client.get("/health")
        assert health.status_code == 503
    finally:
        await client.aclose()
        await rt.aclose()


async def test_connections_killed_by_the_server_are_503_then_served_again(pg_url: str) -> None:
    settings = Settings(
        database_url=pg_url, run_worker=False, admin_key=ADMIN_KEY, sandbox_api_key=SANDBOX_KEY
    )
    rt, client = _client(settings)
    from payrail.services import projects

    await projects.seed_sandbox(rt)
    try:
        first = await client.get(f"/projects/{PROJECT}/balance")
        assert first.status_code == 200, first.text
        # what a PostgreSQL restart does to pooled connections (57P01 admin_shutdown)
        admin = await asyncpg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", timeout=5)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_url.rsplit("/", 1)[1],
            )
        finally:
            await admin.close()
        assert killed >= 1
        _assert_unavailable(await client.get(f"/projects/{PROJECT}/balance"))
        again = await client.get(f"/projects/{PROJECT}/balance")
        assert again.status_code == 200, again.text  # the dead connection was dropped
        assert again.json()["data"]["balance"] == first.json()["data"]["balance"]
    finally:
        await client.aclose()
        await rt.aclose()


@pytest.mark.parametrize(
    "exc, unavailable",
    [
        (ConnectionRefusedError(111, "refused"), True),
        (OSError(113, "No route to host"), True),
        (FileNotFoundError(2, "no such file"), False),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.exceptions.ProtocolViolationError("server conn crashed?"), True),
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_connection_failures_count_as_unavailable(
    exc: BaseException, unavailable: bool
) -> None:
    assert is_database_unavailable(exc) is unavailable
