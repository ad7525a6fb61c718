"""PAYRAIL_READ_DATABASE_URL: which reads go to the replica, and that money never does.

The "replica" here is a second, empty, migrated PostgreSQL database: whatever a route shows
from it cannot have come from the primary, so each assertion says which database a route read.
(A real streaming replica under Patroni is exercised by `make ha-test`.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from conftest import (
    ADMIN_KEY,
    PG_ADMIN_URL,
    PROJECT,
    SANDBOX_KEY,
    _in_ci,
    _truncate,
    balance_of,
    payout_body,
)

from payrail.bootstrap import build_runtime
from payrail.config import Settings, UnsafeSettings
from payrail.db.migrate import upgrade
from payrail.entrypoints.http.app import create_app
from payrail.services import projects

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database_url(pg_url: str) -> str:
    """PostgreSQL only: a read replica is PostgreSQL's (the conftest's SQLite run is left out)."""
    asyncio.run(_truncate(pg_url))
    return pg_url


@pytest.fixture(scope="module")
def replica_url() -> AsyncIterator[str]:
    name = f"i26_replica_{os.getpid()}"
    try:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name}"))
        asyncio.run(_admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        if _in_ci():
            pytest.fail(f"PostgreSQL not reachable: {exc!r} (CI=true: no skip)")
        pytest.skip(f"PostgreSQL not reachable: {exc!r}")
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    upgrade(url)
    yield url
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _client(settings: Settings) -> tuple[httpx.AsyncClient, object]:
    rt = build_runtime(settings)
    await projects.seed_sandbox(rt)
    app = create_app(settings, runtime=rt, migrate_db=False)
    client = httpx.AsyncClient(
        # the app's own answer to a dead database (503), not the exception behind it
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://test/api/v1",
        headers={"apikey": SANDBOX_KEY},
    )
    return client, rt


@pytest.fixture
async def split(settings: Settings, replica_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API with its writes on the test database and its replica reads on the empty one."""
    import dataclasses

    client, rt = await _client(dataclasses.replace(settings, read_database_url=replica_url))
    async with client:
        yield client
    await rt.aclose()


async def test_lists_read_the_replica_and_a_payout_by_id_and_the_balance_read_the_primary(
    split: httpx.AsyncClient,
):
    before = await balance_of(split)
    created = await split.post("/payouts", json=payout_body(amount=1_000))
    assert created.status_code == 201, created.text
    payout = created.json()["data"]
    assert await balance_of(split) == before - payout["totalCost"]  # the primary's ledger
    by_id = await split.get(f"/payouts/{payout['id']}")
    assert by_id.status_code == 200 and by_id.json()["data"]["status"] == "completed"
    # The replica (empty) answers the lists: the payout and its recipient are not there yet.
    listed = await split.get("/payouts", params={"limit": 10})
    assert listed.status_code == 200 and listed.json()["data"]["payouts"] == []
    recipients = await split.get("/recipients")
    assert recipients.status_code == 200 and recipients.json()["data"]["recipients"] == []
    admin = {"apikey": ADMIN_KEY}
    callbacks = await split.get("/callbacks", headers=admin)
    assert callbacks.status_code == 200 and callbacks.json()["data"]["callbacks"] == []


async def test_without_a_replica_the_same_list_shows_the_payout(client: httpx.AsyncClient):
    created = await client.post("/payouts", json=payout_body(amount=1_000))
    assert created.status_code == 201, created.text
    listed = await client.get("/payouts", params={"limit": 10})
    assert [p["id"] for p in listed.json()["data"]["payouts"]] == [created.json()["data"]["id"]]


async def test_a_dead_replica_stops_no_payout_and_its_lists_answer_503(settings: Settings):
    import dataclasses

    client, rt = await _client(dataclasses.replace(settings, read_database_url=UNREACHABLE_URL))
    try:
        async with client:
            before = await balance_of(client)
            key = {"Idempotency-Key": "i26-dead-replica"}
            created = await client.post("/payouts", json=payout_body(amount=700), headers=key)
            assert created.status_code == 201, created.text
            cost = created.json()["data"]["totalCost"]
            assert await balance_of(client) == before - cost
            replay = await client.post("/payouts", json=payout_body(amount=700), headers=key)
            assert replay.status_code == 200 and await balance_of(client) == before - cost
            listed = await client.get("/payouts")
            assert listed.status_code == 503, listed.text
            assert listed.json()["data"]["error"] == "DATABASE_UNAVAILABLE"
            assert listed.headers["retry-after"]
    finally:
        await rt.aclose()


async def test_the_dashboards_pages_read_the_replica(settings: Settings, replica_url: str):
    import dataclasses
    import re

    client, rt = await _client(dataclasses.replace(settings, read_database_url=replica_url))
    try:
        async with client:
            created = await client.post("/payouts", json=payout_body(amount=900))
            payout_id = created.json()["data"]["id"]
        app = create_app(rt.settings, runtime=rt, migrate_db=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as dash:
            form = await dash.get("/dashboard/login")  # the session lives on the primary
            token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            signed = await dash.post(
                "/dashboard/login", data={"key": ADMIN_KEY, "name": "ops", "csrf": token}
            )
            assert signed.status_code == 303
            page = await dash.get("/dashboard/payouts", params={"project": PROJECT})
            assert page.status_code == 200 and payout_id not in page.text
            detail = await dash.get(f"/dashboard/payouts/{payout_id}")
            assert detail.status_code == 404  # not replicated (here: never)
    finally:
        await rt.aclose()


async def test_reads_is_the_runtime_itself_without_a_replica(rt):
    assert rt.reads() is rt


def test_a_read_replica_is_postgresql_behind_a_postgresql_primary():
    Settings(
        database_url="postgresql://u@h/db", read_database_url="postgresql://u@replica/db"
    ).check()
    with pytest.raises(UnsafeSettings):
        Settings(database_url="sqlite:///x.db", read_database_url="postgresql://u@h/db").check()
    with pytest.raises(UnsafeSettings):
        Settings(database_url="postgresql://u@h/db", read_database_url="sqlite:///r.db").check()
    env = {
        "PAYRAIL_DATABASE_URL": "postgresql://u@primary/db",
        "PAYRAIL_READ_DATABASE_URL": "postgresql://u@replica/db",
    }
    assert Settings.from_env(env).read_database_url == "postgresql://u@replica/db"
