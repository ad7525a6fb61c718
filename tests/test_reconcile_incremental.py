"""The incremental reconciliation reads only what changed since its checkpoint, and still finds
what goes wrong after it; the full audit, in pages, finds everything (services/reconcile.py).

Each test breaks the books after a checkpoint the way a bug or a tampering would and asserts
the kind, ids and amount found, and how many payouts the run read (not all of them).
"""

from __future__ import annotations

import asyncio
import os

from conftest import ADMIN_KEY, PROJECT, payout_body
from sqlalchemy import select, text
from typer.testing import CliRunner

from payrail.db.tables import reconcile_checkpoints
from payrail.entrypoints.cli import app as cli
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.services import reconcile as rec
from payrail.services.reconcile import reconcile, reconcile_incremental

LAG_MS = rec.WATERMARK_LAG_MS


async def _payouts(client, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        response = await client.post("/payouts", json=payout_body(gamertag=f"{tag}{i}"))
        assert response.status_code == 201, response.text
        assert response.json()["data"]["status"] == "completed"
        ids.append(response.json()["data"]["id"])
    return ids


async def _past_everything(rt, clock) -> None:
    """Runs until the checkpoint's watermark is past every row so far: a run then reads none."""
    assert (await reconcile_incremental(rt)).clean
    clock.advance(2 * LAG_MS)
    assert (await reconcile_incremental(rt)).clean
    quiet = await reconcile_incremental(rt)
    assert quiet.clean and quiet.payouts_checked == 0


async def _checkpoint(rt):
    async with rt.engine.connect() as conn:
        return await rec.load_checkpoint(conn)


async def test_the_first_run_is_the_full_audit_then_only_changes_are_read(client, rt, clock):
    await _payouts(client, 5, "old")
    first = await reconcile_incremental(rt)
    assert first.clean, first.discrepancies
    assert first.payouts_checked == 5  # no checkpoint: everything
    saved = await _checkpoint(rt)
    assert saved is not None and saved.watermark_ms <= clock.now_ms() - LAG_MS
    clock.advance(LAG_MS + 1_000)  # the five are older than the next watermark
    second = await reconcile_incremental(rt)
    assert second.clean and second.payouts_checked == 5  # still within the last window
    clock.advance(LAG_MS + 1_000)
    new = await _payouts(client, 2, "new")
    third = await reconcile_incremental(rt)
    assert third.clean, third.discrepancies
    assert third.payouts_checked == 2, "only the payouts changed since the checkpoint"
    assert (await _checkpoint(rt)).watermark_ms > saved.watermark_ms
    assert len(new) == 2


async def test_a_charge_with_no_payout_after_the_checkpoint_is_found_and_stays_found(
    client, rt, clock
):
    await _payouts(client, 3, "p")
    await _past_everything(rt, clock)
    account = acct.project_account(PROJECT)
    async with rt.engine.begin() as conn:
        await ledger.reserve(
            conn,
            [ledger.Transfer("ghost:amount", account, acct.lightning_outbound("ghost"), 700)],
            clock.now_ms(),
            None,
        )
    found = await reconcile_incremental(rt)
    orphaned = [(d.ids, d.amount) for d in found.discrepancies if d.kind == "orphaned-charge"]
    assert orphaned == [(["ghost:amount"], 700)]
    assert found.payouts_checked == 0
    # Past the watermark the transfer no longer changes, and the finding is carried over.
    clock.advance(2 * LAG_MS)
    again = await reconcile_incremental(rt)
    assert [d.ids for d in again.discrepancies if d.kind == "orphaned-charge"] == [["ghost:amount"]]
    # The full audit finds it too, and the balance the payouts do not explain.
    full = await reconcile(rt)
    assert {"orphaned-charge", "balance-mismatch"} <= set(full.kinds())


async def test_a_paid_payout_voided_after_the_checkpoint_is_paid_not_charged(client, rt, clock):
    ids = await _payouts(client, 4, "v")
    await _past_everything(rt, clock)
    victim = ids[2]
    # Behind the saga's back, as a bug would: the resolutions become voids, the payout says
    # it changed (updated_at) and the balances follow the voids, so the ledger adds up.
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE transfers SET kind = 'void' WHERE pending_id IN (:a, :f)"),
            {"a": f"{victim}:amount", "f": f"{victim}:fee"},
        )
        await conn.execute(
            text("UPDATE payouts SET updated_at = :now WHERE id = :id"),
            {"now": clock.now_ms(), "id": victim},
        )
    report = await reconcile_incremental(rt)
    assert report.payouts_checked == 1
    assert [d.ids for d in report.discrepancies if d.kind == "paid-not-charged"] == [[victim]]
    clock.advance(2 * LAG_MS)
    carried = await reconcile_incremental(rt)
    assert [d.ids for d in carried.discrepancies if d.kind == "paid-not-charged"] == [[victim]]


