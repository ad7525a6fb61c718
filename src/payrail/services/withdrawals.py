"""Claim links (LNURL-withdraw, LUD-03): a payout reserved before it has a destination.

    create   the payout engine reserves amount + fee (every payout rule, once: the fee, the
             rate limit, the recipient guard, idempotency), the payout written `reserved`
             with NO settle job, so nothing ever sends it while the link is open; then the
             link's row (its secret's hash). A crash between the two leaves a reservation
             that a retry with the same key completes, or that expiry voids.
    claim    a wallet's invoice, checked (exactly the amount, the network, not expiring),
             then ONE transaction: the link open → claimed (guarded), the payout's invoice
             and payment hash set (the unique live-payment-hash index refuses an invoice
             another payout holds) while it is still reserved and unexpired, its settle job
             written. The saga then pays and finalizes it like any invoice payout, so an
             unknown outcome holds the reservation until the node answers.
    revoke   the link open → revoked (guarded), then the payout's void through the engine's
             finalize (reserved → expired). A crash between: `sweep` voids it.
    expiry   the payout expires at the link's expiresAt through payouts.expire_due (the
             worker's bounded sweep): the reservation is voided like any unsent payout's.
    held     above the project's approvalAboveSats the engine decides Hold: the same
             reservation, its payout marked approval required. Until an approver approves
             it (services/approvals.py, which writes no settle job for a link) no wallet may
             claim it: the claim's guarded UPDATE needs approval null or approved. Rejected:
             voided (error, REJECTED_BY_APPROVER); not decided by expiresAt: expired.

A link may carry playerId (the rate limit and the daily player cap count by the player) and
quoteId instead of amount (services/quotes.py price; the engine spends the quote once, in
the reservation). The link's public status is domain/claims.public_status of its row and its
payout's state and approval.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from payrail.bootstrap import Runtime
from payrail.db import payout_store
from payrail.db.tables import payouts as payouts_table
from payrail.db.tables import withdrawals
from payrail.domain import claims, errors, invoices, payout_engine
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH
from payrail.domain.payouts import PayoutRequest, State
from payrail.domain.recipients import encode_lnurl
from payrail.jobs import queue
from payrail.services import destinations, flags, pagination, payouts, quotes
from payrail.support.clock import iso

log = structlog.get_logger("payrail.withdrawals")
W = withdrawals.c
P = payouts_table.c

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
SWEEP_BATCH_MAX = 100
CREATED_CAUSE = "api: claim link created; waiting for a wallet"
REVOKED_CAUSE = "api: claim link revoked"
# The public routes (the wallet's two requests and the claim page): requests per minute.
PUBLIC_WINDOW_MS = 60_000
PUBLIC_PER_LINK_MAX = 60
PUBLIC_PER_ADDRESS_MAX = 300
LNURL_PATH = "/lnurlw"
CLAIM_PAGE_PATH = "/claim"
SANDBOX_INVOICE_EXPIRY_S = 3600


class WithdrawalNotFound(errors.NotFound):
    code = "WITHDRAWAL_NOT_FOUND"


class ClaimLinksDisabled(errors.ServiceUnavailable):
    code = "CLAIM_LINKS_DISABLED"


class ClaimRefused(Exception):
    """What a wallet is answered ({"status": "ERROR", "reason": ...}); nothing moved."""

    def __init__(self, reason: str, *, throttled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.throttled = throttled


@dataclass(frozen=True)
class Link:
    row: RowMapping  # the withdrawals row
    payout: RowMapping  # its payout's row


@dataclass(frozen=True)
class CreateOutcome:
    link: Link
    replay: bool


def enabled(rt: Runtime) -> None:
    if not rt.settings.claim_links:
        raise ClaimLinksDisabled(
            "Claim links are off: set PAYRAIL_CLAIM_LINK_KEY (32+ characters) and an https "
            "PAYRAIL_PUBLIC_URL to use them."
        )


# ---------------------------------------------------------------- the links' addresses


def secret_of(rt: Runtime, link_id: str) -> str:
    return claims.secret(rt.settings.claim_link_key, link_id)


def withdraw_url(rt: Runtime, link_id: str) -> str:
    """The LUD-03 withdraw URL (what the LNURL encodes): it carries the link's secret."""
    return f"{rt.settings.public_url}{LNURL_PATH}/{link_id}?k1={secret_of(rt, link_id)}"


def callback_url(rt: Runtime, link_id: str) -> str:
    return f"{rt.settings.public_url}{LNURL_PATH}/{link_id}/callback"


