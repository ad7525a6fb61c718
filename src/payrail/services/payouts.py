"""Payout use cases: create (reserve), settle (the saga), expire, sandbox status changes.

The saga, as docs/architecture.md draws it:

    create   tx1: idempotency → rate limit → payout row → settle job (leased) → reserve   COMMIT
             inline path: the row is written in_flight, so tx1 is also the send intent
             queue path:  the row is written reserved; the worker's settle records
                          reserved → in_flight (one autocommitted UPDATE) before sending
             node.pay(payout id)          no transaction is open during the call
             succeeded      tx2: post both transfers, completed, job done
             failed         tx2: void both transfers, failed, job done
             unknown        job rescheduled; node.status() is asked until it is definite
    recovery an in-flight payout whose lease ran out: node.status(payout id) first; the node
             has it → its answer; NOT_FOUND → resent, or expired if expiresAt has passed

A guarded UPDATE (`WHERE state = <expected>`) makes every transition happen at most once,
whoever races for it: the inline path, a worker that found an expired lease, or expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.bootstrap import Runtime, SimulatedCrash
from payrail.db import payout_store
from payrail.db.engine import single_statement
from payrail.db.tables import payouts
from payrail.domain import errors, payout_engine
from payrail.domain.flags import KNOWN_FLAGS, SETTLEMENT_QUEUE_PATH
from payrail.domain.money import fee_sats
from payrail.domain.payouts import (
    FINAL_STATES,
    PUBLIC_STATUS,
    FailureCode,
    PayoutRequest,
    State,
    Status,
    check_transition,
    states_for,
)
from payrail.jobs import queue
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.lightning.backend import (
    Destination,
    FailureReason,
    NodeStatus,
    PaymentResult,
    UnknownOutcome,
)
from payrail.services import (
    audit,
    callbacks,
    destinations,
    flags,
    pagination,
    quotes,
)
from payrail.support import metrics
from payrail.support.clock import iso
from payrail.support.grouping import Grouped
from payrail.support.ids import time_ordered_uuid

log = structlog.get_logger("payrail.payouts")
P = payouts.c

SETTLE_JOB = "settle_payout"
SETTLE_ATTEMPTS_MAX = 2_000  # with the 60 s backoff cap: more than a day of asking the node
REPLAY_POLL_MS = 20
# The settlement paths, chosen per project by the flag: the API process calls the node
# right after tx1 (inline, the old path), or a worker claims the settle job (queue, new).
PATH_INLINE = KNOWN_FLAGS[SETTLEMENT_QUEUE_PATH].old_path
PATH_QUEUE = KNOWN_FLAGS[SETTLEMENT_QUEUE_PATH].new_path
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100


def settle_job_id(payout_id: str) -> str:
    return f"settle:{payout_id}"


def transfer_ids(payout_id: str) -> list[str]:
    """The two linked pending transfers of a payout: the amount and the fee."""
    return [f"{payout_id}:amount", f"{payout_id}:fee"]


@dataclass(frozen=True)
class CreateOutcome:
    payout: RowMapping
    replay: bool


# ---------------------------------------------------------------- reads


async def load(conn: AsyncConnection, payout_id: str) -> RowMapping | None:
    return (await conn.execute(select(payouts).where(P.id == payout_id))).mappings().first()


async def get_payout(rt: Runtime, payout_id: str) -> RowMapping:
    async with rt.engine.connect() as conn:
        row = await load(conn, payout_id)
    if row is None:
        raise errors.PayoutNotFound(f"No payout with id {payout_id}.")
    return row


async def get_by_internal_id(rt: Runtime, project_id: str, internal_id: str) -> RowMapping:
    async with rt.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(payouts)
                    .where(P.project_id == project_id, P.internal_id == internal_id)
                    .order_by(P.created_at.desc())
                    .limit(1)
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise errors.PayoutNotFound(f"No payout with internalId {internal_id} in this project.")
    return row


async def history(rt: Runtime, payout_id: str) -> list[dict[str, Any]]:
    """Every transition of a payout, oldest first: internal state, public status, cause, time."""
    async with rt.engine.connect() as conn:
        events = await audit.payout_history(conn, payout_id)
    for event in events:
        event["fromStatus"] = PUBLIC_STATUS[State(event["from"])].value if event["from"] else None
        event["toStatus"] = PUBLIC_STATUS[State(event["to"])].value
    return events


async def list_payouts(
    rt: Runtime,
    project_id: str | None,
    status: Status | None,
    limit: int = LIST_LIMIT_DEFAULT,
    cursor: str | None = None,
    player_id: str | None = None,
) -> tuple[list[RowMapping], str | None]:
    """Newest first; the cursor is (created_at, id) so pages never skip or repeat a payout."""
    where = []
    if project_id is not None:
        where.append(P.project_id == project_id)
    if player_id is not None:
        where.append(P.player_id == player_id)
    if status is not None:
        where.append(P.state.in_([s.value for s in states_for(status)]))
    return await pagination.newest_first(rt.engine, payouts, limit, cursor, *where)


def view(row: RowMapping) -> dict[str, Any]:
    """The public payout object (docs/api.md) (camelCase, ISO 8601 UTC times)."""
    state = State(row["state"])
    return {
        "id": row["id"],
        "internalId": row["internal_id"],
        "gamertag": row["gamertag"],
        "amount": row["amount"],
        "fee": row["fee"],
        "totalCost": row["amount"] + row["fee"],
        "projectId": row["project_id"],
        "idempotencyKey": row["idempotency_key"],
        "description": row["description"],
        "callbackUrl": row["callback_url"],
        "status": PUBLIC_STATUS[state].value,
        "expiresIn": row["expires_in"],
        "expiresAt": iso(row["expires_at"]),
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
        "settledAt": iso(row["settled_at"]),
        "failureReason": row["failure_reason"],
        "playerId": row.get("player_id"),
        "approval": row.get("approval"),  # null, or required / approved / rejected
        "failureCode": row.get("failure_code"),
        "decidedBy": row.get("decided_by"),
        **destinations.view(row),
    }


# ---------------------------------------------------------------- create


async def _by_key(conn: AsyncConnection, project_id: str, key: str) -> RowMapping | None:
    return (
        (
            await conn.execute(
                select(payouts).where(P.project_id == project_id, P.idempotency_key == key)
            )
        )
        .mappings()
        .first()
    )


async def create_payout(rt: Runtime, req: PayoutRequest) -> CreateOutcome:
    """Reserve and settle a payout; answers a replay for a key already used in this project."""
    req = await quotes.price(rt, req)  # a quote's sats stand in for amount (or 404)
    # The flag decides the settlement path before anything is written (a cached read).
    path = await flags.path_for(rt, SETTLEMENT_QUEUE_PATH, req.project_id)
    gamertag = req.destination_kind == destinations.Kind.GAMERTAG
    recipient = payout_engine.recipient_key(req.gamertag) if gamertag else None
    earlier, directory = await rt.payout_store.lookup(
        req.project_id, req.idempotency_key, recipient
    )
    if earlier is not None:  # a replay answers without resolving (no second invoice fetched)
        return await replay_outcome(rt, earlier, req)
    # Where the money goes, invoice included: network calls, so before the reservation's tx.
    resolved = await destinations.resolve(rt, req, directory)
    row = payout_row(req, rt.clock.now_ms(), path, resolved)
    row["player_id"] = directory_player(req, directory)
    decision = await _reserve_one(rt, req, row, path)
    if isinstance(decision, payout_engine.Replay):
        return await replay_outcome(rt, decision.row, req)
    if isinstance(decision, payout_engine.Refuse):
        raise decision.error
    payout_id = str(row["id"])
    if decision is payout_engine.HOLD:  # reserved, waiting for an approver (services/approvals)
        log.info("payout_held", payout_id=payout_id, project_id=req.project_id)
        return CreateOutcome(await get_payout(rt, payout_id), replay=False)
    log.info("payout_reserved", payout_id=payout_id, project_id=req.project_id, path=path)
    metrics.PAYOUTS_CREATED.labels(path=path).inc()
    rt.crashpoint("after_reserve")
    if path == PATH_QUEUE:  # a worker claims the job at once; wait for its outcome
        return CreateOutcome(await _await_final(rt, payout_id), replay=False)
    send = Send.of(row)
    task = rt.spawn(settle_payout(rt, payout_id, job_leased=True, intent_recorded=send))
    await asyncio.wait({task}, timeout=rt.settings.settle_wait_ms / 1000)
    if task.done():
        if isinstance(task.exception(), SimulatedCrash):
            raise task.exception()  # type: ignore[misc]
        if task.exception() is None and task.result() is not None:
            return CreateOutcome(task.result(), replay=False)
    return CreateOutcome(await get_payout(rt, payout_id), replay=False)


async def reserve(rt: Runtime, req: PayoutRequest, path: str = PATH_INLINE) -> str:
    """tx1 alone (no settlement started): the new payout's id, or the refusal raised. For
    callers that settle it themselves (recovery tests, tools)."""
    req = await quotes.price(rt, req)
    row = payout_row(req, rt.clock.now_ms(), path)
    decision = await _reserve_one(rt, req, row, path)  # a hold is reserved too: its id
    if isinstance(decision, payout_engine.Refuse):
        raise decision.error
    if isinstance(decision, payout_engine.Replay):
        return str(decision.row["id"])
    return str(row["id"])


async def _reserve_one(
    rt: Runtime, req: PayoutRequest, row: dict[str, Any], path: str
) -> payout_engine.Decision:
    """tx1 of one payout through the engine, grouped with the process's concurrent ones.

    On the inline path the row is written in_flight: this commit is also the send intent, and
    this process, which holds the job's lease, calls the node right after it. The row carries
    the destination and its one invoice, durable before anything is sent."""
    entry = reservation_entry(rt, req, row, path, settle_job=True, may_hold=True)
    try:
        return await rt.reserving.submit(entry)  # type: ignore[no-any-return]
    except payout_store.DuplicateKey as duplicate:
        return await after_duplicate(rt, req, duplicate)


async def after_duplicate(
    rt: Runtime, req: PayoutRequest, duplicate: payout_store.DuplicateKey
) -> payout_engine.Decision:
    """A unique index saw a concurrent commit that the engine's read could not (another
    process's same-key request, another project's payout of the same invoice): nothing was
    written; the answer that commit makes right."""
    if duplicate.what == "payment_hash":
        return payout_engine.Refuse(payout_engine.invoice_used(None))
    if duplicate.what == "internal_id":
        return payout_engine.Refuse(payout_engine.internal_id_taken(req.internal_id or "", None))
    if duplicate.what == "quote_id":
        return payout_engine.Refuse(payout_engine.quote_used(req.quote_id or "", None))
    async with rt.engine.connect() as conn:
        earlier = await _by_key(conn, req.project_id, req.idempotency_key or "")
    if earlier is None:
        raise duplicate
    return payout_engine.Replay(earlier)


def wire(rt: Runtime) -> None:
    """The process's group commit of payout reservations and final transitions: calls that
    arrive while one is on its way share the next transaction (support/grouping.py). Two
    requests with one idempotency key never share one: the second replays the first."""
    rt.reserving = Grouped(
        lambda entries: rt.payout_store.reserve(entries, engine_limits(rt)), _group_key
    )
    rt.finalizing = Grouped(
        lambda finals: rt.payout_store.finalize(finals, final_writes), lambda f: f.payout_id
    )


def _group_key(entry: payout_store.Entry) -> Any:
    key = entry.item.idempotency_key
    return (entry.item.project_id, key) if key is not None else entry.payout_id


def engine_limits(rt: Runtime) -> payout_engine.Limits:
    """The server settings the engine's rules read."""
    s = rt.settings
    defaults = payout_engine.Policy(
        s.recipient_failures_max, s.recipient_failure_window_s, s.recipient_block_s
    )
    return payout_engine.Limits(rate_limit=s.rate_limit_per_hour, defaults=defaults)


