"""The hot path on PostgreSQL: one call of payrail_reserve / payrail_finalize (migration 0011)
per transaction, on a small asyncpg pool of its own (no SQLAlchemy between the request and the
driver: the statement is prepared once per connection and each call is one round trip)."""

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

POOL_MIN = 1
POOL_MAX = 10  # per process; SQLAlchemy's pool serves everything else
REFUSED = "PR001"
GENERAL_PATH = "PR002"

LOOKUP_SQL = (
    "SELECT 'payout', row_to_json(p)::text FROM payouts p"
    " WHERE $2::text IS NOT NULL AND p.project_id = $1 AND p.idempotency_key = $2"
    " UNION ALL"
    " SELECT 'recipient', row_to_json(r)::text FROM recipients r"
    " WHERE $3::text IS NOT NULL AND r.project_id = $1 AND r.gamertag_key = $3"
)
RESERVE_SQL = "SELECT payrail_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
FINALIZE_MANY_SQL = "SELECT outcome, payout FROM payrail_finalize_many($1)"
FINALIZE_GROUP_MAX = 200  # payouts per grouped call
FINALIZE_SQL = "SELECT * FROM payrail_finalize($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class PostgresHotPath:
    def __init__(self, url: str, server_settings: dict[str, str]) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._server_settings = server_settings
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self.calls = 0  # statements sent (bench_costs counts them)
        self._finalizing: list[tuple[Finalization, asyncio.Future[Any]]] = []
        self._finalizer: asyncio.Task[None] | None = None

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
        pool = await self._connections()
        found = {
            what: json.loads(row)
            for what, row in await pool.fetch(
                LOOKUP_SQL, project_id, idempotency_key, recipient_key
            )
        }
        return found.get("payout"), found.get("recipient")

    async def reserve(self, r: Reservation) -> None:
        pool = await self._connections()
        args = (
            _json(r.row),
            _json(r.job),
            _json(r.callback),
            _json(r.callback_job),
            _json(list(r.transfers)),
            r.recipient_key,
            r.rate_limit,
            r.rate_window_ms,
            r.failures_max,
            r.failure_window_s,
            r.block_s,
            r.failures_scan_max,
            r.failure_lookback_ms,
        )
        try:
            await pool.execute(RESERVE_SQL, *args)
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name == "payouts":
                raise DuplicateKey(str(exc)) from None
            raise
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == REFUSED:
                raise _refused(exc) from None
            raise

    async def finalize(self, f: Finalization) -> dict[str, Any] | None:
        """Joins the next group: what this process's requests finish while a group call is on
        its way goes in the next call (one round trip and one commit for all of them)."""
        done: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._finalizing.append((f, done))
        if self._finalizer is None or self._finalizer.done():
            self._finalizer = asyncio.create_task(self._finalize_groups())
        return await asyncio.shield(done)  # a cancelled caller must not cancel the others

    async def _finalize_groups(self) -> None:
        while self._finalizing:
            group: list[tuple[Finalization, asyncio.Future[Any]]] = []
            later: list[tuple[Finalization, asyncio.Future[Any]]] = []
            ids: set[str] = set()
            for item in self._finalizing:
                # A payout twice in one group would be finalized once but answered twice.
                if len(group) < FINALIZE_GROUP_MAX and item[0].payout_id not in ids:
                    group.append(item)
                    ids.add(item[0].payout_id)
                else:
                    later.append(item)
            self._finalizing = later
            if len(group) > 1:
                try:
                    outcomes = await self._finalize_many([f for f, _ in group])
                except Exception:  # one item's fault fails the group: each on its own
                    outcomes = None
                if outcomes is not None:
                    for f, done in group:
                        outcome = outcomes.get(f.payout_id)
                        if done.done():
                            continue
                        if outcome == "general":
                            done.set_exception(NeedsGeneralPath(f.payout_id))
                        else:
                            done.set_result(outcome)
                    continue
            for f, done in group:
                try:
                    result = await self._finalize_one(f)
                except Exception as exc:
                    if not done.done():
                        done.set_exception(exc)
                else:
                    if not done.done():
                        done.set_result(result)

    async def _finalize_many(self, group: list[Finalization]) -> dict[str, Any]:
        """{payout id: its new row, or "general"}; an item not in its state is absent."""
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
        outcomes: dict[str, Any] = {}
        for outcome, value in await pool.fetch(FINALIZE_MANY_SQL, _json(items)):
            if outcome == "general":
                outcomes[value] = "general"
            else:
                row = json.loads(value)
                outcomes[row["id"]] = row
        return outcomes

    async def _finalize_one(self, f: Finalization) -> dict[str, Any] | None:
        pool = await self._connections()
        try:
            row = await pool.fetchrow(
                FINALIZE_SQL,
                f.payout_id,
                f.current,
                f.target,
                f.now,
                f.cause,
                bool(f.values.get("charge_posted")),
                f.values.get("settled_at"),
                f.values.get("failure_code"),
                f.values.get("failure_reason"),
                f.job_id,
                list(f.transfer_ids),
                f.post,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name == "transfers":
                raise ledger.AlreadyResolved(f"already resolved: {list(f.transfer_ids)}") from None
            raise
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == GENERAL_PATH:
                raise NeedsGeneralPath(f.payout_id) from None
            raise
        return dict(row) if row is not None else None

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: none. Every use here is one autocommitted statement that
    sets no session state (no SET, LISTEN, cursor or advisory lock), and asyncpg rolls back an
    open transaction itself before this; its default reset query costs a round trip per use."""


def _refused(exc: asyncpg.PostgresError) -> Refused:
    kind = str(exc.message)
    figures = [int(x) for x in (getattr(exc, "detail", None) or "").split()]
    if kind == "blocked":
        return Refused(kind, figures[0], failures_max=figures[1], window_s=figures[2])
    return Refused(kind, figures[0] if figures else None)
