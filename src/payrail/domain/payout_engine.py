"""The payout engine's rules: which items of a group may reserve, decided in order, pure.

TigerBeetle's shape: storage loads the rows a group of payout items touches (under the
ledger's lock order, so nothing it read can change before it writes), hands them here as a
`Snapshot`, and writes what `decide` answers. Every item gets exactly one `Decision`, as if it
had arrived alone in that order: an item reserved earlier in the group counts against the
ones after it (balance, rate limit, keys, invoices, internal ids). No I/O, no clock: `now`
comes with each item.

Every rule that can refuse a payout before money moves lives here, once, for every way a
payout is made (a lone request, concurrent requests grouped, a batch's group; SQLite and
PostgreSQL, behind PgBouncer or not). The order of the checks is the order of the answers a
client sees when several apply:

    project exists → key unused (else replay) → the quote it pays unused and unexpired
    → invoice not already paid by a live payout → internal id unused → failed-payout block
    → rate limit → the project's amount caps (per payout, per player per rolling day, per
    project per rolling day) → balance; then a payout above the project's approvalAboveSats
    is held: reserved like any other (its money is taken), but not sent until an approver
    approves it (`Hold`).

A player is the studio's stable `playerId` when the payout gives one, else its recipient
(`recipient_key`): the rate limit and the player's daily cap count per player
(`Item.counter`); the failed-payout block stays per recipient (it is about a destination).
What a daily cap counts: the amounts (sats the players receive, fee excluded) of the
project's or player's payouts created in the last 24 h that are not voided (`is_voided`:
reserved, in flight, completed, or failed with a charge), the group's own included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from payrail.domain import errors

RATE_WINDOW_MS = 3_600_000  # the rate limit's rolling window
FAILURES_SCAN_MAX = 200  # failed payouts read per recipient; more would already have blocked
# A failure counts when its payout was created within this long before the window: a payout
# ends at most a day after it was created in practice, and the index is on created_at.
FAILURE_LOOKBACK_MS = 86_400_000
POLICY_SECONDS_MAX = 86_400  # a policy's failure window and block, each at most
POLICY_FAILURES_MAX = 1_000  # a policy's failures_max, at most
GROUP_ITEMS_MAX = 1_000  # a batch's size; a concurrent group is smaller (grouping.GROUP_MAX)
DAY_MS = 86_400_000  # the daily caps' rolling window
# Storage hands the window's payouts summed per bucket of their created_at (one row per
# minute at most, however many payouts a day has); a bucket frees its sats once its last
# possible payout has left the window, so retryAt is at most a bucket late, never early.
SPENT_BUCKET_MS = 60_000
PLAYER_ID_MAX_CHARS = 128
PLAYER_PREFIX = "#"  # a player's counter key; no recipient key holds a '#'


def recipient_key(gamertag: str) -> str:
    """One spelling per recipient (gamertags are ASCII, so lower() is the whole folding)."""
    return gamertag.lower()


@dataclass(frozen=True)
class Policy:
    """The failed-payout block in force for a project: server defaults, project overrides."""

    failures_max: int  # 0: the block is off
    failure_window_s: int
    block_s: int

    def view(self) -> dict[str, int]:
        return {
            "failuresMax": self.failures_max,
            "failureWindowS": self.failure_window_s,
            "blockS": self.block_s,
        }


def policy(defaults: Policy, overrides: Sequence[int | None]) -> Policy:
    """A project's policy: each override (failures_max, window_s, block_s) or its default."""
    assert len(overrides) == 3
    picked = [d if o is None else int(o) for d, o in zip(_fields(defaults), overrides, strict=True)]
    return Policy(*picked)


def _fields(p: Policy) -> tuple[int, int, int]:
    return p.failures_max, p.failure_window_s, p.block_s


@dataclass(frozen=True)
class Caps:
    """A project's amount caps in sats (project_limits; None: no cap)."""

    per_payout_max_sats: int | None = None
    per_player_daily_max_sats: int | None = None
    project_daily_max_sats: int | None = None
    approval_above_sats: int | None = None

    def view(self) -> dict[str, int | None]:
        return {
            "perPayoutMaxSats": self.per_payout_max_sats,
            "perPlayerDailyMaxSats": self.per_player_daily_max_sats,
            "projectDailyMaxSats": self.project_daily_max_sats,
            "approvalAboveSats": self.approval_above_sats,
        }


