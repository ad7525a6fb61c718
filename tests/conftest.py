"""Fixtures: every test runs on SQLite and on PostgreSQL.

PostgreSQL: one database per test session (payrail_test_<pid>), migrated once, truncated
before each test. Under CI=true an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from payrail.bootstrap import Runtime, build_runtime
from payrail.config import Settings
from payrail.db.migrate import upgrade
from payrail.db.tables import metadata
from payrail.entrypoints.http.app import create_app
from payrail.services import projects
from payrail.support.clock import ShiftableClock

PG_ADMIN_URL = os.environ.get("PAYRAIL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SANDBOX_KEY = "test_api_key_12345"
ADMIN_KEY = "test_admin_key"
PROJECT = "project_test_001"
BACKENDS = ["sqlite", "postgresql"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> str:
    name = f"payrail_test_{os.getpid()}"
    try:
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name}"))
        asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc!r}"
        if _in_ci():
            pytest.fail(message + " (CI=true: PostgreSQL tests may not skip)")
        pytest.skip(message)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    upgrade(url)
    yield url
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "payrail.db"
    upgrade(f"sqlite:///{path}")
    return path


async def _truncate(url: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"), timeout=5)
    try:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        await conn.execute(f"TRUNCATE {names}")
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "payrail.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_url")
    asyncio.run(_truncate(url))
    return url


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("PAYRAIL_TEST_SEED", random.randrange(2**32)))
    print(f"simulated node seed: {value} (rerun with PAYRAIL_TEST_SEED={value})")
    return value


@pytest.fixture
def settings(database_url: str, seed: int) -> Settings:
    return Settings(
        database_url=database_url,
        admin_key=ADMIN_KEY,
        sandbox_api_key=SANDBOX_KEY,
        settle_wait_ms=5_000,
        node_timeout_ms=2_000,
        lease_ms=5_000,
        sim_seed=seed,
        run_worker=False,
        db_pool_size=30,
    )


@pytest.fixture
def clock() -> ShiftableClock:
    return ShiftableClock()


@pytest.fixture
async def rt(settings: Settings, clock: ShiftableClock) -> AsyncIterator[Runtime]:
    runtime = build_runtime(settings, clock=clock)
    await projects.seed_sandbox(runtime)
    yield runtime
    await runtime.aclose()


@pytest.fixture
async def client(settings: Settings, rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, runtime=rt, migrate_db=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": SANDBOX_KEY}
    ) as c:
        yield c


async def balance_of(client: httpx.AsyncClient, project: str = PROJECT) -> int:
    response = await client.get(f"/projects/{project}/balance", headers={"apikey": ADMIN_KEY})
    assert response.status_code == 200, response.text
    return response.json()["data"]["balance"]


def payout_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {"gamertag": "player1", "amount": 1000, "projectId": PROJECT}
    body.update(overrides)
    return body


@pytest.fixture(scope="session")
def lnbits(tmp_path_factory: pytest.TempPathFactory):
    """A real LNbits 1.6.2 on loopback for the whole session (tests/lnbits_kit.py)."""
    from lightning_kit import free_port
    from lnbits_kit import Lnbits, unavailable

    folder = tmp_path_factory.mktemp("lnbits")
    server = Lnbits(free_port(), folder / "data", folder / "lnbits.log")
    try:
        Lnbits.install()
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        unavailable(f"LNbits could not be set up: {exc!r}")
    yield server
    server.stop()


WAIT_MAX_S = 30  # a bound on polling in tests, not a timing assertion


async def until(condition, what: str) -> None:
    """Poll an async condition every 20 ms, WAIT_MAX_S at most; fail naming what never came."""
    for _ in range(WAIT_MAX_S * 50):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
async def dash(settings: Settings, rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of /dashboard (cookies kept, no API key header)."""
    app = create_app(settings, runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        yield c