def reservation_entry(
    rt: Runtime,
    req: PayoutRequest,
    row: dict[str, Any],
    path: str,
    *,
    settle_job: bool,
    may_hold: bool = False,
) -> payout_store.Entry:
    """What the engine decides on for one payout, and every row it writes if it reserves:
    the payout, its settle job (unless a batch's group job settles it), its created
    callback, its two pending transfers and their balance changes."""
    now = row["created_at"]
    writes = payout_store.Writes().insert("payouts", row)
    if settle_job:
        writes.insert("jobs", _settle_job(rt, row["id"], now, path))
    if row["callback_url"]:
        event, job = callbacks.event_rows(row, view(row), now, CREATED_EVENT_SEQUENCE)
        writes.insert("callbacks", event).insert("jobs", job)
    pending, deltas = ledger.pending_writes(payout_transfers(row), row["expires_at"], now)
    writes.insert("transfers", *pending)
    if req.quote_id is not None:  # the quote's one use, with the payout it paid
        writes.insert(
            "quote_uses", {"quote_id": req.quote_id, "payout_id": row["id"], "used_at": now}
        )
    ledger.add_deltas(writes.deltas, deltas)
    item = payout_engine.Item(
        project_id=req.project_id,
        recipient=payout_engine.recipient_key(req.gamertag),
        gamertag=req.gamertag,
        amount_sats=row["amount"],
        fee_sats=row["fee"],
        now_ms=now,
        idempotency_key=req.idempotency_key,
        payment_hash=row["payment_hash"],
        internal_id=req.internal_id,
        player_id=row.get("player_id"),
        quote_id=req.quote_id,
        quote_expires_at_ms=req.quote_expires_at_ms,
        may_hold=may_hold,
    )
    held = _held_writes(row, writes, pending, deltas) if may_hold else None
    return payout_store.Entry(item, row["id"], writes, tuple(sorted(deltas)), held)