def page_url(rt: Runtime, link_id: str) -> str:
    return f"{rt.settings.public_url}{CLAIM_PAGE_PATH}/{link_id}?k1={secret_of(rt, link_id)}"


def lnurl(rt: Runtime, link_id: str) -> str:
    """LUD-01: the bech32 encoding of the withdraw URL, upper case (a denser QR code)."""
    return encode_lnurl(withdraw_url(rt, link_id)).upper()


# ---------------------------------------------------------------- reads


async def _load(rt: Runtime, link_id: str) -> Link | None:
    async with rt.engine.connect() as conn:
        row = (await conn.execute(select(withdrawals).where(W.id == link_id))).mappings().first()
        if row is None:
            return None
        payout = await payouts.load(conn, row["payout_id"])
    assert payout is not None, f"withdrawal {link_id} without its payout"
    return Link(row, payout)


async def _by_payout(rt: Runtime, payout_id: str) -> RowMapping | None:
    async with rt.engine.connect() as conn:
        return (
            (await conn.execute(select(withdrawals).where(W.payout_id == payout_id)))
            .mappings()
            .first()
        )


async def get(rt: Runtime, link_id: str, project_id: str | None) -> Link:
    """The link, if the caller may see it (another project's link is not found)."""
    enabled(rt)
    link = await _load(rt, link_id)
    if link is None or (project_id is not None and link.row["project_id"] != project_id):
        raise WithdrawalNotFound(f"No withdrawal with id {link_id}.")
    return link


async def list_links(
    rt: Runtime, project_id: str | None, limit: int, cursor: str | None
) -> tuple[list[Link], str | None]:
    """Newest first, keyset-paginated on (created_at, id)."""
    enabled(rt)
    where = [] if project_id is None else [W.project_id == project_id]
    rows, next_cursor = await pagination.newest_first(rt.engine, withdrawals, limit, cursor, *where)
    async with rt.engine.connect() as conn:
        found = await conn.execute(
            select(payouts_table).where(P.id.in_([r["payout_id"] for r in rows]))
        )
        by_id = {p["id"]: p for p in found.mappings()}
    return [Link(r, by_id[r["payout_id"]]) for r in rows], next_cursor


def status(rt: Runtime, link: Link) -> claims.Status:
    return claims.public_status(
        link.row["status"],
        link.payout["state"],
        link.row["expires_at"],
        rt.clock.now_ms(),
        link.payout["approval"],
    )


def view(rt: Runtime, link: Link) -> dict[str, Any]:
    """The public withdrawal object (docs/claim-links.md)."""
    row, payout = link.row, link.payout
    current = status(rt, link)
    claimed = row["status"] == claims.StoredStatus.CLAIMED
    return {
        "id": row["id"],
        "projectId": row["project_id"],
        "status": current.value,
        "amount": row["amount"],
        "fee": payout["fee"],
        "totalCost": payout["amount"] + payout["fee"],
        "gamertag": payout["destination"],
        "description": row["description"],
        "internalId": payout["internal_id"],
        "playerId": payout["player_id"],
        "approval": payout["approval"],  # null, or required / approved / rejected
        "decidedBy": payout["decided_by"],
        "lnurl": lnurl(rt, row["id"]),
        "url": page_url(rt, row["id"]),
        "expiresAt": iso(row["expires_at"]),
        "createdAt": iso(row["created_at"]),
        "claimedAt": iso(row["claimed_at"]),
        "revokedAt": iso(row["revoked_at"]),
        # Claimed, or held: the payout an approver approves (POST /payouts/{id}/approve).
        "payoutId": payout["id"] if claimed or payout["approval"] else None,
        "paymentHash": row["payment_hash"],
    }


# ---------------------------------------------------------------- create


