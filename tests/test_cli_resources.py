"""The CLI as an operator uses it: --version, payouts get|list|history, projects
create|fund|balance, reconcile on an unmigrated database, whole ids when piped, plurals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from conftest import ADMIN_KEY, SANDBOX_KEY, payout_body
from typer.testing import CliRunner

from payrail import __version__
from payrail.config import Settings
from payrail.entrypoints.cli.app import app
from payrail.entrypoints.http.app import create_app
from payrail.services import projects
from payrail.support.wording import plural


def _cli(database_url: str, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(app, list(args), env={"PAYRAIL_DATABASE_URL": database_url})
    return result.exit_code, result.stdout, result.stderr


def _seed_and_pay(settings: Settings, count: int) -> list[str]:
    """The sandbox project and `count` completed payouts, through the API."""

    async def main() -> list[str]:
        app_ = create_app(settings, migrate_db=False)
        rt = app_.state.runtime
        await projects.seed_sandbox(rt)
        ids = []
        transport = httpx.ASGITransport(app=app_)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t/api/v1", headers={"apikey": SANDBOX_KEY}
        ) as c:
            for i in range(count):
                r = await c.post("/payouts", json=payout_body(gamertag=f"cli{i}", amount=100))
                assert r.status_code == 201, r.text
                ids.append(r.json()["data"]["id"])
        await rt.aclose()
        return ids

    return asyncio.run(main())


def test_version_prints_the_package_version() -> None:
    code, out, _ = _cli("sqlite:///unused.db", "--version")
    assert (code, out.strip()) == (0, f"payrail {__version__}")


def test_plurals() -> None:
    assert plural(1, "discrepancy") == "1 discrepancy"
    assert plural(2, "discrepancy") == "2 discrepancies"
    assert plural(1, "order") == "1 order"
    assert plural(0, "payout") == "0 payouts"
    assert plural(3, "day") == "3 days"


def test_reconcile_on_an_unmigrated_database_says_what_to_run(tmp_path: Path) -> None:
    code, out, err = _cli(f"sqlite:///{tmp_path}/never.db", "reconcile")
    assert code == 2
    assert "payrail migrate" in " ".join(err.split())
    assert "Traceback" not in out + err and "OperationalError" not in err
    code, _, err = _cli(f"sqlite:///{tmp_path}/never.db", "payouts", "list")
    assert code == 2 and "payrail migrate" in " ".join(err.split())


def test_projects_create_fund_balance_moves_exactly_the_funded_sats(database_url: str) -> None:
    code, out, _ = _cli(database_url, "projects", "create", "--id", "studio_cli", "--name", "S")
    assert code == 0, out
    created = json.loads(out)
    assert created["project"]["id"] == "studio_cli" and created["apiKey"]
    code, out, _ = _cli(database_url, "projects", "create", "--id", "studio_cli")
    assert code == 1  # PROJECT_EXISTS, nothing created twice
    for _ in range(2):  # the same key twice adds once
        code, out, _ = _cli(
            database_url, "projects", "fund", "studio_cli", "5000", "--idempotency-key", "k1"
        )
        assert code == 0, out
    assert json.loads(out)["replayed"] is True
    code, out, _ = _cli(database_url, "projects", "balance", "studio_cli")
    assert (code, json.loads(out)["balance"]) == (0, 5000)
    code, _, err = _cli(database_url, "projects", "fund", "nobody", "5")
    assert code == 1 and "nobody" in err
    code, _, _ = _cli(database_url, "projects", "fund", "studio_cli", "0")
    assert code == 1
    code, out, _ = _cli(database_url, "projects", "balance", "studio_cli")
    assert json.loads(out)["balance"] == 5000


def test_payouts_get_list_history_with_whole_ids_when_piped(
    database_url: str, settings: Settings
) -> None:
    ids = _seed_and_pay(settings, 2)
    code, out, err = _cli(database_url, "payouts", "list")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split("\t")[0] == "id"
    assert {line.split("\t")[0] for line in lines[1:]} == set(ids)  # whole, uncut ids
    assert "2 payouts" in err
    code, out, err = _cli(database_url, "payouts", "list", "--status", "completed", "--limit", "1")
    assert code == 0 and "1 payout" in err and len(out.strip().splitlines()) == 2
    code, out, _ = _cli(database_url, "payouts", "get", ids[0])
    payout = json.loads(out)
    assert (payout["id"], payout["status"], payout["totalCost"]) == (ids[0], "completed", 102)
    code, out, _ = _cli(database_url, "payouts", "history", ids[0], "--json")
    assert [e["toStatus"] for e in json.loads(out)][-1] == "completed"
    code, _, err = _cli(database_url, "payouts", "get", "no-such-id")
    assert code == 1 and "no-such-id" in err
    code, _, _ = _cli(database_url, "payouts", "list", "--status", "bogus")
    assert code == 1


def test_reconcile_counts_in_words(database_url: str, settings: Settings) -> None:
    _seed_and_pay(settings, 1)
    code, out, err = _cli(database_url, "reconcile")
    assert code == 0, out + err
    assert "1 payout and 0 orders checked" in " ".join(out.split())
    assert ADMIN_KEY not in out