NO_CAPS = Caps()
CAP_FIELDS = tuple(Caps().view())  # the API's names, in the columns' order


@dataclass(frozen=True)
class Limits:
    """The server's settings the rules read (one set per process)."""

    rate_limit: int  # payouts per recipient per rolling hour
    defaults: Policy


@dataclass(frozen=True)
class Item:
    """One payout that asks to reserve: what the rules need of it (its row is built by the
    caller, services/payouts.py payout_row)."""

    project_id: str
    recipient: str  # recipient_key of its gamertag (the rate-limit key)
    gamertag: str  # as given (the block's message names it)
    amount_sats: int
    fee_sats: int
    now_ms: int
    idempotency_key: str | None = None
    payment_hash: str | None = None  # the invoice it pays, where it pays one
    internal_id: str | None = None
    player_id: str | None = None  # the studio's stable player id, when given
    quote_id: str | None = None  # the quote whose sats it pays (services/quotes.py)
    quote_expires_at_ms: int | None = None
    may_hold: bool = True  # False: a way in with no approval step

    @property
    def cost_sats(self) -> int:
        return self.amount_sats + self.fee_sats

    @property
    def counter(self) -> str:
        """Who the rate limit and the daily player cap count by: the player, else the
        recipient (a payout counts under exactly one)."""
        return player_counter(self.player_id) if self.player_id else self.recipient


def player_counter(player_id: str) -> str:
    return PLAYER_PREFIX + player_id


@dataclass
class Project:
    policy: Policy
    available_sats: int  # credits_posted - debits_posted - debits_pending, under its lock
    allow_negative: bool = False
    caps: Caps = NO_CAPS


@dataclass
class Snapshot:
    """What storage read for a group, under the locks it holds until it writes.

    recent_ms: per (project, recipient), created_at of its newest payouts in the rate
    window, newest first (at most rate_limit of them). failed: per (project, recipient),
    (updated_at, created_at) of its failed payouts, newest first, from at least as far back
    as any policy reads (failure_since_ms). keys / internal_ids: per project, the payout
    rows (or ids) holding them. live_hashes: payment hashes of payouts that may still be or
    have been paid (not voided), with the payout id. recent_ms is keyed by `Item.counter`.
    spent: per (project, None) and per (project, counter), (bucket start, sats) of the
    payouts a daily cap counts (not voided, created in the last DAY_MS), oldest first; only
    where the project has that cap."""

    projects: dict[str, Project]
    keys: dict[tuple[str, str], Any] = field(default_factory=dict)
    recent_ms: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    failed: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    live_hashes: dict[str, str] = field(default_factory=dict)
    internal_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    spent: dict[tuple[str, str | None], list[tuple[int, int]]] = field(default_factory=dict)
    used_quotes: dict[str, str] = field(default_factory=dict)  # quote id -> the payout it paid


@dataclass(frozen=True)
class Reserve:
    """The item reserves: storage writes its payout, jobs, transfers and balances."""


@dataclass(frozen=True)
class Replay:
    """The key is held by an earlier payout: the answer is that payout (row as loaded)."""

    row: Any


@dataclass(frozen=True)
class Refuse:
    error: errors.PayrailError


@dataclass(frozen=True)
class Hold:
    """The item reserves, held for approval: storage writes its held rows (no settle job)."""


Decision = Reserve | Replay | Refuse | Hold
RESERVE = Reserve()
HOLD = Hold()


def decide(
    items: Sequence[Item], snap: Snapshot, limits: Limits, new_ids: Sequence[str]
) -> list[Decision]:
    """One decision per item, in order; `snap` is updated with what each reservation takes
    (so it describes the state after the group). new_ids: each item's payout id."""
    assert 1 <= len(items) <= GROUP_ITEMS_MAX
    assert len(new_ids) == len(items)
    assert limits.rate_limit >= 1
    decisions = [
        _decide_one(item, pid, snap, limits) for item, pid in zip(items, new_ids, strict=True)
    ]
    assert len(decisions) == len(items)
    return decisions