async def create(rt: Runtime, body: Any, idempotency_key: str | None) -> CreateOutcome:
    """Reserve amount + fee through the payout engine, then write the link."""
    enabled(rt)
    link_id = str(uuid.uuid4())
    req, _ = claims.parse_request(body, idempotency_key, link_id)
    req = await quotes.price(rt, req)  # a quote's sats stand in for amount (or 404)
    earlier, _ = await rt.payout_store.lookup(req.project_id, req.idempotency_key, None)
    if earlier is not None:
        return await _replay(rt, earlier, req, link_id)
    path = await flags.path_for(rt, SETTLEMENT_QUEUE_PATH, req.project_id)
    now = rt.clock.now_ms()
    resolved = destinations.Resolved(claims.DESTINATION_KIND, req.destination, None)
    row = payouts.payout_row(req, now, path, resolved)
    # Reserved and never sent: no settle job exists until a wallet claims the link.
    row |= {"state": State.RESERVED.value, "state_cause": CREATED_CAUSE}
    row["destination"] = req.link_gamertag  # type: ignore[attr-defined]
    # may_hold: above approvalAboveSats the link waits for an approver before any claim.
    entry = payouts.reservation_entry(rt, req, row, path, settle_job=False, may_hold=True)
    try:
        decision = await rt.reserving.submit(entry)
    except payout_store.DuplicateKey as duplicate:
        decision = await payouts.after_duplicate(rt, req, duplicate)
    if isinstance(decision, payout_engine.Replay):
        return await _replay(rt, decision.row, req, link_id)
    if isinstance(decision, payout_engine.Refuse):
        raise decision.error
    held = decision is payout_engine.HOLD
    log.info("withdrawal_reserved", withdrawal_id=link_id, payout_id=row["id"], held=held)
    rt.crashpoint("after_withdrawal_reserve")
    return CreateOutcome(await _insert_link(rt, link_id, row), replay=False)


async def _replay(rt: Runtime, payout: Any, req: PayoutRequest, link_id: str) -> CreateOutcome:
    """Same key, same body: the same link (written now if a crash left only its payout)."""
    payouts.check_same_request(payout, req)
    row = await _by_payout(rt, payout["id"])
    if row is None:
        return CreateOutcome(await _insert_link(rt, link_id, payout), replay=True)
    link = await _load(rt, row["id"])
    assert link is not None
    return CreateOutcome(link, replay=True)


async def _insert_link(rt: Runtime, link_id: str, payout: Any) -> Link:
    now = rt.clock.now_ms()
    values = dict(
        id=link_id,
        project_id=payout["project_id"],
        payout_id=payout["id"],
        secret_hash=claims.secret_hash(secret_of(rt, link_id)),
        status=claims.StoredStatus.OPEN.value,
        amount=payout["amount"],
        description=payout["description"],
        expires_at=payout["expires_at"],
        payment_hash=None,
        created_at=now,
        updated_at=now,
        claimed_at=None,
        revoked_at=None,
    )
    try:
        async with rt.engine.begin() as conn:
            await conn.execute(insert(withdrawals).values(**values))
    except IntegrityError:  # a concurrent retry with the same key wrote it first
        row = await _by_payout(rt, payout["id"])
        if row is None:
            raise
        link_id = row["id"]
    link = await _load(rt, link_id)
    assert link is not None
    return link


# ---------------------------------------------------------------- revoke, sweep


async def revoke(rt: Runtime, link_id: str, project_id: str | None) -> Link:
    """DELETE: an open link → revoked, its reservation voided (409 once claimed)."""
    link = await get(rt, link_id, project_id)
    current = status(rt, link)
    if current == claims.Status.REVOKED:
        return link  # revoked already: the same answer
    if current not in (claims.Status.OPEN, claims.Status.AWAITING_APPROVAL):
        raise errors.InvalidStatusTransition(
            f"The link is {current.value}: only an open link (or one awaiting approval) "
            "can be revoked.",
            currentStatus=current.value,
        )
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        moved = await conn.execute(
            update(withdrawals)
            .where(W.id == link_id, W.status == claims.StoredStatus.OPEN.value)
            .values(status=claims.StoredStatus.REVOKED.value, revoked_at=now, updated_at=now)
            .returning(W.id)
        )
        won = moved.first() is not None
    if not won:  # claimed (or revoked) meanwhile
        return await revoke(rt, link_id, project_id)
    rt.crashpoint("after_withdrawal_revoke")
    await _void(rt, link.payout["id"], REVOKED_CAUSE)
    log.info("withdrawal_revoked", withdrawal_id=link_id)
    refreshed = await _load(rt, link_id)
    assert refreshed is not None
    return refreshed


async def _void(rt: Runtime, payout_id: str, cause: str) -> bool:
    """The reservation's void through the engine (reserved → expired), if still reserved."""
    final = await payouts.finalize(
        rt, payout_id, State.RESERVED, State.EXPIRED, rt.clock.now_ms(), charge=False, cause=cause
    )
    return final is not None


