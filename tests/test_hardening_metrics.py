"""GET /metrics behind PAYRAIL_METRICS_TOKEN: platform-wide figures are not public when set."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from payrail.config import Settings
from payrail.entrypoints.http.app import create_app

TOKEN = "metrics-token-for-tests-13"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, metrics_token=TOKEN)


async def test_metrics_need_the_bearer_token_when_one_is_set(settings, rt, client):
    missing = await client.get("http://test/metrics")
    wrong = await client.get("http://test/metrics", headers={"authorization": "Bearer nope"})
    basic = await client.get("http://test/metrics", headers={"authorization": f"Basic {TOKEN}"})
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401, refused.text
        assert refused.json()["data"]["error"] == "UNAUTHORIZED"
        assert "payrail_" not in refused.text
    allowed = await client.get("http://test/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200 and "payrail_" in allowed.text


async def test_metrics_stay_open_without_a_token(settings, rt):
    app = create_app(dataclasses.replace(settings, metrics_token=""), runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
        assert (await c.get("http://test/metrics")).status_code == 200


def test_the_token_comes_from_the_environment():
    assert Settings.from_env({"PAYRAIL_METRICS_TOKEN": "abc"}).metrics_token == "abc"
    assert Settings.from_env({}).metrics_token == ""