def _decide_one(item: Item, payout_id: str, snap: Snapshot, limits: Limits) -> Decision:
    assert item.amount_sats > 0 and item.fee_sats >= 0
    project = snap.projects.get(item.project_id)
    if project is None:
        return Refuse(errors.ProjectNotFound(f"No project with id {item.project_id}."))
    key = (item.project_id, item.idempotency_key) if item.idempotency_key else None
    if key is not None and key in snap.keys:
        return Replay(snap.keys[key])
    refusal = (
        _quote_refusal(item, snap)
        or _invoice_refusal(item, snap)
        or _internal_id_refusal(item, snap)
        or _guard_refusal(item, project.policy, snap, limits)
        or _cap_refusal(item, project.caps, snap)
        or _balance_refusal(item, project)
    )
    if refusal is not None:
        return Refuse(refusal)
    _take(item, payout_id, project, snap, key)
    return HOLD if needs_approval(item, project.caps) else RESERVE


def needs_approval(item: Item, caps: Caps) -> bool:
    """Above approvalAboveSats a payout waits for an approver (a hold still reserves)."""
    above = caps.approval_above_sats
    return item.may_hold and above is not None and item.amount_sats > above


def _take(
    item: Item, payout_id: str, project: Project, snap: Snapshot, key: tuple[str, str] | None
) -> None:
    """What a reservation changes for the items after it."""
    before = project.available_sats
    project.available_sats -= item.cost_sats
    assert project.allow_negative or project.available_sats >= 0
    assert before - project.available_sats == item.cost_sats
    snap.recent_ms.setdefault((item.project_id, item.counter), []).insert(0, item.now_ms)
    spent = (spent_bucket(item.now_ms), item.amount_sats)
    for scope in (None, item.counter):
        snap.spent.setdefault((item.project_id, scope), []).append(spent)
    if key is not None:
        snap.keys[key] = {"id": payout_id}
    if item.payment_hash is not None:
        snap.live_hashes[item.payment_hash] = payout_id
    if item.internal_id is not None:
        snap.internal_ids[(item.project_id, item.internal_id)] = payout_id
    if item.quote_id is not None:
        snap.used_quotes[item.quote_id] = payout_id


def _quote_refusal(item: Item, snap: Snapshot) -> errors.PayrailError | None:
    """A quote pays one payout, before its expiresAt."""
    if item.quote_id is None:
        return None
    used_by = snap.used_quotes.get(item.quote_id)
    if used_by is not None:
        return quote_used(item.quote_id, used_by)
    assert item.quote_expires_at_ms is not None
    if item.now_ms >= item.quote_expires_at_ms:
        return quote_expired(item.quote_id, item.quote_expires_at_ms)
    return None


def quote_used(quote_id: str, payout_id: str | None) -> errors.QuoteUsed:
    extra = {} if payout_id is None else {"payoutId": payout_id}
    return errors.QuoteUsed(
        f"Quote {quote_id} already paid a payout; ask for a new quote.", quoteId=quote_id, **extra
    )


def quote_expired(quote_id: str, expires_at_ms: int) -> errors.QuoteExpired:
    return errors.QuoteExpired(
        f"Quote {quote_id} expired at {_iso(expires_at_ms)}; ask for a new quote.",
        quoteId=quote_id,
        expiresAt=_iso(expires_at_ms),
    )


def _invoice_refusal(item: Item, snap: Snapshot) -> errors.PayrailError | None:
    """One payment hash, one live payout: a second would be charged for the same payment."""
    if item.payment_hash is None or item.payment_hash not in snap.live_hashes:
        return None
    return invoice_used(snap.live_hashes[item.payment_hash])


def invoice_used(payout_id: str | None) -> errors.InvoiceAlreadyUsed:
    extra = {} if payout_id is None else {"payoutId": payout_id}
    return errors.InvoiceAlreadyUsed(
        "This invoice is already being paid or was paid by another payout; a second payout "
        "would be charged for the same payment. Ask the recipient for a new invoice.",
        **extra,
    )


def _internal_id_refusal(item: Item, snap: Snapshot) -> errors.PayrailError | None:
    """internalId names one payout per project (GET /payouts/internal/{id} finds one)."""
    if item.internal_id is None:
        return None
    existing = snap.internal_ids.get((item.project_id, item.internal_id))
    return None if existing is None else internal_id_taken(item.internal_id, existing)


