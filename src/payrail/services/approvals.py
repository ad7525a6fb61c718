"""Approval holds: a payout above its project's approvalAboveSats waits for a person.

The payout engine decides the hold (domain/payout_engine.py `needs_approval`): the payout
is reserved like any other (its amount and fee are taken from the balance at once) but
written with `approval = "required"` and no settle job, so nothing sends it. Then exactly
one of these wins, each a guarded UPDATE (only a payout still reserved, still waiting and
not past its expiresAt):

    approve   approval → approved, who decided it, and its settle job, in one transaction;
              then it is sent as any payout is (reserved → in_flight → completed / error)
    reject    approval → rejected, who decided it; then the final transition reserved →
              failed (public status error, failureCode REJECTED_BY_APPROVER), reservation
              voided, through the engine's finalize
    expiry    not decided by expiresAt: payouts.expire_due voids it (expired), as it voids
              any payout never sent

Each decision is a row of the payout's history (GET /payouts/{id}/history): who, when
(`admin:<address>`, or an approver key's `approver:<key id> (<label>)`).

A claim link's payout (domain/claims.py) is held before any wallet can claim it: it has no
destination yet, so approving it writes no settle job; it makes the link claimable (the
claim writes the job, services/withdrawals.py). Rejecting it voids it as any held payout.

The approvals queue (`held_page`: GET /payouts?approval=required, the dashboard's
/dashboard/approvals) reads the payouts waiting, newest first, keyset-paginated on the
partial indexes ix_payouts_held / ix_payouts_held_all (migration 0019).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from sqlalchemy import insert, text, update
from sqlalchemy.engine import RowMapping

from payrail.bootstrap import Runtime, SimulatedCrash
from payrail.db.tables import HELD_PAYOUT, payout_events, payouts
from payrail.domain import claims, errors
from payrail.domain.payouts import PUBLIC_STATUS, FailureCode, State
from payrail.jobs import queue
from payrail.services import audit, pagination
from payrail.services import payouts as single

log = structlog.get_logger("payrail.approvals")
P = payouts.c
REQUIRED, APPROVED, REJECTED = "required", "approved", "rejected"
ACTOR_MAX_CHARS = 80


def parse_approval_filter(value: str | None, status: object, player_id: str | None) -> bool:
    """GET /payouts?approval=required: the approvals queue (True), or no such filter."""
    if value in (None, ""):
        return False
    if value != REQUIRED:
        raise errors.ValidationError("approval must be required.", field="approval")
    if status is not None or player_id is not None:
        raise errors.ValidationError(
            "approval=required lists the payouts waiting for an approver (all pending): "
            "give it without status or playerId.",
            field="approval",
        )
    return True


async def held_page(
    rt: Runtime, project_id: str | None, limit: int, cursor: str | None
) -> tuple[list[RowMapping], str | None]:
    """The payouts waiting for an approver, newest first, keyset on (created_at, id): the
    predicate is the partial indexes' own, so a page reads its rows and no others."""
    where = [text(HELD_PAYOUT)]
    if project_id is not None:
        where.append(P.project_id == project_id)
    return await pagination.newest_first(rt.engine, payouts, limit, cursor, *where)


async def _decide(
    rt: Runtime, payout_id: str, verdict: str, actor: str, now: int
) -> RowMapping | None:
    """The guarded UPDATE of a waiting payout, its history row and (approved, with a
    destination) its settle job, in one transaction. None: it was not waiting any more (or
    expired); else what it was (its destination kind)."""
    cause = audit.cause_text(f"approval: {verdict} by {actor}")
    async with rt.engine.begin() as conn:
        won = (
            (
                await conn.execute(
                    update(payouts)
                    .where(
                        P.id == payout_id,
                        P.state == State.RESERVED.value,
                        P.approval == REQUIRED,
                        P.expires_at > now,
                    )
                    .values(approval=verdict, decided_by=actor)
                    .returning(P.id, P.destination_kind)
                )
            )
            .mappings()
            .first()
        )
        if won is None:
            return None
        await conn.execute(
            insert(payout_events).values(
                payout_id=payout_id,
                from_status=State.RESERVED.value,
                to_status=State.RESERVED.value,
                cause=cause,
                at_ms=now,
            )
        )
        if verdict == APPROVED and not _is_claim_link(won):
            # this process sends it at once, holding the job's lease
            job = queue.job_row(
                single.settle_job_id(payout_id),
                single.SETTLE_JOB,
                {"payoutId": payout_id},
                now,
                max_attempts=single.SETTLE_ATTEMPTS_MAX,
                leased_by=rt.worker_id,
                lease_ms=rt.settings.lease_ms,
            )
            await conn.execute(insert(queue.jobs).values(**job))
    return won


def _is_claim_link(row: RowMapping) -> bool:
    """A claim link's payout: approved, it waits for a wallet's claim, not for a send."""
    return row["destination_kind"] == claims.DESTINATION_KIND


async def _refused(rt: Runtime, payout_id: str, verb: str) -> errors.PayrailError:
    row = await single.get_payout(rt, payout_id)
    status = PUBLIC_STATUS[State(row["state"])].value
    return errors.InvalidStatusTransition(
        f"Payout {payout_id} is not waiting for approval (status {status}, approval "
        f"{row['approval']}); it cannot be {verb}.",
        currentStatus=status,
        approval=row["approval"],
    )


async def approve(rt: Runtime, payout_id: str, actor: str) -> RowMapping:
    """Approve a held payout and send it; its row once final, or as it is when the settle
    wait ends (pending)."""
    actor = actor[:ACTOR_MAX_CHARS]
    won = await _decide(rt, payout_id, APPROVED, actor, rt.clock.now_ms())
    if won is None:
        raise await _refused(rt, payout_id, "approved")
    log.info("payout_approved", payout_id=payout_id, actor=actor)
    if _is_claim_link(won):  # its link is claimable now; the claim sends it
        return await single.get_payout(rt, payout_id)
    task = rt.spawn(single.settle_payout(rt, payout_id, job_leased=True))
    await asyncio.wait({task}, timeout=rt.settings.settle_wait_ms / 1000)
    if task.done() and isinstance(task.exception(), SimulatedCrash):
        raise task.exception()  # type: ignore[misc]
    return await single.get_payout(rt, payout_id)


async def reject(rt: Runtime, payout_id: str, actor: str) -> Any:
    """Reject a held payout: it ends in error (REJECTED_BY_APPROVER), its charge voided."""
    actor = actor[:ACTOR_MAX_CHARS]
    now = rt.clock.now_ms()
    if await _decide(rt, payout_id, REJECTED, actor, now) is None:
        raise await _refused(rt, payout_id, "rejected")
    final = await single.finalize(
        rt,
        payout_id,
        State.RESERVED,
        State.FAILED,
        now,
        charge=False,
        cause=f"approval: rejected by {actor}",
        failure_code=FailureCode.REJECTED_BY_APPROVER,
        failure_reason=f"rejected by an approver ({actor})",
    )
    log.info("payout_rejected", payout_id=payout_id, actor=actor, voided=final is not None)
    return final or await single.get_payout(rt, payout_id)