HELD_CAUSE = "api: payout created; held for approval"


def _held_writes(
    row: dict[str, Any], writes: payout_store.Writes, pending: list[Any], deltas: Any
) -> payout_store.Writes:
    """What a payout held for approval writes (payout_engine.HOLD): its row reserved and
    waiting, its created callback and its reservation (as any payout), no settle job: only
    an approval gives it one (services/approvals.py)."""
    held_row = row | {
        "state": State.RESERVED.value,
        "approval": "required",
        "state_cause": HELD_CAUSE,
    }
    held = payout_store.Writes().insert("payouts", held_row)
    if row["callback_url"]:
        now = row["created_at"]
        event, job = callbacks.event_rows(held_row, view(held_row), now, CREATED_EVENT_SEQUENCE)
        held.insert("callbacks", event).insert("jobs", job)
    held.insert("transfers", *pending)
    for table in ("quote_uses",):
        if writes.inserts.get(table):
            held.insert(table, *writes.inserts[table])
    ledger.add_deltas(held.deltas, deltas)
    return held


# A payout's callback events: created in tx1, then one final event (a payout makes one final
# transition); the unique (payout_id, sequence) index backs that up.
CREATED_EVENT_SEQUENCE = 1
FINAL_EVENT_SEQUENCE = 2