def internal_id_taken(internal_id: str, payout_id: str | None) -> errors.InternalIdTaken:
    named = "another payout" if payout_id is None else f"payout {payout_id}"
    extra = {} if payout_id is None else {"payoutId": payout_id}
    return errors.InternalIdTaken(
        f"internalId {internal_id} already names {named} in this project; use a new "
        "internalId, or the same idempotencyKey to retry that payout.",
        **extra,
    )


def _guard_refusal(
    item: Item, p: Policy, snap: Snapshot, limits: Limits
) -> errors.PayrailError | None:
    """The recipient guard: the failed-payout block first, then the rate limit."""
    who = (item.project_id, item.recipient)
    until = blocked_until_ms(_failures_counted(snap.failed.get(who, []), p, item.now_ms), p)
    if until is not None and until > item.now_ms:
        return blocked_error(item.gamertag, until, p, item.now_ms)
    recent = snap.recent_ms.get((item.project_id, item.counter), [])
    oldest_counted = recent[limits.rate_limit - 1] if len(recent) >= limits.rate_limit else None
    if oldest_counted is None or oldest_counted <= item.now_ms - RATE_WINDOW_MS:
        return None
    return rate_error(limits.rate_limit, oldest_counted, item.now_ms)


def _cap_refusal(item: Item, caps: Caps, snap: Snapshot) -> errors.PayrailError | None:
    """The project's amount caps: one payout's amount, then the player's and the project's
    rolling-day totals with this payout added. An amount that no day could ever hold is a
    403 (retrying cannot help); a day that is full now, a 429 saying when it frees."""
    amount = item.amount_sats
    if caps.per_payout_max_sats is not None and amount > caps.per_payout_max_sats:
        return payout_limit_error("perPayoutMaxSats", caps.per_payout_max_sats, amount)
    daily = (
        ("perPlayerDailyMaxSats", caps.per_player_daily_max_sats, item.counter),
        ("projectDailyMaxSats", caps.project_daily_max_sats, None),
    )
    for name, cap, scope in daily:
        if cap is None:
            continue
        if amount > cap:
            return payout_limit_error(name, cap, amount)
        spent = snap.spent.get((item.project_id, scope), [])
        used = sum(sats for _, sats in spent)
        if used + amount > cap:
            at = frees_at_ms(spent, used + amount - cap)
            return daily_limit_error(name, cap, used, amount, max(at, item.now_ms), item.now_ms)
    return None


def spent_bucket(created_at_ms: int) -> int:
    return created_at_ms // SPENT_BUCKET_MS * SPENT_BUCKET_MS


def frees_at_ms(spent: Sequence[tuple[int, int]], needed: int) -> int:
    """When at least `needed` sats of `spent` have left the rolling day: the end of the
    bucket that completes it, plus a day (a payout leaves DAY_MS after its created_at)."""
    assert needed > 0
    freed = 0
    for bucket, sats in sorted(spent):
        freed += sats
        if freed >= needed:
            return bucket + SPENT_BUCKET_MS + DAY_MS
    raise AssertionError("a payout within the cap always fits once the day has passed")


def _balance_refusal(item: Item, project: Project) -> errors.PayrailError | None:
    if project.allow_negative or item.cost_sats <= project.available_sats:
        return None
    return insufficient(item.amount_sats, item.fee_sats, project.available_sats)


def _failures_counted(failed: Sequence[tuple[int, int]], p: Policy, now_ms: int) -> list[int]:
    """updated_at of the failures that can block at now_ms, ascending: those after the
    policy's horizon, of payouts created at most FAILURE_LOOKBACK_MS before it, the newest
    FAILURES_SCAN_MAX."""
    if p.failures_max <= 0:
        return []
    horizon = now_ms - (p.failure_window_s + p.block_s) * 1000
    kept = [u for u, c in failed if u > horizon and c > horizon - FAILURE_LOOKBACK_MS]
    return sorted(kept[:FAILURES_SCAN_MAX])