async def test_a_balance_changed_behind_the_ledger_is_a_mismatch_at_the_next_run(client, rt, clock):
    await _payouts(client, 2, "b")
    await _past_everything(rt, clock)
    account = acct.project_account(PROJECT)
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE accounts SET credits_posted = credits_posted + 5 WHERE id = :id"),
            {"id": account},
        )
    report = await reconcile_incremental(rt)
    mismatch = [(d.ids, d.amount) for d in report.discrepancies if d.kind == "balance-mismatch"]
    assert mismatch == [([account], 5)]
    assert report.payouts_checked == 0
    # No row changed, and the mismatch is still reported: it is computed from the sums.
    clock.advance(2 * LAG_MS)
    assert "balance-mismatch" in (await reconcile_incremental(rt)).kinds()


async def test_a_transfer_committed_after_its_watermark_rebases_the_checkpoint(client, rt, clock):
    """A transaction that commits later than the lag after its rows' time is missing from the
    checkpoint's sums: the account's own sums are read and agree, so that is no discrepancy
    (the full audit still sees the charge that has no payout)."""
    await _payouts(client, 2, "late")
    await _past_everything(rt, clock)
    account = acct.project_account(PROJECT)
    long_ago = (await _checkpoint(rt)).watermark_ms - LAG_MS
    async with rt.engine.begin() as conn:
        await ledger.reserve(
            conn,
            [ledger.Transfer("late:amount", account, acct.lightning_outbound("late"), 300)],
            long_ago,
            None,
        )
    report = await reconcile_incremental(rt)
    assert "balance-mismatch" not in report.kinds(), report.discrepancies
    before = (await _checkpoint(rt)).balances[account]
    assert (await reconcile_incremental(rt)).clean
    assert (await _checkpoint(rt)).balances[account] == before
    full = await reconcile(rt)
    assert [d.ids for d in full.discrepancies if d.kind == "orphaned-charge"] == [["late:amount"]]


async def test_the_legacy_flaw_is_caught_by_the_next_incremental_run(client, rt, clock):
    """rollbackOnTimeout false (the sandbox's legacy flaw): charged, never paid."""
    await _payouts(client, 2, "fine")
    await _past_everything(rt, clock)
    flaw = await client.post(
        "/test/failure-injection",
        json={"enabled": True, "timeoutRate": 1, "rollbackOnTimeout": False},
    )
    assert flaw.status_code == 200, flaw.text
    response = await client.post("/payouts", json=payout_body(gamertag="legacy"))
    assert response.status_code == 504, response.text
    payout_id = response.json()["data"]["id"] if response.json().get("data") else None
    report = await reconcile_incremental(rt, settle_window_ms=0)
    charged = [d for d in report.discrepancies if d.kind == "charged-not-paid"]
    assert len(charged) == 1 and charged[0].amount == 1020
    if payout_id is not None:
        assert charged[0].ids == [payout_id]
    assert report.payouts_checked == 1


async def test_the_full_audit_in_small_pages_finds_what_one_page_finds(client, rt):
    ids = await _payouts(client, 5, "page")
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE transfers SET kind = 'void' WHERE pending_id IN (:a, :f)"),
            {"a": f"{ids[3]}:amount", "f": f"{ids[3]}:fee"},
        )
    seen: list[tuple[int, int]] = []
    paged = await reconcile(rt, page_rows=2, progress=lambda n, total: seen.append((n, total)))
    whole = await reconcile(rt, page_rows=1_000)
    assert paged.payouts_checked == whole.payouts_checked == 5
    assert sorted(paged.kinds().items()) == sorted(whole.kinds().items())
    assert [d.ids for d in paged.discrepancies if d.kind == "paid-not-charged"] == [[ids[3]]]
    assert seen == [(2, 5), (4, 5), (5, 5)]


def _cli(database_url: str, *args: str):
    env = {**os.environ, "PAYRAIL_DATABASE_URL": database_url}
    return CliRunner().invoke(cli.app, ["reconcile", *args], env=env)


async def test_the_command_checks_changes_and_everything_with_full(client, rt, settings):
    await _payouts(client, 3, "cli")
    first = await asyncio.to_thread(_cli, settings.database_url, "--full")
    assert first.exit_code == 0, first.output
    assert "3 payouts" in first.output
    assert "reconcile --full: 3/3 payouts (100 %)" in first.output  # progress, on stderr
    async with rt.engine.connect() as conn:
        assert (await conn.execute(select(reconcile_checkpoints.c.name))).scalars().all() == [
            rec.CHECKPOINT
        ]
    # Admin endpoint: the incremental run too, clean.
    answer = await client.get("/admin/reconciliation", headers={"apikey": ADMIN_KEY})
    assert answer.status_code == 200 and answer.json()["data"]["clean"] is True