def payout_row(
    req: PayoutRequest,
    now: int,
    path: str,
    resolved: destinations.Resolved | None = None,
) -> dict[str, Any]:
    """The payout row as tx1 inserts it: the one place its values are built (single, batch,
    claim link), its id included (time-ordered: support/ids.py)."""
    inline = path == PATH_INLINE
    return dict(
        id=time_ordered_uuid(),
        project_id=req.project_id,
        gamertag=req.gamertag,
        amount=req.amount_sats,
        fee=fee_sats(req.amount_sats),
        internal_id=req.internal_id,
        description=req.description,
        callback_url=req.callback_url,
        idempotency_key=req.idempotency_key,
        request_hash=req.fingerprint(),
        state=(State.IN_FLIGHT if inline else State.RESERVED).value,
        charge_posted=False,
        settled_at=None,
        failure_code=None,
        failure_reason=None,
        expires_in=req.expires_in_s,
        expires_at=now + req.expires_in_s * 1000,
        created_at=now,
        updated_at=now,
        settle_path=path,
        state_cause=CREATED_INLINE_CAUSE if inline else CREATED_QUEUED_CAUSE,  # audit trigger
        player_id=req.player_id,
        approval=None,
        decided_by=None,
        # Where the money goes, with its one invoice (services/destinations.py).
        **(resolved or destinations.sandbox_gamertag(req.gamertag)).columns(),
    )


def directory_player(req: PayoutRequest, directory: Any) -> str | None:
    """The payout's player: its own playerId, else its directory entry's (not part of the
    request's fingerprint: a retry with the same body is the same request)."""
    if req.player_id is not None or directory is None:
        return req.player_id
    return directory.get("player_id")


CREATED_INLINE_CAUSE = "api: payout created; sending to the node"
CREATED_QUEUED_CAUSE = "api: payout created"


def payout_transfers(row: Any) -> list[ledger.Transfer]:
    """The two linked pending transfers of a payout row: amount and fee, from its project."""
    account = acct.project_account(row["project_id"])
    amount_id, fee_id = transfer_ids(row["id"])
    return [
        ledger.Transfer(amount_id, account, acct.lightning_outbound(row["id"]), row["amount"]),
        ledger.Transfer(fee_id, account, acct.fees(row["id"]), row["fee"]),
    ]


def _settle_job(rt: Runtime, payout_id: str, now: int, path: str) -> dict[str, Any]:
    """The settle job's row, written in tx1."""
    return queue.job_row(
        settle_job_id(payout_id),
        SETTLE_JOB,
        {"payoutId": payout_id},
        now,
        max_attempts=SETTLE_ATTEMPTS_MAX,
        # Inline: this process holds the lease and settles right after COMMIT.
        leased_by=rt.worker_id if path == PATH_INLINE else None,
        lease_ms=rt.settings.lease_ms,
    )


def check_same_request(row: RowMapping, req: PayoutRequest) -> None:
    """A key reused with another body is refused (422), naming the payout it belongs to."""
    if row["request_hash"] != req.fingerprint():
        raise errors.IdempotencyKeyReused(
            "This idempotencyKey was already used with a different request body in this "
            "project. Use a new key for a new payout.",
            payoutId=row["id"],
        )


async def replay_outcome(rt: Runtime, row: RowMapping, req: PayoutRequest) -> CreateOutcome:
    """Same key, same body: the original payout (once final, within the wait window)."""
    check_same_request(row, req)
    return CreateOutcome(await _await_final(rt, row["id"], row), replay=True)


async def _await_final(rt: Runtime, payout_id: str, row: RowMapping | None = None) -> RowMapping:
    """The payout once final, or as it is when the settle wait window ends."""
    row = row or await get_payout(rt, payout_id)
    deadline = rt.clock.now_ms() + rt.settings.settle_wait_ms
    while State(row["state"]) not in FINAL_STATES and rt.clock.now_ms() < deadline:
        await asyncio.sleep(REPLAY_POLL_MS / 1000)
        row = await get_payout(rt, payout_id)
    return row


# ---------------------------------------------------------------- settle (the saga)


@dataclass(frozen=True)
class Send:
    """What the inline path sends right after tx1, which recorded the send intent."""

    destination: Destination
    amount_sats: int

    @classmethod
    def of(cls, row: Any) -> Send:
        """From the payout's row: its one destination (and invoice) and amount."""
        return cls(destinations.backend_destination(row), row["amount"])


