"""The hot path of a payout: each of its two transactions as ONE unit, sent to the database once.

A payout's reservation (tx1) and its final transition (tx2) are a dozen statements each. Sent
one by one through SQLAlchemy, they cost more Python than the work they ask of the database,
and they hold the project's account lock across every round trip. Here each transaction is
described once in Python (`Reservation`, `Finalization`: every row it writes, built by
services/payouts.py, the one place that knows their values) and carried out by the database
side in one go:

- PostgreSQL (`postgres.py`): one call of a PL/pgSQL function (migration 0011), one round trip,
  committed on its own. Behind PgBouncer the same call runs inside SQLAlchemy's transaction.
- SQLite (`sqlite.py`): the same steps as raw statements on the one writer connection, with
  no await between them, inside the writer's group commit.

The steps, in this order on both (the ledger's lock order: project account, then the
credited system accounts sorted by id):

    reserve   project exists (else no_project); key unused (else key_taken)
              lock (project, recipient); failed-payout block; rate limit
                  (a refusal re-checks the key: a same-key request that committed meanwhile
                  is a replay, not a 429)
              INSERT payout (its audit row by trigger; a same-key race: DuplicateKey)
              INSERT settle job; INSERT created callback + its job (if any)
              debit the project account with the balance check (else insufficient)
              INSERT the two pending transfers; credit their accounts
    finalize  guarded UPDATE of the payout (only from `current`; else None: someone else won)
              a payout with a callback URL: NeedsGeneralPath (its event payload is built in
                  Python from the final row; services/payouts.py runs the general path)
              settle job done; post or void the two pending transfers

A refusal writes nothing: the unit is rolled back whole. services/payouts.py maps each
`Refused` to the same API error as the general path (recipient_guard's and the ledger's
wording), and the general path (SQLAlchemy, statement by statement) stays the reference: it
runs when no unit exists for the database (`PAYRAIL_HOT_PATH=0`, or a unit refuses to run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Reservation:
    """Everything tx1 writes, built once in Python (services/payouts.py)."""

    row: dict[str, Any]  # the payouts row (payout_row)
    recipient_key: str  # the gamertag lowercased: the lock and the guard's key
    job: dict[str, Any]  # the settle job's jobs row
    transfers: tuple[dict[str, Any], dict[str, Any]]  # the two pending transfers rows
    #   (ledger.transfer_row: amount and fee, both debiting the project's account)
    callback: dict[str, Any] | None  # the 'created' callbacks row, if the payout has a URL
    callback_job: dict[str, Any] | None  # its delivery job's jobs row
    rate_limit: int  # payouts per recipient per rolling hour
    rate_window_ms: int
    failures_max: int  # server defaults of the failed-payout block; a project overrides each
    failure_window_s: int
    block_s: int
    failures_scan_max: int
    failure_lookback_ms: int


@dataclass(frozen=True)
class Finalization:
    """Everything tx2 writes for one payout."""

    payout_id: str
    current: str  # the state it must be in (State value)
    target: str
    now: int
    cause: str  # payouts.state_cause, already bounded (audit.cause_text)
    values: dict[str, Any]  # charge_posted, and settled_at / failure_code / failure_reason
    job_id: str
    transfer_ids: tuple[str, str]
    post: bool  # True: post the pending transfers (charged); False: void them


class Refused(Exception):
    """tx1 refused; nothing was written. kind and what the API's answer needs:

    no_project; key_taken; blocked (value: until ms; failures_max, failure_window_s of the
    policy in force); rate_limited (value: created_at of the limit-th newest payout);
    insufficient (value: the available balance)."""

    def __init__(
        self, kind: str, value: int | None = None, failures_max: int = 0, window_s: int = 0
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.value = value
        self.failures_max = failures_max
        self.window_s = window_s


class DuplicateKey(Exception):
    """The unique (project, idempotency key) index refused the payout row: a concurrent
    request with the same key committed first. Nothing was written."""


class NeedsGeneralPath(Exception):
    """The unit does not cover this case (a payout with a callback URL); nothing was written."""


class HotPath(Protocol):
    async def lookup(
        self, project_id: str, idempotency_key: str | None, recipient_key: str | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """In one read: the payout of this project holding the key (None: no key, or unused)
        and the directory entry of this recipient (None: no recipient_key, or unregistered)."""

    async def reserve(self, reservation: Reservation) -> None:
        """tx1, committed when this returns; raises Refused or DuplicateKey having written
        nothing."""

    async def finalize(self, finalization: Finalization) -> dict[str, Any] | None:
        """tx2, committed when this returns: the payout's new row, or None if it was not in
        `current`; NeedsGeneralPath having written nothing."""

    async def aclose(self) -> None: ...


def for_engine(engine: Any) -> HotPath | None:
    """The unit for this engine's database, or None where the general path must run: behind
    PgBouncer (transaction pooling; the call would need SQLAlchemy's transaction there, and
    the general path already runs in one)."""
    from payrail.db.engine import PGBOUNCER_URL_PARAM, pg_server_settings
    from payrail.db.sqlite import SQLiteEngine

    if isinstance(engine, SQLiteEngine):
        from payrail.services.hot_path.sqlite import SqliteHotPath

        return SqliteHotPath(engine)
    if engine.dialect.name == "postgresql":
        if engine.get_execution_options().get(PGBOUNCER_URL_PARAM):
            return None
        from payrail.services.hot_path.postgres import PostgresHotPath

        return PostgresHotPath(
            engine.url.render_as_string(hide_password=False),
            pg_server_settings(),
        )
    return None
