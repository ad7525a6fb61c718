"""Reconciliation names each kind of wrong money it finds, and its command says so by exit code.

Each test breaks the books the way a bug or a tampering would (rows written behind the saga's
back) and asserts the discrepancy kind, ids and amount, not only that something was found.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from conftest import ADMIN_KEY, PROJECT, payout_body
from sqlalchemy import insert, text
from typer.testing import CliRunner

from payrail.db.tables import transfers
from payrail.entrypoints.cli import app as cli
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.services.reconcile import reconcile


async def test_a_charge_on_a_studio_balance_without_a_payout_is_an_orphaned_charge(rt):
    account = acct.project_account(PROJECT)
    async with rt.engine.begin() as conn:
        await ledger.reserve(
            conn,
            [ledger.Transfer("ghost:amount", account, acct.lightning_outbound("ghost"), 700)],
            rt.clock.now_ms(),
            None,
        )
    report = await reconcile(rt)
    orphaned = [d for d in report.discrepancies if d.kind == "orphaned-charge"]
    assert [(d.ids, d.amount) for d in orphaned] == [(["ghost:amount"], 700)]
    # The reservation also leaves the balance short of what the payouts explain.
    assert "balance-mismatch" in report.kinds()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_charge_posted_twice_is_a_double_payment_even_without_the_unique_index(client, rt):
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 201, response.text
    payout_id = response.json()["data"]["id"]
    amount_id = f"{payout_id}:amount"
    async with rt.engine.begin() as conn:
        await conn.execute(text("DROP INDEX uq_transfers_pending_id"))  # migration 0012's
    try:
        async with rt.engine.begin() as conn:
            await conn.execute(
                insert(transfers).values(
                    id=f"{amount_id}-post-again",
                    debit_account_id=acct.project_account(PROJECT),
                    credit_account_id=acct.lightning_outbound(payout_id),
                    amount=1000,
                    pending_id=amount_id,
                    kind="post",
                    created_at=rt.clock.now_ms(),
                )
            )
        report = await reconcile(rt)
        doubled = [d for d in report.discrepancies if d.kind == "double-payment"]
        assert [(d.ids, d.amount) for d in doubled] == [([amount_id], 2)]
    finally:
        async with rt.engine.begin() as conn:
            await conn.execute(text("DELETE FROM transfers WHERE id LIKE '%-again'"))
            await conn.execute(
                text(
                    "CREATE UNIQUE INDEX uq_transfers_pending_id ON transfers (pending_id)"
                    " WHERE pending_id IS NOT NULL"
                )
            )


async def test_reconciliation_endpoint_is_for_the_admin_and_reports_the_kinds(client, rt):
    refused = await client.get("/admin/reconciliation")
    assert refused.status_code == 403, refused.text
    clean = await client.get("/admin/reconciliation", headers={"apikey": ADMIN_KEY})
    assert clean.status_code == 200, clean.text
    assert clean.json()["data"]["clean"] is True


def _run_cli(database_url: str, *args: str):
    env = {**os.environ, "PAYRAIL_DATABASE_URL": database_url}
    return CliRunner().invoke(cli.app, ["reconcile", *args], env=env)


async def _run_cli_async(database_url: str, *args: str):
    """The command runs its own event loop: give it a thread of its own."""
    return await asyncio.to_thread(_run_cli, database_url, *args)


async def test_reconcile_command_exits_0_clean_then_1_on_a_discrepancy(rt, settings):
    clean = await _run_cli_async(settings.database_url, "--json")
    assert clean.exit_code == 0, clean.output
    account = acct.project_account(PROJECT)
    async with rt.engine.begin() as conn:
        await ledger.reserve(
            conn,
            [ledger.Transfer("ghost:fee", account, acct.fees("ghost"), 5)],
            rt.clock.now_ms(),
            None,
        )
    dirty = await _run_cli_async(settings.database_url, "--json")
    assert dirty.exit_code == 1, dirty.output
    assert '"orphaned-charge": 1' in dirty.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_reconcile_command_exits_2_when_it_cannot_check(database_url):
    missing = database_url.rsplit("/", 1)[0] + "/payrail_no_such_database"
    result = _run_cli(missing)
    assert result.exit_code == 2, result.output


async def test_the_periodic_run_asks_the_node_about_a_final_payout_once(client, rt):
    """node_answers (the server's periodic loop): the node is asked about each final payout
    in the first run only, and its remembered answer still takes part in every check."""
    ids = []
    for n in range(3):
        response = await client.post("/payouts", json=payout_body(gamertag=f"once{n}"))
        assert response.status_code == 201, response.text
        assert response.json()["data"]["status"] == "completed"
        ids.append(response.json()["data"]["id"])
    asked: list[str] = []
    statuses = rt.node.statuses

    async def counted(payment_ids):
        asked.extend(payment_ids)
        return await statuses(payment_ids)

    rt.node.statuses = counted
    known: dict = {}
    first = await reconcile(rt, node_answers=known)
    assert first.clean, first.discrepancies
    assert sorted(asked) == sorted(ids)
    assert sorted(known) == sorted(ids)
    asked.clear()
    assert (await reconcile(rt, node_answers=known)).clean
    assert asked == []
    # The ledger of a paid payout voided behind the saga's back: the node's remembered
    # "succeeded" still finds it, without asking again.
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE transfers SET kind = 'void' WHERE pending_id IN (:a, :f)"),
            {"a": f"{ids[0]}:amount", "f": f"{ids[0]}:fee"},
        )
    third = await reconcile(rt, node_answers=known)
    assert asked == []
    assert [d.ids for d in third.discrepancies if d.kind == "paid-not-charged"] == [[ids[0]]]
    asked.clear()
    await reconcile(rt)  # without node_answers (the command, the tests): everything is asked
    assert sorted(asked) == sorted(ids)


async def test_the_simulated_node_answers_many_as_it_answers_one(client, rt):
    """statuses() (one read for many payments, used by reconcile) == status() for each."""
    from payrail.lightning.backend import NodeStatus

    ids = []
    for n in range(3):
        response = await client.post("/payouts", json=payout_body(gamertag=f"many{n}"))
        assert response.status_code == 201, response.text
        ids.append(response.json()["data"]["id"])
    unknown = "00000000-0000-4000-8000-000000000000"
    many = await rt.node.statuses([*ids, unknown])
    assert many == {
        **{pid: (await rt.node.status(pid, None)).status for pid in ids},  # type: ignore[arg-type]
        unknown: NodeStatus.NOT_FOUND,
    }
    assert set(many.values()) == {NodeStatus.SUCCEEDED, NodeStatus.NOT_FOUND}


async def test_the_periodic_runs_memory_is_bounded_and_starts_over(client, rt, monkeypatch):
    """Past NODE_ANSWERS_KEPT_MAX the remembered answers are dropped: that run still answers
    every payout (from memory or the node), and the next one asks the node again."""
    from payrail.services import reconcile as reconcile_module

    ids = []
    for n in range(3):
        response = await client.post("/payouts", json=payout_body(gamertag=f"bound{n}"))
        assert response.status_code == 201, response.text
        ids.append(response.json()["data"]["id"])
    known: dict = {}
    assert (await reconcile(rt, node_answers=known)).clean
    assert len(known) == 3
    response = await client.post("/payouts", json=payout_body(gamertag="bound3"))
    assert response.status_code == 201, response.text
    monkeypatch.setattr(reconcile_module, "NODE_ANSWERS_KEPT_MAX", 3)
    report = await reconcile(rt, node_answers=known)  # 3 remembered + 1 asked > 3
    assert report.clean and report.payouts_checked == 4
    assert sorted(known) == [response.json()["data"]["id"]]  # started over with this run's