async def settle_payout(
    rt: Runtime, payout_id: str, *, job_leased: bool = False, intent_recorded: Send | None = None
) -> RowMapping | None:
    """Drive one payout toward a final state; safe to run again at any point after a crash.

    intent_recorded: the caller's tx1 wrote the payout in_flight and holds its lease, so the
    node is called at once, with no read or write before it.
    Returns the payout's row when this call made it final, else None.
    """
    try:
        if intent_recorded is not None:
            return await _send(rt, payout_id, intent_recorded)
        return await _settle(rt, payout_id)
    except (SimulatedCrash, asyncio.CancelledError):
        raise
    except Exception as exc:  # the job row keeps the saga: hand it to the worker, with backoff
        log.warning("settle_error", payout_id=payout_id, error=type(exc).__name__)
        rt.note_error(exc)
        if not job_leased:
            raise
        async with rt.engine.begin() as conn:
            now = rt.clock.now_ms()
            await queue.reschedule(
                conn, settle_job_id(payout_id), now + queue.backoff_ms(1), now, repr(exc)
            )
        return None


async def _settle(rt: Runtime, payout_id: str) -> RowMapping | None:
    now = rt.clock.now_ms()
    # The common case first, with no read before it: record the send intent of a payout
    # that is reserved and not yet expired. One guarded UPDATE (its audit row is written by
    # the trigger in the same statement), so it needs no transaction around it.
    async with single_statement(rt.engine) as conn:
        sending = await _transition(
            conn,
            payout_id,
            State.RESERVED,
            State.IN_FLIGHT,
            now,
            unexpired_at=now,
            cause="saga: sent to the node",
        )
    if sending is not None:
        return await _send(rt, payout_id, Send.of(sending))
    row = await get_payout(rt, payout_id)
    state = State(row["state"])
    if state in FINAL_STATES:
        async with rt.engine.begin() as conn:
            await queue.complete(conn, settle_job_id(payout_id), rt.clock.now_ms())
        return None
    if state == State.RESERVED:  # not sent before expires_at: release it, never send late
        await _expire_if_reserved(rt, payout_id, "saga: not sent before expiresAt")
        return None
    else:
        # In flight after a crash or an unknown outcome: ask before sending again.
        destination = destinations.backend_destination(row)  # the row's one invoice, again
        result = await _node_call(rt, "status", rt.node.status(payout_id, destination))
        if result is not None and result.status == NodeStatus.NOT_FOUND:
            if row["expires_at"] <= rt.clock.now_ms():  # never had it, and too late to send
                await _expire_unsent(rt, payout_id)
                return None
            resend = rt.node.pay(payout_id, destination, row["amount"])
            result = await _node_call(rt, "pay", resend)
    rt.crashpoint("after_node_call")
    return await _apply_outcome(rt, payout_id, result)


async def _send(rt: Runtime, payout_id: str, send: Send) -> RowMapping | None:
    """The send intent is committed: call the node, then record its answer."""
    rt.crashpoint("after_mark_in_flight")
    result = await node_pay(rt, payout_id, send)
    rt.crashpoint("after_node_call")
    return await _apply_outcome(rt, payout_id, result)


async def _expire_unsent(rt: Runtime, payout_id: str) -> None:
    """In flight, but the node says it never had the payment and expiresAt has passed."""
    now = rt.clock.now_ms()
    final = await finalize(
        rt,
        payout_id,
        State.IN_FLIGHT,
        State.EXPIRED,
        now,
        charge=False,
        cause="saga: the node never had it; expiresAt passed",
        node_confirmed_unsent=True,
    )
    _observe_final(final, now)


async def _node_call(rt: Runtime, operation: str, call: Any) -> PaymentResult | None:
    """Bound the node call; None means the outcome is unknown (never a failure)."""
    result, seconds = await _bounded_node_call(rt, operation, call)
    _count_node_calls(operation, [(result, seconds)])
    return result


async def _bounded_node_call(
    rt: Runtime, operation: str, call: Any
) -> tuple[PaymentResult | None, float]:
    """The node call within node_timeout_ms, and how long it took; not counted yet."""
    started = time.perf_counter()
    result: PaymentResult | None
    try:
        async with asyncio.timeout(rt.settings.node_timeout_ms / 1000):  # no task of its own
            result = await call
    except (TimeoutError, UnknownOutcome, OSError) as exc:
        log.info("node_outcome_unknown", operation=operation, error=type(exc).__name__)
        result = None
    return result, time.perf_counter() - started


def _count_node_calls(operation: str, calls: Sequence[tuple[PaymentResult | None, float]]) -> None:
    """The node-call metrics of these calls: one write per label set, not per call."""
    metrics.observe_many(
        metrics.NODE_CALL_SECONDS.labels(operation=operation), [s for _, s in calls]
    )
    for outcome, count in Counter(_node_outcome(result) for result, _ in calls).items():
        metrics.NODE_CALLS.labels(operation=operation, outcome=outcome).inc(count)


