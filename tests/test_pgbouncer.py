"""Through PgBouncer in transaction pooling mode (`?pgbouncer=1`), payouts work: no prepared
statement collides or goes missing across pooled server connections, and money is exact."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of, payout_body

from payrail.bootstrap import build_runtime
from payrail.config import Settings
from payrail.db.engine import make_engine
from payrail.db.migrate import upgrade
from payrail.entrypoints.http.app import create_app
from payrail.services import projects
from payrail_tools.deploytest.parts import PgBouncer, Postgres, service_dir, tool

PGBOUNCER_PORT = 18_481
POSTGRES_PORT = 18_482
DATABASE = "payrail_pgbouncer_14"
PAYOUTS = 40
COST_SATS = 1_020  # 1,000 + 2% fee


@pytest.fixture
def bouncer() -> Iterator[PgBouncer]:
    """Our own PostgreSQL instance (initdb) with PgBouncer in front of it."""
    if tool("pgbouncer") is None:
        message = "pgbouncer is not installed (scripts/install-deploy-tools.sh installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    directory = service_dir("payrail-14-pgbouncer-")
    postgres = Postgres(directory / "pg", POSTGRES_PORT)
    postgres.init()
    postgres.start()
    part = PgBouncer(directory / "pgbouncer", PGBOUNCER_PORT, POSTGRES_PORT)
    try:
        postgres.sql(f"CREATE DATABASE {DATABASE}")
        part.start()
        yield part
    finally:
        part.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_url_param_is_removed_before_asyncpg_sees_it() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/x?pgbouncer=1")
    assert "pgbouncer" not in str(engine.url)
    assert engine.get_execution_options()["pgbouncer"] is True
    plain = make_engine("postgresql://postgres@127.0.0.1:1/x")
    assert "pgbouncer" not in plain.get_execution_options()


async def test_concurrent_payouts_through_transaction_pooling(bouncer: PgBouncer) -> None:
    url = bouncer.url(DATABASE)
    upgrade(url)  # migrations run through the pooler too
    settings = Settings(
        database_url=url,
        admin_key=ADMIN_KEY,
        sandbox_api_key=SANDBOX_KEY,
        run_worker=False,
        db_pool_size=30,
        node_timeout_ms=5_000,
        lease_ms=10_000,
    )
    rt = build_runtime(settings)
    await projects.seed_sandbox(rt)
    app = create_app(settings, runtime=rt, migrate_db=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": SANDBOX_KEY}
    ) as client:
        before = await balance_of(client, PROJECT)

        async def pay(i: int) -> httpx.Response:
            return await client.post(
                "/payouts",
                json=payout_body(gamertag=f"pgb{i}"),
                headers={"Idempotency-Key": f"pgb-{i}"},
            )

        answers = await asyncio.gather(*(pay(i) for i in range(PAYOUTS)))
        assert [a.status_code for a in answers] == [201] * PAYOUTS, [
            a.text for a in answers if a.status_code != 201
        ][:3]
        replay = await pay(0)  # the idempotent replay goes through the pooler as well
        assert replay.status_code == 200
        assert replay.json()["data"]["id"] == answers[0].json()["data"]["id"]
        assert before - await balance_of(client, PROJECT) == PAYOUTS * COST_SATS
    await rt.aclose()
