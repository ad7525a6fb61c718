"""Batch payouts: many payouts of one project in one request, each its own payout.

Each item is what a single POST /payouts would be (own id, fee, idempotency key, rate limit,
callbacks) and is answered as that call would have been. What the batch shares is the cost:

- reservations: items are reserved in groups of RESERVE_GROUP_MAX per transaction, each group
  one call of the payout engine (db/payout_store `reserve`, domain/payout_engine.py `decide`):
  the same rules, in the same order, as a single payout, each item decided as if it had
  arrived alone after the ones before it. An item refused (rate limit, balance, a used key,
  invoice or internal id) writes nothing. A group holds its project's account row from its
  load to its COMMIT, so a single payout of the same project waits for it.
- settlement: the node is called for every reserved item concurrently, at most
  SETTLE_CONCURRENCY_MAX at a time, and the definite answers are recorded in one transaction.
- recovery: a group reserved for inline settlement has ONE job (SETTLE_GROUP_JOB), written in
  its reservation and leased by the process that settles it, where a single payout has one
  job each. When the group's answers are recorded, the payouts not made final (an unknown
  answer, a lost race) get a settle job each and the group job is done, in one transaction
  (hand_off). If the process dies first, the lease runs out and the worker's claim of the
  group job does the same hand-off: from there each payout is a single payout's saga (ask
  the node by payment id before anything is sent again). Per item that saves a job row
  written and updated, and its index entries.
- idempotency: items without their own key get `<batch key>#<index>`, and the batch's answers
  are stored under its key once every item has one, so a replay answers the same items (a
  refusal stays a refusal even if funds arrived since; a payout is answered as it is now).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from payrail.bootstrap import Runtime, SimulatedCrash
from payrail.db import payout_store
from payrail.db.bulk import InList
from payrail.db.tables import payout_batches, payouts, projects
from payrail.domain import errors, payout_engine
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH
from payrail.domain.payouts import FINAL_STATES, PayoutRequest, State
from payrail.domain.recipients import gamertag_key
from payrail.jobs import queue
from payrail.services import destinations, flags, quotes, recipients
from payrail.services import payouts as single
from payrail.support import metrics

log = structlog.get_logger("payrail.batches")
P = payouts.c
B = payout_batches.c

BATCH_ITEMS_MAX = 1_000
RESERVE_GROUP_MAX = 250  # items per shared reservation transaction (module docstring)
SETTLE_GROUP_JOB = "settle_payout_group"  # a group's settlement until its hand-off
GROUP_JOB_ATTEMPTS_MAX = 25
SETTLE_CONCURRENCY_MAX = 100  # node calls in flight at once per group of a batch
FINAL_POLL_MS = 20
# The refusals an item can get, by code: a replay rebuilds them from the stored answers.
ITEM_ERRORS: dict[str, type[errors.PayrailError]] = {
    cls.code: cls
    for cls in (
        errors.ValidationError,
        errors.InvalidAmount,
        errors.DescriptionTooLong,
        errors.InvalidCallbackUrl,
        errors.RateLimitExceeded,
        errors.InsufficientBalance,
        errors.IdempotencyKeyReused,
        errors.RecipientTemporarilyBlocked,
        errors.RecipientNotFound,
        errors.RecipientSuspended,
        errors.InvalidInvoice,
        errors.RecipientUnreachable,
        errors.RecipientInvoiceInvalid,
        errors.DestinationUnsupported,
        errors.InvoiceAlreadyUsed,
        errors.InternalIdTaken,
        errors.PayoutLimitExceeded,
        errors.PlayerDailyLimit,
        errors.ProjectDailyLimit,
        errors.QuoteNotFound,
        errors.QuoteExpired,
        errors.QuoteUsed,
    )
}


@dataclass
class ItemAnswer:
    """One item: its payout (created, or replayed by its key), or the refusal."""

    payout: RowMapping | None = None
    replay: bool = False
    error: errors.PayrailError | None = None


@dataclass
class BatchAnswer:
    items: list[ItemAnswer]
    replay: bool


def item_key(batch_key: str, index: int, own_key: str | None) -> str:
    """The idempotency key of an item: its own, or one derived from the batch's."""
    return own_key if own_key is not None else f"{batch_key}#{index}"