def _node_outcome(result: PaymentResult | None) -> str:
    if result is None:
        return "ambiguous"
    if result.status == NodeStatus.FAILED:
        return "timeout" if result.failure_reason == FailureReason.TIMEOUT else "failure"
    return {NodeStatus.SUCCEEDED: "success", NodeStatus.IN_FLIGHT: "in_flight"}.get(
        result.status, "not_found"
    )


def _observe_final(final: RowMapping | None, now: int) -> None:
    """Count a final transition once it has committed (the winner of the guarded UPDATE)."""
    if final is not None:
        _observe_finals([final], now)


def _observe_finals(finals: Sequence[Any], now: int) -> None:
    """_observe_final of many: one metrics write per label set, not per payout."""
    counted: Counter[tuple[str, str, str]] = Counter()
    seconds: dict[str, list[float]] = {}
    for final in finals:
        status = PUBLIC_STATUS[State(final["state"])].value
        reason = metrics.reason_label(final["failure_reason"], status)
        counted[(status, reason, final["settle_path"] or "inline")] += 1
        seconds.setdefault(status, []).append(max(0, now - final["created_at"]) / 1000)
    for (status, reason, path), count in counted.items():
        metrics.PAYOUTS_FINAL.labels(status=status, reason=reason, path=path).inc(count)
    for status, values in seconds.items():
        metrics.observe_many(metrics.SETTLEMENT_SECONDS.labels(status=status), values)


async def _apply_outcome(
    rt: Runtime, payout_id: str, result: PaymentResult | None
) -> RowMapping | None:
    now = rt.clock.now_ms()
    if result is None or result.status in (NodeStatus.IN_FLIGHT, NodeStatus.NOT_FOUND):
        async with rt.engine.begin() as conn:
            attempts = await conn.scalar(
                select(queue.J.attempts).where(queue.J.id == settle_job_id(payout_id))
            )
            await queue.reschedule(
                conn,
                settle_job_id(payout_id),
                now + queue.backoff_ms(attempts or 1),
                now,
                "node outcome unknown; will ask the node again",
            )
        return None
    legacy_charge = False
    if result.status == NodeStatus.FAILED and result.failure_reason == FailureReason.TIMEOUT:
        legacy_charge = rt.settings.sandbox and not (await rt.faults.get()).rollbackOnTimeout
    # The guarded update refuses if another actor already finalised it.
    if result.status == NodeStatus.SUCCEEDED:
        final = await finalize(
            rt,
            payout_id,
            State.IN_FLIGHT,
            State.COMPLETED,
            now,
            charge=True,
            cause="node: payment succeeded",
        )
    else:
        code = (
            FailureCode.GATEWAY_TIMEOUT
            if result.failure_reason == FailureReason.TIMEOUT
            else FailureCode.PAYMENT_FAILED
        )
        final = await finalize(
            rt,
            payout_id,
            State.IN_FLIGHT,
            State.FAILED,
            now,
            charge=legacy_charge,
            cause=f"node: payment failed ({result.failure_reason or 'failed'})",
            failure_code=code,
            failure_reason=f"node: {result.failure_reason or 'failed'}",
        )
    _observe_final(final, now)
    log.info("payout_final", payout_id=payout_id, node_status=result.status.value)
    return final


async def apply_outcomes(
    rt: Runtime, results: Sequence[tuple[str, PaymentResult | None]]
) -> dict[str, RowMapping]:
    """`_apply_outcome` for many in-flight payouts of one project (a batch): every definite
    answer is recorded in ONE transaction, a set of payouts per outcome. An unknown answer is
    left as it is: the caller hands each payout not made final to its own settle job
    (services/batches.py, hand_off). Returns the rows made final."""
    now = rt.clock.now_ms()
    groups: dict[tuple[State, bool, FailureCode | None, str | None], list[str]] = {}
    legacy_charge: bool | None = None
    for payout_id, result in results:
        if result is None or result.status in (NodeStatus.IN_FLIGHT, NodeStatus.NOT_FOUND):
            continue
        if result.status == NodeStatus.SUCCEEDED:
            groups.setdefault((State.COMPLETED, True, None, None), []).append(payout_id)
            continue
        timeout = result.failure_reason == FailureReason.TIMEOUT
        if timeout and legacy_charge is None:
            legacy_charge = rt.settings.sandbox and not (await rt.faults.get()).rollbackOnTimeout
        code = FailureCode.GATEWAY_TIMEOUT if timeout else FailureCode.PAYMENT_FAILED
        key = (State.FAILED, bool(timeout and legacy_charge), code, result.failure_reason)
        groups.setdefault(key, []).append(payout_id)
    entries = [
        final_entry(
            payout_id,
            State.IN_FLIGHT,
            target,
            now,
            charge=charge,
            cause=(
                "node: payment succeeded"
                if target == State.COMPLETED
                else f"node: payment failed ({reason or 'failed'})"
            ),
            failure_code=code,
            failure_reason=None if code is None else f"node: {reason or 'failed'}",
        )
        for (target, charge, code, reason), ids in groups.items()
        for payout_id in ids
    ]
    if not entries:
        return {}
    rows = await rt.payout_store.finalize(entries, final_writes)  # one transaction for all
    finals = {row["id"]: row for row in rows if row is not None}
    _observe_finals(list(finals.values()), now)
    return finals


