"""The hot path on PostgreSQL: each transaction one function call (migration 0011), on a
small asyncpg pool of its own (no SQLAlchemy between the request and the driver: each
statement is prepared once per connection and each call is one round trip).

Lookups, reservations and final transitions are grouped per process (`grouping.Grouped`):
a call goes out at once when none of its kind is on its way; what arrives meanwhile goes
together in the next one (payrail_reserve_many, payrail_finalize_many: one round trip and one
commit for the group, each item decided as it would be alone). No timer, so a lone payout
waits for nothing (it is a group of one). A group call that fails as a whole (a same-key
race, anything unexpected) is redone item by item, so each item gets its own answer or
error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from payrail.ledger import ledger
from payrail.services.hot_path import (
    DuplicateKey,
    Finalization,
    NeedsGeneralPath,
    Refused,
    Reservation,
)
from payrail.support.grouping import Grouped

POOL_MIN = 1
POOL_MAX = 10  # per process; SQLAlchemy's pool serves everything else

# Per item, one unique-index lookup each. The LIMIT keeps each LATERAL subquery a subquery
# run per item: without it the planner may flatten it into a join and, on a table it believes
# small (statistics from when it was), hash the whole index: measured, 4,244 buffers read per
# call after 11,000 payouts, growing with the table.
LOOKUP_MANY_SQL = (
    "SELECT i.n, 'payout', x.j"
    " FROM jsonb_to_recordset($1) AS i(n int, pid text, k text, r text)"
    " CROSS JOIN LATERAL (SELECT row_to_json(po)::text AS j FROM payouts po"
    "  WHERE i.k IS NOT NULL AND po.project_id = i.pid AND po.idempotency_key = i.k LIMIT 1) x"
    " UNION ALL"
    " SELECT i.n, 'recipient', x.j"
    " FROM jsonb_to_recordset($1) AS i(n int, pid text, k text, r text)"
    " CROSS JOIN LATERAL (SELECT row_to_json(re)::text AS j FROM recipients re"
    "  WHERE i.r IS NOT NULL AND re.project_id = i.pid AND re.gamertag_key = i.r LIMIT 1) x"
)
RESERVE_MANY_SQL = (
    "SELECT item, outcome, detail FROM payrail_reserve_many($1, $2, $3, $4, $5, $6, $7, $8)"
)
FINALIZE_MANY_SQL = "SELECT outcome, payout FROM payrail_finalize_many($1)"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class PostgresHotPath:
    def __init__(self, url: str, server_settings: dict[str, str]) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        # Every statement here finds its rows through an index by design. PL/pgSQL caches a
        # function's plans per session, and on a new database they are made while the tables
        # are nearly empty (no statistics yet): sequential scans, kept as the tables grow until
        # the next ANALYZE (measured: 445 payouts/s falling to 218 within the first minute of
        # a fresh database, 768 once analyzed). With sequential scans priced out, the cached
        # plans are index scans from the first call. A plan priced with that penalty would
        # pass jit_above_cost and be compiled to machine code at every execution: no JIT here.
        # Generic plans only: the statements here differ by ids and keys, for which a plan
        # made once is the right one, and PostgreSQL otherwise went on planning some of them
        # at every call (measured: planning was ~20 % of its CPU at 10 connections, and
        # generic plans cut its CPU per payout from 1.8 to 1.6 ms). An ANALYZE (autovacuum's,
        # or db/maintenance.py's) invalidates them, so they follow the tables as they grow.
        self._server_settings = server_settings | {
            "enable_seqscan": "off",
            "jit": "off",
            "plan_cache_mode": "force_generic_plan",
        }
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self.calls = 0  # statements sent (bench_costs counts them)
        self._looking_up = Grouped(self._lookup_many, lambda item: item)
        self._reserving = Grouped(self._reserve_many, lambda r: r.row["id"])
        self._finalizing = Grouped(self._finalize_many, lambda f: f.payout_id)

    async def _connections(self) -> asyncpg.Pool:
        self.calls += 1
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=POOL_MIN,
                        max_size=POOL_MAX,
                        server_settings=self._server_settings,
                        reset=_keep_session,
                    )
        return self._pool

    async def lookup(
        self, project_id: str, idempotency_key: str | None, recipient_key: str | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return await self._looking_up.submit(  # type: ignore[no-any-return]
            (project_id, idempotency_key, recipient_key)
        )

    async def _lookup_many(self, group: list[tuple[str, str | None, str | None]]) -> list[Any]:
        pool = await self._connections()
        items = [{"n": n, "pid": p, "k": k, "r": r} for n, (p, k, r) in enumerate(group)]
        found: list[list[Any]] = [[None, None] for _ in group]
        for n, what, row in await pool.fetch(LOOKUP_MANY_SQL, _json(items)):
            found[n][0 if what == "payout" else 1] = json.loads(row)
        return [tuple(pair) for pair in found]

    async def reserve(self, r: Reservation) -> None:
        await self._reserving.submit(r)

    async def _reserve_many(self, group: list[Reservation]) -> list[Any]:
        """Each item: None (reserved) or its Refused; raises for the group to go item by item."""
        pool = await self._connections()
        first = group[0]
        items = [
            {
                "i": i,
                "payout": r.row,
                "job": r.job,
                "callback": r.callback,
                "callback_job": r.callback_job,
                "transfers": list(r.transfers),
                "recipient_key": r.recipient_key,
            }
            for i, r in enumerate(group)
        ]
        assert all(_settings_of(r) == _settings_of(first) for r in group)
        answers: list[Any] = [None] * len(group)
        try:
            rows = await pool.fetch(RESERVE_MANY_SQL, _json(items), *_settings_of(first))
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name == "payouts":  # a same-key request committed first
                raise DuplicateKey(str(exc)) from None
            raise
        for i, outcome, detail in rows:
            if outcome != "reserved":
                answers[i] = _refusal(outcome, detail)
        return answers

    async def finalize(self, f: Finalization) -> dict[str, Any] | None:
        return await self._finalizing.submit(f)  # type: ignore[no-any-return]

    async def _finalize_many(self, group: list[Finalization]) -> list[Any]:
        """Each item's new row; None if it was no longer in its state; NeedsGeneralPath."""
        pool = await self._connections()
        items = [
            {
                "id": f.payout_id,
                "cur": f.current,
                "target": f.target,
                "now": f.now,
                "cause": f.cause,
                "charge": bool(f.values.get("charge_posted")),
                "settled_at": f.values.get("settled_at"),
                "failure_code": f.values.get("failure_code"),
                "failure_reason": f.values.get("failure_reason"),
                "job_id": f.job_id,
                "transfer_ids": list(f.transfer_ids),
                "post": f.post,
            }
            for f in group
        ]
        try:
            found = await pool.fetch(FINALIZE_MANY_SQL, _json(items))
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name == "transfers":  # a second resolution: the call rolled back
                raise ledger.AlreadyResolved(f"already resolved: {exc}") from None
            raise
        outcomes: dict[str, Any] = {}
        for outcome, value in found:
            if outcome == "general":
                outcomes[value] = NeedsGeneralPath(value)
            else:
                row = json.loads(value)
                outcomes[row["id"]] = row
        return [outcomes.get(f.payout_id) for f in group]

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: none. Every use here is one autocommitted statement that
    sets no session state (no SET, LISTEN, cursor or advisory lock), and asyncpg rolls back an
    open transaction itself before this; its default reset query costs a round trip per use."""


def _settings_of(r: Reservation) -> tuple[int, ...]:
    """The recipient guard's settings, as the functions take them (one set per process)."""
    return (
        r.rate_limit,
        r.rate_window_ms,
        r.failures_max,
        r.failure_window_s,
        r.block_s,
        r.failures_scan_max,
        r.failure_lookback_ms,
    )


def _refusal(kind: str, detail: str | None) -> Refused:
    """A refusal from its kind and its figures ("until failures_max window_s" when blocked)."""
    figures = [int(x) for x in (detail or "").split()]
    if kind == "blocked":
        return Refused(kind, figures[0], failures_max=figures[1], window_s=figures[2])
    return Refused(kind, figures[0] if figures else None)