async def sweep(rt: Runtime, batch_max: int = SWEEP_BATCH_MAX) -> int:
    """Void the reservations of revoked links still held (a crash after the revoke). Bounded:
    it reads reserved payouts only (their partial index), joined to revoked links."""
    async with rt.engine.connect() as conn:
        due = list(
            (
                await conn.execute(
                    select(P.id)
                    .join(withdrawals, W.payout_id == P.id)
                    .where(
                        P.state == State.RESERVED.value,
                        W.status == claims.StoredStatus.REVOKED.value,
                    )
                    .limit(batch_max)
                )
            ).scalars()
        )
    voided = 0
    for payout_id in due:
        voided += await _void(rt, payout_id, REVOKED_CAUSE)
    return voided


# ---------------------------------------------------------------- the public side (LUD-03)


class PublicThrottle:
    """Requests per minute per link and per client address on the public routes (a sliding
    window per identity, per process, bounded)."""

    IDENTITIES_MAX = 10_000

    def __init__(
        self,
        per_link: int = PUBLIC_PER_LINK_MAX,
        per_address: int = PUBLIC_PER_ADDRESS_MAX,
        window_ms: int = PUBLIC_WINDOW_MS,
    ) -> None:
        self.limits = {"link": per_link, "address": per_address}
        self.window_ms = window_ms
        self._seen: OrderedDict[tuple[str, str], deque[int]] = OrderedDict()

    def admit(self, link_id: str, address: str, now_ms: int) -> None:
        """Count one request; ClaimRefused(throttled) once either identity is over its limit."""
        identities = (("link", link_id), ("address", address))
        for identity in identities:
            times = self._seen.get(identity)
            while times and times[0] <= now_ms - self.window_ms:
                times.popleft()
            if times is not None and len(times) >= self.limits[identity[0]]:
                retry_s = max(1, math.ceil((times[0] + self.window_ms - now_ms) / 1000))
                raise ClaimRefused(f"Too many requests; retry in {retry_s} s.", throttled=True)
        for identity in identities:
            times = self._seen.get(identity)
            if times is None:
                times = self._seen[identity] = deque()
                while len(self._seen) > self.IDENTITIES_MAX:
                    self._seen.popitem(last=False)
            self._seen.move_to_end(identity)
            times.append(now_ms)


UNKNOWN_LINK = "Unknown link, or a wrong k1."


async def public_link(rt: Runtime, link_id: str, k1: Any) -> Link:
    """The link a wallet names, if its k1 is the link's secret; the same refusal whether the
    link does not exist or the secret is wrong (nothing said about other links)."""
    if not rt.settings.claim_links:
        raise ClaimRefused("Claim links are off on this server.")
    link = await _load(rt, link_id) if len(link_id) <= 36 else None
    if link is None or not claims.secret_matches(k1, link.row["secret_hash"]):
        raise ClaimRefused(UNKNOWN_LINK)
    return link


def _not_open(current: claims.Status) -> ClaimRefused:
    return ClaimRefused(
        {
            claims.Status.CLAIMED: "This link was already claimed.",
            claims.Status.COMPLETED: "This link was already claimed.",
            claims.Status.ERROR: "This link was already claimed.",
            claims.Status.EXPIRED: "This link has expired.",
            claims.Status.REVOKED: "This link was revoked.",
            claims.Status.AWAITING_APPROVAL: "This link is waiting for an approver; try "
            "again once it is approved.",
            claims.Status.REJECTED: "This link was rejected by an approver.",
        }.get(current, "This link cannot be claimed.")
    )


async def withdraw_request(rt: Runtime, link_id: str, k1: Any) -> dict[str, Any]:
    """LUD-03's first answer: the withdrawRequest of an open link."""
    link = await public_link(rt, link_id, k1)
    current = status(rt, link)
    if current != claims.Status.OPEN:
        raise _not_open(current)
    low, high = claims.withdraw_bounds_msat(link.row["amount"])
    return {
        "tag": "withdrawRequest",
        "callback": callback_url(rt, link_id),
        "k1": k1,
        "minWithdrawable": low,
        "maxWithdrawable": high,
        "defaultDescription": link.row["description"] or claims.DEFAULT_DESCRIPTION,
    }