async def node_pay(rt: Runtime, payout_id: str, send: Send) -> PaymentResult | None:
    """One bounded pay call for a payout whose send intent is committed."""
    return await _node_call(rt, "pay", rt.node.pay(payout_id, send.destination, send.amount_sats))


async def node_pay_many(
    rt: Runtime, sends: Sequence[tuple[str, Send]], concurrency: int
) -> list[tuple[str, PaymentResult | None]]:
    """node_pay for many payouts (a batch's group), at most `concurrency` calls at once;
    counted in the metrics together once all have answered."""
    limit = asyncio.Semaphore(concurrency)

    async def pay(payout_id: str, send: Send) -> tuple[PaymentResult | None, float]:
        async with limit:
            call = rt.node.pay(payout_id, send.destination, send.amount_sats)
            return await _bounded_node_call(rt, "pay", call)

    calls = await asyncio.gather(*(pay(payout_id, send) for payout_id, send in sends))
    _count_node_calls("pay", calls)
    return [(payout_id, result) for (payout_id, _), (result, _) in zip(sends, calls, strict=True)]


async def _transition(
    conn: AsyncConnection,
    payout_id: str,
    current: State,
    target: State,
    now: int,
    *,
    cause: str,
    unexpired_at: int | None = None,
    node_confirmed_unsent: bool = False,
    **values: Any,
) -> RowMapping | None:
    """The guarded state change: legal by the table, and only from `current`; audited.

    Returns the updated row, or None when the payout was not in `current` (someone else won).
    With unexpired_at, only a payout whose expires_at is later than it changes.
    One statement: the database's audit trigger writes the payout_events row from the cause
    set here, only when the state really changed (migration 0005).
    """
    check_transition(current, target, node_confirmed_unsent=node_confirmed_unsent)
    statement, params = _TRANSITION, {"b_id": payout_id, "b_from": current.value}
    if unexpired_at is not None:
        statement, params["b_unexpired_at"] = _TRANSITION_UNEXPIRED, unexpired_at
    result = await conn.execute(
        statement,
        params
        | {"state": target.value, "updated_at": now, "state_cause": audit.cause_text(cause)}
        | values,
    )
    return result.mappings().first()


# Built once: the hot statements carry their values as execute parameters (the SET columns
# are the parameter keys), so no per-call expression building or cache-key walk.
_TRANSITION = (
    update(payouts)
    .where(P.id == bindparam("b_id"), P.state == bindparam("b_from"))
    .returning(*payouts.c)
)
_TRANSITION_UNEXPIRED = _TRANSITION.where(P.expires_at > bindparam("b_unexpired_at"))


def _final_values(
    target: State,
    now: int,
    charge: bool,
    failure_code: FailureCode | None,
    failure_reason: str | None,
) -> dict[str, Any]:
    """The columns a final transition sets besides the state (one payout or many)."""
    assert target in FINAL_STATES
    values: dict[str, Any] = {"charge_posted": charge}
    if target == State.COMPLETED:
        values["settled_at"] = now
    if failure_code is not None:
        values["failure_code"] = failure_code.value
        values["failure_reason"] = failure_reason
    return values


def final_entry(
    payout_id: str,
    current: State,
    target: State,
    now: int,
    *,
    charge: bool,
    cause: str,
    failure_code: FailureCode | None = None,
    failure_reason: str | None = None,
    node_confirmed_unsent: bool = False,
) -> payout_store.Final:
    """One payout's final transition for the engine: legal by the table (else 409 now)."""
    check_transition(current, target, node_confirmed_unsent=node_confirmed_unsent)
    values = _final_values(target, now, charge, failure_code, failure_reason)
    shards = (acct.fees(payout_id), acct.lightning_outbound(payout_id))
    return payout_store.Final(
        payout_id, current.value, target.value, now, audit.cause_text(cause), values, shards
    )