def fingerprint(items: Sequence[PayoutRequest | errors.PayrailError]) -> str:
    """The batch body's hash: a reused batch key with another body is refused."""
    parts = [
        item.fingerprint() + (item.idempotency_key or "")
        if isinstance(item, PayoutRequest)
        else f"{item.code}:{item.message}"
        for item in items
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


async def create_batch(
    rt: Runtime,
    project_id: str,
    batch_key: str,
    items: Sequence[PayoutRequest | errors.PayrailError],
) -> BatchAnswer:
    """Reserve and settle every valid item; answer each. Items carry their final keys."""
    assert 1 <= len(items) <= BATCH_ITEMS_MAX
    items = await quotes.price_many(rt, items)  # a quote's sats stand in for amount
    request_hash = fingerprint(items)
    stored = await _stored(rt, project_id, batch_key)
    if stored is not None:
        return await _replay_batch(rt, stored, request_hash)
    async with rt.engine.connect() as conn:
        if await conn.scalar(select(projects.c.id).where(projects.c.id == project_id)) is None:
            raise errors.ProjectNotFound(f"No project with id {project_id}.")
    answers: list[ItemAnswer] = [
        ItemAnswer(error=item) if isinstance(item, errors.PayrailError) else ItemAnswer()
        for item in items
    ]
    path = await flags.path_for(rt, SETTLEMENT_QUEUE_PATH, project_id)
    valid = [(i, item) for i, item in enumerate(items) if isinstance(item, PayoutRequest)]
    # Where each item's money goes (directory, invoice): network calls, so before any tx.
    resolved: dict[int, destinations.Resolved] = {}
    players: dict[int, str | None] = {}
    directory = await recipients.find_many(
        rt, project_id, [r.gamertag for _, r in valid if r.destination_kind == "gamertag"]
    )
    for index, req in valid:
        entry = directory.get(gamertag_key(req.gamertag))
        players[index] = single.directory_player(req, entry)
        try:
            resolved[index] = await destinations.resolve(rt, req, entry)
        except tuple(ITEM_ERRORS.values()) as refusal:
            answers[index] = ItemAnswer(error=refusal)
    valid = [(i, req) for i, req in valid if i in resolved]
    created: list[tuple[int, dict[str, Any]]] = []
    settling: set[asyncio.Task[None]] = set()
    for start in range(0, len(valid), RESERVE_GROUP_MAX):
        group = valid[start : start + RESERVE_GROUP_MAX]
        try:
            reserved = await _reserve_group(rt, group, answers, path, resolved, players)
        except payout_store.DuplicateKey:
            # A concurrent request took one of these keys first: this group one item at a time.
            for index, req in group:
                answers[index] = await _one_by_one(rt, req)
            continue
        created += reserved
        if reserved and path == single.PATH_INLINE:  # its node calls overlap the next group
            settling.add(rt.spawn(_settle_group(rt, [row for _, row in reserved])))
    for index, answer in enumerate(answers):
        if answer.replay and answer.payout is not None:
            req = items[index]
            assert isinstance(req, PayoutRequest)
            try:  # answered as it is now: a batch does not wait on an earlier request's payout
                single.check_same_request(answer.payout, req)
            except errors.IdempotencyKeyReused as refusal:
                answers[index] = ItemAnswer(error=refusal)
    finals = await _settle(rt, [row["id"] for _, row in created], settling)
    for index, row in created:
        answers[index] = ItemAnswer(payout=finals[row["id"]])
    replayed = [a.payout["id"] for a in answers if a.replay and a.payout is not None]
    if replayed:  # answered as they are now, not as the lookup inside tx1 saw them
        now_rows = await _load_many(rt, replayed)
        for answer in answers:
            if answer.replay and answer.payout is not None:
                answer.payout = now_rows[answer.payout["id"]]
    await _store(rt, project_id, batch_key, request_hash, answers)
    log.info("payout_batch", project_id=project_id, items=len(items), created=len(created))
    return BatchAnswer(answers, replay=False)


def _as_item(outcome: single.CreateOutcome) -> ItemAnswer:
    return ItemAnswer(payout=outcome.payout, replay=outcome.replay)


async def _one_by_one(rt: Runtime, req: PayoutRequest) -> ItemAnswer:
    """The single payout's whole path, for an item whose group lost a key race."""
    try:
        return _as_item(await single.create_payout(rt, req))
    except tuple(ITEM_ERRORS.values()) as refusal:
        return ItemAnswer(error=refusal)


async def _reserve_group(
    rt: Runtime,
    group: list[tuple[int, PayoutRequest]],
    answers: list[ItemAnswer],
    path: str,
    resolved: dict[int, destinations.Resolved],
    players: dict[int, str | None] | None = None,
) -> list[tuple[int, dict[str, Any]]]:
    """One transaction of the payout engine for a group of items, decided in order as each
    would be alone (services/payouts.py reservation_entry, domain/payout_engine.py). Returns
    (index, payout row) of those reserved; refusals and replays are written into `answers`."""
    now = rt.clock.now_ms()
    inline = path == single.PATH_INLINE
    rows = {}
    entries = []
    for index, req in group:
        row = single.payout_row(req, now, path, resolved[index])
        row["player_id"] = (players or {}).get(index, req.player_id)
        rows[row["id"]] = row
        entries.append(
            single.reservation_entry(rt, req, row, path, settle_job=not inline, may_hold=True)
        )
    extra = functools.partial(_group_job, rt, now) if inline else None
    decisions = await rt.payout_store.reserve(entries, single.engine_limits(rt), extra)
    reserved: list[tuple[int, dict[str, Any]]] = []
    for (index, _), entry, decision in zip(group, entries, decisions, strict=True):
        if decision is payout_engine.RESERVE:
            reserved.append((index, rows[entry.payout_id]))
        elif decision is payout_engine.HOLD:  # reserved, not sent: it waits for an approver
            assert entry.held is not None
            answers[index] = ItemAnswer(payout=entry.held.inserts["payouts"][0])
        elif isinstance(decision, payout_engine.Replay):
            # A key reused within the batch replays the item reserved before it.
            earlier = rows.get(decision.row["id"], decision.row)
            answers[index] = ItemAnswer(payout=earlier, replay=True)
        else:
            answers[index] = ItemAnswer(error=decision.error)
    metrics.PAYOUTS_CREATED.labels(path=path).inc(len(reserved))
    return reserved


def _group_job(rt: Runtime, now: int, reserved: list[payout_store.Entry]) -> payout_store.Writes:
    """A group reserved for inline settlement has one job, leased by this process, which
    settles it now (module docstring)."""
    ids = [e.payout_id for e in reserved]
    job = queue.job_row(
        group_job_id(ids[0]),
        SETTLE_GROUP_JOB,
        {"payoutIds": ids},
        now,
        max_attempts=GROUP_JOB_ATTEMPTS_MAX,
        leased_by=rt.worker_id,
        lease_ms=group_lease_ms(rt, len(ids)),
    )
    return payout_store.Writes().insert("jobs", job)


async def _settle(
    rt: Runtime, ids: list[str], settling: set[asyncio.Task[None]]
) -> dict[str, RowMapping]:
    """Every created payout as it is once final, or when the settle wait ends."""
    if not ids:
        return {}
    if settling:
        await asyncio.wait(settling, timeout=rt.settings.settle_wait_ms / 1000)
        for task in settling:
            if task.done() and not task.cancelled():
                exc = task.exception()
                if isinstance(exc, SimulatedCrash):  # the process "died" there
                    raise exc
    return await _await_finals(rt, ids)


async def _settle_group(rt: Runtime, rows: list[dict[str, Any]]) -> None:
    """The node calls of a group concurrently (bounded), then every definite answer recorded
    in one transaction, then the rest handed off. Their send intents are committed and their
    group job leased by us."""
    rt.crashpoint("after_mark_in_flight")
    sends = [(row["id"], single.Send.of(row)) for row in rows]
    results = await single.node_pay_many(rt, sends, SETTLE_CONCURRENCY_MAX)
    rt.crashpoint("after_node_call")
    ids = [row["id"] for row in rows]
    try:
        finals = await single.apply_outcomes(rt, results)
    except Exception as exc:  # e.g. a lock timeout: each payout's own saga takes over
        log.warning("batch_settle_error", error=type(exc).__name__, payouts=len(rows))
        rt.note_error(exc)
        finals = {}
    # An unknown answer is asked about again after the first retry's backoff, as a single
    # payout's is.
    delay_ms = queue.backoff_ms(1)
    await hand_off(rt, group_job_id(ids[0]), [i for i in ids if i not in finals], delay_ms)


def group_lease_ms(rt: Runtime, payouts_in_group: int) -> int:
    """The group job's lease: a payout's, plus one node timeout for each further wave of
    SETTLE_CONCURRENCY_MAX calls, so a slow node does not let it run out while the group's
    own calls are still bounded and under way (each call ends within node_timeout_ms)."""
    waves = -(-payouts_in_group // SETTLE_CONCURRENCY_MAX)
    return rt.settings.lease_ms + rt.settings.node_timeout_ms * max(0, waves - 1)


def group_job_id(first_payout_id: str) -> str:
    """The group job's id, from its first payout's (a new uuid per group)."""
    return f"settle-group:{first_payout_id}"


async def hand_off(rt: Runtime, job_id: str, payout_ids: list[str], delay_ms: int = 0) -> int:
    """Each of payout_ids not final yet gets its own settle job (kept if it has one), due in
    delay_ms, and the group job is done, in one transaction. How many were handed off."""
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        still_open: list[str] = []
        if payout_ids:
            found = await conn.execute(_OPEN_AMONG, {"b_ids": payout_ids})
            still_open = sorted(found.scalars())
        if still_open:
            await queue.enqueue_many(
                conn,
                single.SETTLE_JOB,
                [(single.settle_job_id(i), {"payoutId": i}) for i in still_open],
                now,
                run_at_ms=now + delay_ms,
                max_attempts=single.SETTLE_ATTEMPTS_MAX,
                skip_existing=True,
            )
        await queue.complete(conn, job_id, now)
    if still_open:
        log.info("payout_group_handed_off", job_id=job_id, payouts=len(still_open))
    return len(still_open)


async def recover_group(rt: Runtime, job: queue.Job) -> None:
    """The worker's handler of a group job whose lease ran out (its process died)."""
    await hand_off(rt, job.id, list(job.payload["payoutIds"]))


async def _await_finals(rt: Runtime, ids: list[str]) -> dict[str, RowMapping]:
    deadline = rt.clock.now_ms() + rt.settings.settle_wait_ms
    while True:
        rows = await _load_many(rt, ids)
        done = all(State(r["state"]) in FINAL_STATES for r in rows.values())
        if done or rt.clock.now_ms() >= deadline:
            return rows
        await asyncio.sleep(FINAL_POLL_MS / 1000)


async def _load_many(rt: Runtime, ids: list[str]) -> dict[str, RowMapping]:
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(_BY_IDS, {"b_ids": ids})).mappings().all()
    return {r["id"]: r for r in rows}


_BY_IDS = select(payouts).where(InList(P.id, "b_ids"))
_OPEN_AMONG = select(P.id).where(
    InList(P.id, "b_ids"), P.state.not_in(sorted(s.value for s in FINAL_STATES))
)


# ---------------------------------------------------------------- the stored answers


async def _stored(rt: Runtime, project_id: str, batch_key: str) -> RowMapping | None:
    async with rt.engine.connect() as conn:
        return (
            (
                await conn.execute(
                    select(payout_batches).where(
                        B.project_id == project_id, B.idempotency_key == batch_key
                    )
                )
            )
            .mappings()
            .first()
        )


def _encode(answer: ItemAnswer) -> dict[str, Any]:
    if answer.payout is not None:
        return {"payoutId": answer.payout["id"]}
    assert answer.error is not None
    return {"code": answer.error.code, "message": answer.error.message, "extra": answer.error.extra}


async def _store(
    rt: Runtime, project_id: str, batch_key: str, request_hash: str, answers: list[ItemAnswer]
) -> None:
    """Store the answers; a concurrent same-key batch may have stored first (then theirs
    stand, and this answer is still true for each item: a payout is one payout per key)."""
    try:
        async with rt.engine.begin() as conn:
            await conn.execute(
                payout_batches.insert().values(
                    project_id=project_id,
                    idempotency_key=batch_key,
                    request_hash=request_hash,
                    items_json=json.dumps([_encode(a) for a in answers]),
                    created_at=rt.clock.now_ms(),
                )
            )
    except IntegrityError:
        log.info("payout_batch_stored_concurrently", project_id=project_id)


async def _replay_batch(rt: Runtime, stored: RowMapping, request_hash: str) -> BatchAnswer:
    if stored["request_hash"] != request_hash:
        raise errors.IdempotencyKeyReused(
            "This batch Idempotency-Key was already used with a different request body in this "
            "project. Use a new key for a new batch."
        )
    encoded: list[dict[str, Any]] = json.loads(stored["items_json"])
    ids = [e["payoutId"] for e in encoded if "payoutId" in e]
    rows = await _load_many(rt, ids) if ids else {}
    items = [
        ItemAnswer(payout=rows[e["payoutId"]], replay=True)
        if "payoutId" in e
        else ItemAnswer(error=ITEM_ERRORS[e["code"]](e["message"], **e["extra"]))
        for e in encoded
    ]
    return BatchAnswer(items, replay=True)