async def claim(rt: Runtime, link_id: str, k1: Any, pr: Any) -> Link:
    """LUD-03's callback: check the invoice, claim the link once, start the payment.

    Raises ClaimRefused (nothing written) unless this call claimed the link."""
    link = await public_link(rt, link_id, k1)
    current = status(rt, link)
    if current != claims.Status.OPEN:
        raise _not_open(current)
    if not isinstance(pr, str) or not pr or len(pr) > 4096:
        raise ClaimRefused("pr must be a BOLT11 invoice.")
    try:
        invoice = invoices.decode(pr.strip().lower().removeprefix("lightning:"))
    except ValueError as exc:
        raise ClaimRefused(f"The invoice is not valid: {exc}.") from None
    now = rt.clock.now_ms()
    amount = link.row["amount"]
    reason = claims.invoice_refusal(
        invoice, amount_sats=amount, network=rt.settings.lightning_network, now_ms=now
    )
    if reason is not None:
        raise ClaimRefused(f"Invoice refused: {reason}.")
    payout_id = link.payout["id"]
    path = link.payout["settle_path"] or payouts.PATH_INLINE
    inline = path == payouts.PATH_INLINE
    send_until = now + claims.SEND_WINDOW_S * 1000
    try:
        async with rt.engine.begin() as conn:
            claimed = await conn.execute(
                update(withdrawals)
                .where(
                    W.id == link_id,
                    W.status == claims.StoredStatus.OPEN.value,
                    W.expires_at > now,
                )
                .values(
                    status=claims.StoredStatus.CLAIMED.value,
                    claimed_at=now,
                    updated_at=now,
                    payment_hash=invoice.payment_hash,
                )
                .returning(W.id)
            )
            if claimed.first() is None:
                raise ClaimRefused("This link was already claimed.")
            # The payout gets its one invoice while it is still reserved, unexpired and not
            # waiting for an approver (a reject needs approval = required: one of them
            # wins); the unique live-payment-hash index refuses an invoice another holds.
            destined = await conn.execute(
                update(payouts_table)
                .where(
                    P.id == payout_id,
                    P.state == State.RESERVED.value,
                    P.expires_at > now,
                    or_(P.approval.is_(None), P.approval == claims.APPROVAL_APPROVED),
                )
                .values(
                    invoice=invoice.bolt11,
                    payment_hash=invoice.payment_hash,
                    expires_at=send_until,
                    expires_in=claims.SEND_WINDOW_S,
                    updated_at=now,
                )
                .returning(P.id)
            )
            if destined.first() is None:
                raise ClaimRefused("This link has expired, or is not approved.")
            await queue.enqueue(
                conn,
                payouts.SETTLE_JOB,
                {"payoutId": payout_id},
                now,
                job_id=payouts.settle_job_id(payout_id),
                max_attempts=payouts.SETTLE_ATTEMPTS_MAX,
                leased_by=rt.worker_id if inline else None,
                lease_ms=rt.settings.lease_ms,
            )
    except IntegrityError:
        raise ClaimRefused(
            "This invoice is already being paid by another payout; send a new invoice."
        ) from None
    log.info("withdrawal_claimed", withdrawal_id=link_id, payout_id=payout_id)
    rt.crashpoint("after_withdrawal_claim")
    if inline:  # this process holds the job's lease: send now (a worker takes over if it dies)
        rt.spawn(payouts.settle_payout(rt, payout_id, job_leased=True))
    refreshed = await _load(rt, link_id)
    assert refreshed is not None
    return refreshed


def sandbox_wallet_invoice(rt: Runtime, body: Any) -> dict[str, Any]:
    """Sandbox: the invoice a player's wallet would hand a claim link's callback, for the
    server's network, signed by a throwaway key (the simulated node pays any invoice)."""
    import bolt11
    from bolt11.models.tags import Tag, TagChar, Tags

    amount = body.get("amount") if isinstance(body, dict) else None
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= 10**8:
        raise errors.InvalidAmount("amount must be an integer number of sats.", field="amount")
    payment_hash = secrets.token_hex(32)
    tags = Tags(
        [
            Tag(TagChar.payment_hash, payment_hash),
            Tag(TagChar.payment_secret, secrets.token_hex(32)),
            Tag(TagChar.expire_time, SANDBOX_INVOICE_EXPIRY_S),
            Tag(TagChar.description, "sandbox player wallet"),
        ]
    )
    encoded = bolt11.encode(
        bolt11.Bolt11(
            currency=invoices.NETWORK_CURRENCY[rt.settings.lightning_network],
            date=rt.clock.now_ms() // 1000,
            tags=tags,
            amount_msat=bolt11.MilliSatoshi(amount * 1000),
        ),
        secrets.token_hex(32),
    )
    return {"invoice": encoded, "paymentHash": payment_hash, "amount": amount}


async def page(rt: Runtime, link_id: str, k1: Any) -> tuple[Link, claims.Status]:
    """What the claim page shows: the link (if its k1 is right) and its status."""
    link = await public_link(rt, link_id, k1)
    return link, status(rt, link)