def final_writes(row: dict[str, Any], f: payout_store.Final) -> payout_store.Writes:
    """What a payout's final row writes besides itself, in the same transaction: its settle
    job done, its two pending transfers posted (charged) or voided, its final callback."""
    assert row["state"] == f.target and bool(row["charge_posted"]) == bool(
        f.values["charge_posted"]
    )
    rows, deltas = ledger.resolution_writes(
        payout_transfers(row), bool(f.values["charge_posted"]), f.now_ms
    )
    writes = payout_store.Writes(deltas=deltas, jobs_done=[settle_job_id(row["id"])])
    writes.insert("transfers", *rows)
    if row["callback_url"]:
        event, job = callbacks.event_rows(row, view(row), f.now_ms, FINAL_EVENT_SEQUENCE)
        writes.insert("callbacks", event).insert("jobs", job)
    return writes


async def finalize(
    rt: Runtime,
    payout_id: str,
    current: State,
    target: State,
    now: int,
    *,
    charge: bool,
    cause: str,
    failure_code: FailureCode | None = None,
    failure_reason: str | None = None,
    node_confirmed_unsent: bool = False,
) -> dict[str, Any] | None:
    """tx2 through the engine, grouped with the process's concurrent ones: the payout's new
    row, or None if it was no longer in `current` (someone else won)."""
    entry = final_entry(
        payout_id,
        current,
        target,
        now,
        charge=charge,
        cause=cause,
        failure_code=failure_code,
        failure_reason=failure_reason,
        node_confirmed_unsent=node_confirmed_unsent,
    )
    return await rt.finalizing.submit(entry)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- expiry and sandbox changes


async def _expire_if_reserved(rt: Runtime, payout_id: str, cause: str) -> bool:
    now = rt.clock.now_ms()
    final = await finalize(
        rt, payout_id, State.RESERVED, State.EXPIRED, now, charge=False, cause=cause
    )
    _observe_final(final, now)
    if final is not None:
        log.info("payout_expired", payout_id=payout_id)
    return final is not None


async def expire_due(rt: Runtime, batch_max: int = 100) -> int:
    """Expire reserved payouts that were never sent before expires_at. Returns how many."""
    async with rt.engine.connect() as conn:
        due = list(
            (
                await conn.execute(
                    select(P.id)
                    .where(P.state == State.RESERVED.value, P.expires_at <= rt.clock.now_ms())
                    .limit(batch_max)
                )
            ).scalars()
        )
    expired = 0
    for payout_id in due:
        expired += await _expire_if_reserved(rt, payout_id, "expiry: expiresAt passed")
    return expired


async def expire_now(rt: Runtime, payout_id: str) -> RowMapping:
    """Sandbox: expire a pending payout now. Only a never-sent one can expire (it may be paid)."""
    row = await get_payout(rt, payout_id)
    check_transition(State(row["state"]), State.EXPIRED)
    if not await _expire_if_reserved(rt, payout_id, "sandbox: POST /test/expire"):
        row = await get_payout(rt, payout_id)
        check_transition(State(row["state"]), State.EXPIRED)
    return await get_payout(rt, payout_id)


SANDBOX_STATUS_CAUSE = "sandbox: PATCH /payouts/{id}/status"

_TARGET_STATE = {
    Status.COMPLETED: State.COMPLETED,
    Status.ERROR: State.FAILED,
    Status.EXPIRED: State.EXPIRED,
    Status.PENDING: State.RESERVED,
}


async def set_status(rt: Runtime, payout_id: str, status: Status) -> RowMapping:
    """Sandbox: move a payout through the real state machine (illegal → 409).

    Only the Lightning node's answer may end a payout that was sent: an in-flight payout
    voided here could still be paid by the node (paid, not charged), and a reserved one
    completed here was never paid at all (charged, not paid). So the endpoint can only end
    a payout that was never sent, and only without a charge: error or expired.
    """
    row = await get_payout(rt, payout_id)
    current = State(row["state"])
    if PUBLIC_STATUS[current] == status:
        return row
    target = _TARGET_STATE[status]
    if current == State.IN_FLIGHT:
        raise errors.InvalidStatusTransition(
            "The payout is in flight: the Lightning node may pay it, so only the node's answer "
            "can end it. Wait for it (GET /payouts/{id}), or set failure injection before "
            "creating the next payout.",
            currentStatus=str(PUBLIC_STATUS[current]),
        )
    if current == State.RESERVED and target == State.COMPLETED:
        raise errors.InvalidStatusTransition(
            "The payout was never sent to the Lightning node, so it cannot be completed "
            "without a node payment. Let the settle job send it, or set it to error or expired.",
            currentStatus=str(PUBLIC_STATUS[current]),
        )
    check_transition(current, target)  # 409 before anything is written
    now = rt.clock.now_ms()
    final = await finalize(
        rt,
        payout_id,
        current,
        target,
        now,
        charge=False,
        cause=SANDBOX_STATUS_CAUSE,
        failure_code=FailureCode.PAYMENT_FAILED if target == State.FAILED else None,
        failure_reason="set by the sandbox status endpoint" if target == State.FAILED else None,
    )
    if final is None:
        raise errors.InvalidStatusTransition("The payout changed meanwhile; retry.")
    _observe_final(final, now)
    return final