def failure_since_ms(now_ms: int) -> tuple[int, int]:
    """The widest window any policy reads failures from: (updated after, created after).
    Storage loads that much; the rules cut it to the project's own horizon."""
    updated_after = now_ms - 2 * POLICY_SECONDS_MAX * 1000
    return updated_after, updated_after - FAILURE_LOOKBACK_MS


def is_voided(state: str, charge_posted: bool) -> bool:
    """A payout whose reservation was released: it ended failed or expired, not charged.
    Only such a payout frees its invoice for another payout."""
    return state in ("failed", "expired") and not charge_posted


def blocked_until_ms(failed_at_ms: Sequence[int], p: Policy) -> int | None:
    """When the block that `failed_at_ms` (ascending) started ends, or None for no block.
    Any `failures_max` failures within the window start a block at the last of them."""
    k = p.failures_max
    if k <= 0 or len(failed_at_ms) < k:
        return None
    window_ms, until = p.failure_window_s * 1000, None
    for i in range(k - 1, len(failed_at_ms)):
        if failed_at_ms[i] - failed_at_ms[i - k + 1] <= window_ms:
            until = failed_at_ms[i] + p.block_s * 1000
    return until


def retry_after_s(wait_ms: int) -> int:
    return max(1, math.ceil(wait_ms / 1000))


def blocked_error(
    gamertag: str, until_ms: int, p: Policy, now_ms: int
) -> errors.RecipientTemporarilyBlocked:
    wait_s = retry_after_s(until_ms - now_ms)
    return errors.RecipientTemporarilyBlocked(
        f"Payouts to gamertag {gamertag} are blocked for {wait_s} s: "
        f"{p.failures_max} payouts to it failed within "
        f"{p.failure_window_s} s. Check the recipient before retrying.",
        retryAfter=wait_s,
        failuresMax=p.failures_max,
    )


def rate_error(limit: int, oldest_counted_ms: int, now_ms: int) -> errors.RateLimitExceeded:
    """Refused while the limit-th newest payout to the recipient is in the window; the
    answer says when that one leaves it (clamped: a concurrent request may have stamped its
    created_at a moment after our `now`)."""
    wait_s = retry_after_s(min(RATE_WINDOW_MS, oldest_counted_ms + RATE_WINDOW_MS - now_ms))
    return errors.RateLimitExceeded(
        f"Maximum {limit} payouts per gamertag per hour (gamertags count whatever their "
        f"case); retry in {wait_s} s.",
        retryAfter=wait_s,
        limit=limit,
    )


def payout_limit_error(cap_name: str, cap: int, amount: int) -> errors.PayoutLimitExceeded:
    return errors.PayoutLimitExceeded(
        f"The payout of {amount} sats is above this project's {cap_name} of {cap} sats; "
        "it can never be sent as one payout. Send a smaller amount.",
        limit=cap_name,
        limitSats=cap,
        amount=amount,
    )


def daily_limit_error(
    cap_name: str, cap: int, used: int, amount: int, at_ms: int, now_ms: int
) -> errors.PlayerDailyLimit | errors.ProjectDailyLimit:
    """A rolling-day cap is full: how much it holds, how much is used, when enough frees."""
    whose = "this player's" if cap_name == "perPlayerDailyMaxSats" else "this project's"
    wait_s = retry_after_s(at_ms - now_ms)
    player = cap_name == "perPlayerDailyMaxSats"
    cls = errors.PlayerDailyLimit if player else errors.ProjectDailyLimit
    return cls(
        f"The payout of {amount} sats would take {whose} payouts of the last 24 h to "
        f"{used + amount} sats, above its {cap_name} of {cap} sats; enough frees up at "
        f"{_iso(at_ms)}.",
        limit=cap_name,
        limitSats=cap,
        usedSats=used,
        amount=amount,
        retryAt=_iso(at_ms),
        retryAfter=wait_s,
    )


def _iso(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, as the API shows times (support/clock.py iso)."""
    stamp = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def insufficient(amount: int, fee: int, available: int) -> errors.InsufficientBalance:
    total = amount + fee
    return errors.InsufficientBalance(
        f"Insufficient balance: the payout of {amount} sats plus the {fee} sat fee needs "
        f"{total} sats, and {max(available, 0)} sats are available.",
        requiredAmount=amount,
        fee=fee,
        totalCost=total,
        currentBalance=available,
    )
