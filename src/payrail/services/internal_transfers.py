"""Internal transfers: sats from one project's balance to another's, one posted ledger transfer.

No Lightning, no fee, no two phases: both balances live in this ledger, so the move is one
transaction that debits the sender (the balance check in the debit's own statement) and
credits the receiver, or does nothing. Both account rows are locked in id order first, so two
opposite transfers at once wait for each other instead of deadlocking. The transfer row
(`transfers`, kind `single`, id `xfer:…`) is the record: who, to whom, how much, when.

Who may move money between two projects is the caller's rule (the ZBD-compatible route asks
for both projects' keys, docs/zbd.md); this module only refuses what is never right.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from payrail.bootstrap import Runtime
from payrail.db.tables import transfers
from payrail.domain import errors
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.services import projects

log = structlog.get_logger("payrail.internal_transfers")
TRANSFER_ID_PREFIX = "xfer:"
# The same typo guard as funding: far above any real move, far below an overflow.
TRANSFER_MAX_SATS = projects.FUND_MAX_SATS


@dataclass(frozen=True)
class Transferred:
    id: str
    sender: str
    receiver: str
    amount_sats: int
    created_at_ms: int
    replay: bool
    sender_balance: int  # available after the transfer (now, for a replay)
    receiver_balance: int


def transfer_id(sender: str, idempotency_key: str | None) -> str:
    """One id per (sender, key): a second transfer with the key hits the primary key."""
    if idempotency_key is None:
        return f"{TRANSFER_ID_PREFIX}{secrets.token_hex(16)}"
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"{TRANSFER_ID_PREFIX}{sender}:{digest}"


def check_amount(amount_sats: int) -> None:
    if not 1 <= amount_sats <= TRANSFER_MAX_SATS:
        raise errors.InvalidAmount(
            f"An internal transfer is 1 to {TRANSFER_MAX_SATS:,} sats.",
            minAmount=1,
            maxAmount=TRANSFER_MAX_SATS,
        )


async def transfer(
    rt: Runtime,
    sender: str,
    receiver: str,
    amount_sats: int,
    idempotency_key: str | None = None,
) -> Transferred:
    """Move amount_sats from sender's balance to receiver's, once per idempotency key."""
    if sender == receiver:
        raise errors.ValidationError(
            "The sender and receiver are the same wallet: nothing to transfer.",
            field="receiverWalletId",
        )
    check_amount(amount_sats)
    tid = transfer_id(sender, idempotency_key)
    earlier = await _load(rt, tid)
    if earlier is not None:  # before the debit: a replay must not be refused for funds
        return await _replay(rt, earlier, receiver, amount_sats)
    await projects.get_project(rt, sender)
    await projects.get_project(rt, receiver)
    debit, credit = acct.project_account(sender), acct.project_account(receiver)
    now = rt.clock.now_ms()
    try:
        async with rt.engine.begin() as conn:
            for account in sorted((debit, credit)):  # the one lock order: no deadlock
                await ledger.available_for_update(conn, account)
            await ledger.transfer(conn, ledger.Transfer(tid, debit, credit, amount_sats), now)
            after = {a: await ledger.balance(conn, a) for a in (debit, credit)}
    except ledger.InsufficientFunds as refusal:
        raise errors.InsufficientBalance(
            f"Insufficient balance: the transfer of {amount_sats} sats needs {amount_sats} "
            f"sats, and {max(refusal.available, 0)} sats are available.",
            requiredAmount=amount_sats,
            fee=0,
            totalCost=amount_sats,
            currentBalance=refusal.available,
        ) from None
    except IntegrityError:  # the same key, committed by a concurrent request first
        earlier = await _load(rt, tid)
        if earlier is None:
            raise
        return await _replay(rt, earlier, receiver, amount_sats)
    log.info(
        "internal_transfer",
        transfer_id=tid,
        sender=sender,
        receiver=receiver,
        amount_sats=amount_sats,
    )
    sender_after, receiver_after = after[debit], after[credit]
    assert sender_after is not None and receiver_after is not None
    return Transferred(
        tid,
        sender,
        receiver,
        amount_sats,
        now,
        False,
        sender_after.available,
        receiver_after.available,
    )


async def _load(rt: Runtime, tid: str) -> Any:
    async with rt.engine.connect() as conn:
        return (
            (await conn.execute(select(transfers).where(transfers.c.id == tid))).mappings().first()
        )


async def _replay(rt: Runtime, row: Any, receiver: str, amount_sats: int) -> Transferred:
    sender = row["debit_account_id"].removeprefix(acct.project_account(""))
    to = row["credit_account_id"].removeprefix(acct.project_account(""))
    if (to, row["amount"]) != (receiver, amount_sats):
        raise errors.IdempotencyKeyReused(
            f"This Idempotency-Key already transferred {row['amount']} sats to {to}; it cannot "
            f"transfer {amount_sats} sats to {receiver}. Use a new key for a new transfer.",
            transferId=row["id"],
        )
    async with rt.engine.connect() as conn:
        balances = {
            p: await ledger.balance(conn, acct.project_account(p)) for p in (sender, receiver)
        }
    return Transferred(
        row["id"],
        sender,
        receiver,
        row["amount"],
        row["created_at"],
        True,
        balances[sender].available,  # type: ignore[union-attr]
        balances[receiver].available,  # type: ignore[union-attr]
    )
