"""The payout engine's storage: load what a group of payouts touches, write what was decided.

One contract, used by every way a payout is made (services/payouts.py for a lone or grouped
request, services/batches.py for a batch's group):

    reserve(entries)   in ONE transaction: lock the accounts the group moves (sorted by id:
                       the ledger's one lock order), load a `payout_engine.Snapshot` of what
                       the rules read, let `payout_engine.decide` answer each item in order,
                       write the reserved items' rows and balance changes, commit.
    finalize(finals)   in ONE transaction: lock the accounts, the guarded transition of each
                       payout (only from its expected state), then what `on_final` says the
                       new row writes (job done, resolutions, callback event), commit.

The rules are not here: storage never decides. Each database has one implementation
(`postgres.py`: asyncpg, one statement per step; `sqlite.py`: the one writer connection,
synchronous, inside its group commit), and both run the same steps in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from payrail.domain import payout_engine
from payrail.ledger import ledger

# The tables a `Writes` inserts into, in this order.
TABLES = ("payouts", "jobs", "callbacks", "transfers", "quote_uses")


@dataclass
class Writes:
    """Rows to insert and balance changes to apply, in one transaction."""

    inserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deltas: ledger.Deltas = field(default_factory=dict)
    jobs_done: list[str] = field(default_factory=list)

    def insert(self, table: str, *rows: dict[str, Any]) -> Writes:
        assert table in TABLES, table
        self.inserts.setdefault(table, []).extend(rows)
        return self

    def add(self, other: Writes) -> Writes:
        for table in TABLES:
            if other.inserts.get(table):
                self.insert(table, *other.inserts[table])
        ledger.add_deltas(self.deltas, other.deltas)
        self.jobs_done += other.jobs_done
        return self

    def accounts(self) -> list[str]:
        """The accounts these writes move, in the one lock order."""
        return sorted(self.deltas)


@dataclass(frozen=True)
class Entry:
    """One item of a reservation group: what the rules read of it, and what it writes if it
    reserves (its payout row, jobs, callback, pending transfers and their balances)."""

    item: payout_engine.Item
    payout_id: str
    writes: Writes
    lock_accounts: tuple[str, ...]  # every account it would move
    held: Writes | None = None  # what it writes instead if held for approval (payout_engine.HOLD)

    def writes_for(self, decision: payout_engine.Decision) -> Writes | None:
        """The rows this decision writes: its reservation's, its hold's, or none."""
        if decision is payout_engine.RESERVE:
            return self.writes
        if decision is payout_engine.HOLD:
            assert self.held is not None, "an item that may be held has held writes"
            return self.held
        return None


@dataclass(frozen=True)
class Final:
    """One payout's final transition: from `current` to `target` with these column values."""

    payout_id: str
    current: str
    target: str
    now_ms: int
    cause: str
    values: dict[str, Any]  # charge_posted, settled_at, failure_code, failure_reason
    lock_accounts: tuple[str, ...]  # every account its resolution moves


# What a final row writes besides itself (services/payouts.py builds it from the new row).
OnFinal = Callable[[dict[str, Any], Final], Writes]
# Rows a reservation group adds once its reserved entries are known (a batch's group job).
GroupExtra = Callable[[list[Entry]], Writes]


class DuplicateKey(Exception):
    """A unique index refused a row decided as new: a concurrent request (another process,
    another project for one invoice) committed it first. Nothing was written."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what  # "idempotency_key" | "payment_hash" | "internal_id" | "quote_id" | …


class PayoutStore(Protocol):
    calls: int  # statements sent (bench_costs counts them)

    async def lookup(
        self, project_id: str, idempotency_key: str | None, recipient_key: str | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Committed data, one read: the payout holding this key and the recipient's
        directory entry (None where not asked or not found)."""

    async def reserve(
        self,
        entries: Sequence[Entry],
        limits: payout_engine.Limits,
        extra: GroupExtra | None = None,
    ) -> list[payout_engine.Decision]:
        """One decision per entry, the reserved ones committed; DuplicateKey having written
        nothing."""

    async def finalize(self, finals: Sequence[Final], on_final: OnFinal) -> list[Any]:
        """Each payout's new row, or None where it was not in `current`; committed."""

    async def aclose(self) -> None: ...


def for_engine(engine: Any) -> PayoutStore:
    """The store of this engine's database."""
    from payrail.db.sqlite import SQLiteEngine

    if isinstance(engine, SQLiteEngine):
        from payrail.db.payout_store.sqlite import SqlitePayoutStore

        return SqlitePayoutStore(engine)
    assert engine.dialect.name == "postgresql", engine.dialect.name
    from payrail.db.engine import PGBOUNCER_URL_PARAM, pg_server_settings
    from payrail.db.payout_store.postgres import PostgresPayoutStore

    return PostgresPayoutStore(
        engine.url.render_as_string(hide_password=False),
        pg_server_settings(),
        behind_pgbouncer=bool(engine.get_execution_options().get(PGBOUNCER_URL_PARAM)),
    )


def snapshot(
    entries: Sequence[Entry],
    limits: payout_engine.Limits,
    projects: dict[str, Sequence[Any]],
    accounts: dict[str, tuple[int, bool]],
    keys: dict[tuple[str, str], Any],
    recent: dict[tuple[str, str], list[int]],
    failed: dict[tuple[str, str], list[tuple[int, int]]],
    hashes: dict[str, list[tuple[str, str, bool]]],
    internal_ids: dict[tuple[str, str], str],
    caps: dict[str, Sequence[int | None]] | None = None,
    spent: dict[tuple[str, str | None], list[tuple[int, str, bool, int]]] | None = None,
    used_quotes: dict[str, str] | None = None,
) -> payout_engine.Snapshot:
    """The engine's Snapshot from what a store read (shared by both stores). projects: id ->
    its three policy overrides; accounts: project account -> (available, allow_negative);
    failed: (updated_at, created_at) newest first; hashes: (payout id, state, charged);
    caps: project -> its four caps (project_limits, in CAP_FIELDS order); spent: (project,
    None or counter) -> (bucket start, state, charged, sats) of its payouts in the day."""
    from payrail.ledger.accounts import project_account

    snap = payout_engine.Snapshot(projects={})
    for pid, overrides in projects.items():
        available, allow_negative = accounts[project_account(pid)]
        policy = payout_engine.policy(limits.defaults, overrides)
        found = (caps or {}).get(pid)
        project_caps = payout_engine.NO_CAPS if found is None else payout_engine.Caps(*found)
        snap.projects[pid] = payout_engine.Project(policy, available, allow_negative, project_caps)
    snap.keys = dict(keys)
    snap.recent_ms = {who: sorted(times, reverse=True) for who, times in recent.items()}
    snap.failed = {who: sorted(rows, reverse=True) for who, rows in failed.items()}
    for payment_hash, found in hashes.items():
        for payout_id, state, charged in found:
            if not payout_engine.is_voided(state, charged):
                snap.live_hashes[payment_hash] = payout_id
    snap.internal_ids = dict(internal_ids)
    for scope, rows in (spent or {}).items():
        kept: dict[int, int] = {}
        for bucket, state, charged, sats in rows:
            if not payout_engine.is_voided(state, charged):
                kept[bucket] = kept.get(bucket, 0) + int(sats)
        snap.spent[scope] = sorted(kept.items())
    snap.used_quotes = dict(used_quotes or {})
    return snap
