"""The ledger's own rules, below the saga: two-phase transfers resolve exactly once."""

from __future__ import annotations

import pytest

from payrail.ledger import accounts as acct
from payrail.ledger import ledger


async def _setup(rt, funded: int) -> str:
    account = acct.project_account("ledger_test")
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await ledger.ensure_system_accounts(conn, now)
        await ledger.ensure_account(conn, account, acct.Code.PROJECT, now)
        await ledger.transfer(conn, ledger.Transfer("f1", acct.FUNDING, account, funded), now)
    return account


def _pair(account: str, prefix: str, amount: int, fee: int) -> list[ledger.Transfer]:
    return [
        ledger.Transfer(f"{prefix}:a", account, acct.lightning_outbound(prefix), amount),
        ledger.Transfer(f"{prefix}:f", account, acct.fees(prefix), fee),
    ]


async def _balance(rt, account: str) -> ledger.Balance:
    async with rt.engine.connect() as conn:
        b = await ledger.balance(conn, account)
    assert b is not None
    return b


async def test_reserve_is_all_or_nothing_when_funds_do_not_cover_both_transfers(rt):
    account = await _setup(rt, 1019)
    with pytest.raises(ledger.InsufficientFunds):
        async with rt.engine.begin() as conn:
            await ledger.reserve(conn, _pair(account, "p1", 1000, 20), rt.clock.now_ms(), None)
    b = await _balance(rt, account)
    assert (b.available, b.debits_pending) == (1019, 0)


async def test_post_moves_pending_to_posted_and_void_releases(rt):
    account = await _setup(rt, 5000)
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await ledger.reserve(conn, _pair(account, "p1", 1000, 20), now, None)
        await ledger.reserve(conn, _pair(account, "p2", 500, 10), now, None)
    assert (await _balance(rt, account)).available == 5000 - 1020 - 510
    async with rt.engine.begin() as conn:
        await ledger.post(conn, ["p1:a", "p1:f"], now)
        await ledger.void(conn, ["p2:a", "p2:f"], now)
    b = await _balance(rt, account)
    assert (b.available, b.debits_pending, b.debits_posted) == (3980, 0, 1020)
    async with rt.engine.connect() as conn:
        totals = await ledger.totals(conn)
    assert totals.credits_posted == totals.debits_posted
    assert totals.credits_pending == totals.debits_pending == 0


@pytest.mark.parametrize("second", ["post", "void"])
async def test_a_pending_transfer_resolves_exactly_once(rt, second):
    account = await _setup(rt, 5000)
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await ledger.reserve(conn, _pair(account, "p1", 1000, 20), now, None)
    async with rt.engine.begin() as conn:
        await ledger.post(conn, ["p1:a", "p1:f"], now)
    with pytest.raises(ledger.AlreadyResolved):
        async with rt.engine.begin() as conn:
            await getattr(ledger, second)(conn, ["p1:a", "p1:f"], now)
    b = await _balance(rt, account)
    assert (b.available, b.debits_posted, b.debits_pending) == (3980, 1020, 0)
