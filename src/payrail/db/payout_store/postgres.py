"""The payout engine's storage on PostgreSQL: asyncpg, one statement per step.

A reservation group is four round trips however many items it holds:

    1. BEGIN and the row locks of every account the group can move, sorted by id (the
       ledger's one lock order), sent together as one simple query;
    2. one read of everything the rules need (a JSON document: projects, balances, keys,
       each recipient's recent and failed payouts, invoices, internal ids), after the locks,
       so it sees every commit that came before them;
    3. one write of what `payout_engine.decide` reserved (data-modifying CTEs: the payout,
       job, callback and transfer rows, the balance changes);
    4. COMMIT.

A group of final transitions: BEGIN with the payouts' and then the accounts' row locks, the
guarded UPDATE of each payout (only from its expected state), one write, COMMIT.

Every statement finds its rows through an id, a key or an index, never by joining the items
to a whole table. Behind PgBouncer (transaction pooling) the same statements run unprepared,
with the session settings set per transaction instead of at connect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from payrail.db.payout_store import (
    DuplicateKey,
    Entry,
    Final,
    GroupExtra,
    OnFinal,
    Writes,
    snapshot,
)
from payrail.domain import payout_engine as engine
from payrail.ledger.accounts import project_account
from payrail.support.grouping import Grouped

POOL_MIN = 1
POOL_MAX = 10  # per process; SQLAlchemy's pool serves everything else
HASH_ROWS_MAX = 16  # payouts read per payment hash (all but one of them are voided)

# A group's lookups in one statement: per item (in order) one unique-index lookup each. The
# LIMIT keeps each LATERAL subquery a subquery run per item: without it the planner may flatten
# it into a join and hash a whole index.
LOOKUP_SQL = """
SELECT (SELECT row_to_json(po)::text FROM payouts po
          WHERE i.k IS NOT NULL AND po.project_id = i.pid AND po.idempotency_key = i.k LIMIT 1),
       (SELECT row_to_json(re)::text FROM recipients re
          WHERE i.rk IS NOT NULL AND re.project_id = i.pid AND re.gamertag_key = i.rk LIMIT 1)
FROM ROWS FROM (json_to_recordset($1::json) AS (pid text, k text, rk text))
  WITH ORDINALITY AS i(pid, k, rk, n)
ORDER BY i.n
"""

LOAD_SQL = (
    """
SELECT json_build_object(
 'projects', (SELECT json_agg(json_build_array(p.id, p.recipient_failures_max,
                p.recipient_failure_window_s, p.recipient_block_s))
              FROM projects p WHERE p.id = ANY($1::text[])),
 'accounts', (SELECT json_agg(json_build_array(a.id,
                a.credits_posted - a.debits_posted - a.debits_pending, a.allow_negative))
              FROM accounts a WHERE a.id = ANY($2::text[])),
 'keys', (SELECT json_agg(x.j) FROM json_to_recordset($3::json) AS i(pid text, k text)
          CROSS JOIN LATERAL (SELECT row_to_json(po) AS j FROM payouts po
            WHERE po.project_id = i.pid AND po.idempotency_key = i.k LIMIT 1) x),
 'recent', (SELECT json_agg(json_build_array(i.pid, i.rk, x.created_at))
            FROM json_to_recordset($13::json) AS i(pid text, rk text)
            CROSS JOIN LATERAL (SELECT po.created_at FROM payouts po
              WHERE po.project_id = i.pid AND lower(po.gamertag) = i.rk
                AND po.player_id IS NULL AND po.created_at > $5
              ORDER BY po.created_at DESC LIMIT $6) x),
 'recent_p', (SELECT json_agg(json_build_array(i.pid, i.pl, x.created_at))
            FROM json_to_recordset($14::json) AS i(pid text, pl text)
            CROSS JOIN LATERAL (SELECT po.created_at FROM payouts po
              WHERE po.project_id = i.pid AND po.player_id = i.pl AND po.created_at > $5
              ORDER BY po.created_at DESC LIMIT $6) x),
 'quotes', (SELECT json_agg(json_build_array(q.quote_id, q.payout_id))
            FROM quote_uses q WHERE q.quote_id = ANY($16::text[])),
 'caps', (SELECT json_agg(json_build_array(l.project_id, l.per_payout_max_sats,
            l.per_player_daily_max_sats, l.project_daily_max_sats, l.approval_above_sats))
          FROM project_limits l WHERE l.project_id = ANY($1::text[])),
 'spent', (SELECT json_agg(json_build_array(l.project_id, x.b, x.state, x.charge_posted, x.s))
           FROM project_limits l CROSS JOIN LATERAL (SELECT BUCKET AS b, po.state,
             po.charge_posted, sum(po.amount) AS s FROM payouts po
             WHERE po.project_id = l.project_id AND po.created_at > $15 GROUP BY 1, 2, 3) x
           WHERE l.project_id = ANY($1::text[]) AND l.project_daily_max_sats IS NOT NULL),
 'spent_r', (SELECT json_agg(json_build_array(i.pid, i.rk, x.b, x.state, x.charge_posted, x.s))
           FROM json_to_recordset($13::json) AS i(pid text, rk text)
           CROSS JOIN LATERAL (SELECT 1 FROM project_limits l WHERE l.project_id = i.pid
             AND l.per_player_daily_max_sats IS NOT NULL LIMIT 1) l
           CROSS JOIN LATERAL (SELECT BUCKET AS b, po.state, po.charge_posted,
             sum(po.amount) AS s FROM payouts po
             WHERE po.project_id = i.pid AND lower(po.gamertag) = i.rk
               AND po.player_id IS NULL AND po.created_at > $15 GROUP BY 1, 2, 3) x),
 'spent_p', (SELECT json_agg(json_build_array(i.pid, i.pl, x.b, x.state, x.charge_posted, x.s))
           FROM json_to_recordset($14::json) AS i(pid text, pl text)
           CROSS JOIN LATERAL (SELECT 1 FROM project_limits l WHERE l.project_id = i.pid
             AND l.per_player_daily_max_sats IS NOT NULL LIMIT 1) l
           CROSS JOIN LATERAL (SELECT BUCKET AS b, po.state, po.charge_posted,
             sum(po.amount) AS s FROM payouts po
             WHERE po.project_id = i.pid AND po.player_id = i.pl AND po.created_at > $15
             GROUP BY 1, 2, 3) x),
 'failed', (SELECT json_agg(json_build_array(i.pid, i.rk, x.updated_at, x.created_at))
            FROM json_to_recordset($4::json) AS i(pid text, rk text)
            CROSS JOIN LATERAL (SELECT po.updated_at, po.created_at FROM payouts po
              WHERE po.project_id = i.pid AND lower(po.gamertag) = i.rk AND po.created_at > $7
                AND po.state = 'failed' AND po.updated_at > $8
              ORDER BY po.updated_at DESC LIMIT $9) x),
 'hashes', (SELECT json_agg(json_build_array(i.h, x.id, x.state, x.charge_posted))
            FROM json_to_recordset($10::json) AS i(h text)
            CROSS JOIN LATERAL (SELECT po.id, po.state, po.charge_posted FROM payouts po
              WHERE po.payment_hash = i.h LIMIT $12) x),
 'iids', (SELECT json_agg(json_build_array(i.pid, i.iid, x.id))
          FROM json_to_recordset($11::json) AS i(pid text, iid text)
          CROSS JOIN LATERAL (SELECT po.id FROM payouts po
            WHERE po.project_id = i.pid AND po.internal_id = i.iid LIMIT 1) x)
)::text
"""
).replace("BUCKET", f"po.created_at / {engine.SPENT_BUCKET_MS} * {engine.SPENT_BUCKET_MS}")

WRITE_SQL = """
WITH p AS (INSERT INTO payouts SELECT * FROM jsonb_populate_recordset(NULL::payouts, $1::jsonb)),
 j AS (INSERT INTO jobs SELECT * FROM jsonb_populate_recordset(NULL::jobs, $2::jsonb)),
 c AS (INSERT INTO callbacks
       SELECT * FROM jsonb_populate_recordset(NULL::callbacks, $3::jsonb)),
 t AS (INSERT INTO transfers
       SELECT * FROM jsonb_populate_recordset(NULL::transfers, $4::jsonb)),
 q AS (INSERT INTO quote_uses
       SELECT * FROM jsonb_populate_recordset(NULL::quote_uses, $8::jsonb)),
 done AS (UPDATE jobs SET state = 'done', lease_until = NULL, locked_by = NULL,
          updated_at = $7 WHERE id = ANY($6::text[]) RETURNING id),
 a AS (UPDATE accounts a SET debits_pending = a.debits_pending + d.dp,
         debits_posted = a.debits_posted + d.dd, credits_pending = a.credits_pending + d.cp,
         credits_posted = a.credits_posted + d.cc
       FROM jsonb_to_recordset($5::jsonb) AS d(id text, dp bigint, dd bigint, cp bigint,
         cc bigint)
       WHERE a.id = d.id RETURNING a.id)
SELECT count(*) FROM a
"""

TRANSITION_SQL = """
UPDATE payouts p SET state = i.target, updated_at = i.now, state_cause = i.cause,
  charge_posted = i.charge, settled_at = COALESCE(i.settled_at, p.settled_at),
  failure_code = COALESCE(i.failure_code, p.failure_code),
  failure_reason = CASE WHEN i.failure_code IS NULL THEN p.failure_reason
                        ELSE i.failure_reason END
FROM jsonb_to_recordset($1::jsonb) AS i(id text, cur text, target text, now bigint,
  cause text, charge boolean, settled_at bigint, failure_code text, failure_reason text)
WHERE p.id = ANY($2::text[]) AND p.id = i.id AND p.state = i.cur
RETURNING row_to_json(p)::text
"""

# Session settings of the store's connections. Every statement here finds its rows through
# an index by design; on a new database the cached plans are made while the tables are
# nearly empty (sequential scans, kept as they grow): with sequential scans priced out they
# are index scans from the first call. A plan priced with that penalty would pass
# jit_above_cost: no JIT. Generic plans: the statements differ by ids and keys only.
STORE_SETTINGS = {"enable_seqscan": "off", "jit": "off", "plan_cache_mode": "force_generic_plan"}


def _literal(text: str) -> str:
    """A string as an SQL literal (standard_conforming_strings: only quotes are special)."""
    assert "\x00" not in text
    return "'" + text.replace("'", "''") + "'"


def _lock(table: str, ids: Sequence[str]) -> str:
    listed = ", ".join(_literal(i) for i in sorted(set(ids)))
    return f"SELECT 1 FROM {table} WHERE id IN ({listed}) ORDER BY id FOR UPDATE"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class PostgresPayoutStore:
    def __init__(
        self, url: str, server_settings: dict[str, str], *, behind_pgbouncer: bool = False
    ) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._pgbouncer = behind_pgbouncer
        settings = server_settings | STORE_SETTINGS
        # PgBouncer refuses most startup parameters: there they are set per transaction.
        self._begin = "BEGIN"
        if behind_pgbouncer:
            self._begin += "".join(f"; SET LOCAL {k} = {_literal(v)}" for k, v in settings.items())
        self._server_settings = {} if behind_pgbouncer else settings
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self.calls = 0
        self._looking_up = Grouped(self._lookup_many, lambda item: item)

    async def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    extra = {"statement_cache_size": 0} if self._pgbouncer else {}
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=POOL_MIN,
                        max_size=POOL_MAX,
                        server_settings=self._server_settings,
                        reset=_keep_session,
                        **extra,
                    )
        return self._pool

    # ------------------------------------------------------------ lookup (committed data)

    async def lookup(
        self, project_id: str, idempotency_key: str | None, recipient_key: str | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return await self._looking_up.submit(  # type: ignore[no-any-return]
            (project_id, idempotency_key, recipient_key)
        )

    async def _lookup_many(self, group: list[tuple[str, str | None, str | None]]) -> list[Any]:
        pool = await self._connections()
        asked = _json([{"pid": p, "k": k, "rk": r} for p, k, r in group])
        async with pool.acquire() as conn:
            self.calls += 1
            found = await conn.fetch(LOOKUP_SQL, asked)
        assert len(found) == len(group), "one answer per lookup"
        return [(_row(payout), _row(entry)) for payout, entry in found]

    # ------------------------------------------------------------ reserve

    async def reserve(
        self,
        entries: Sequence[Entry],
        limits: engine.Limits,
        extra: GroupExtra | None = None,
    ) -> list[engine.Decision]:
        items = [e.item for e in entries]
        pids = sorted({i.project_id for i in items})
        locked = {project_account(p) for p in pids} | {a for e in entries for a in e.lock_accounts}
        async with self._transaction(_lock("accounts", sorted(locked))) as conn:
            self.calls += 1
            loaded = json.loads(await conn.fetchval(LOAD_SQL, *self._load_params(items, limits)))
            snap = snapshot(entries, limits, **_parsed(loaded))
            decisions = engine.decide(items, snap, limits, [e.payout_id for e in entries])
            reserved = [e for e, d in zip(entries, decisions, strict=True) if d is engine.RESERVE]
            taken = [w for e, d in zip(entries, decisions, strict=True) if (w := e.writes_for(d))]
            if taken:
                writes = Writes()
                for one in taken:
                    writes.add(one)
                if extra is not None and reserved:
                    writes.add(extra(reserved))
                assert set(writes.accounts()) <= locked, "every account moved is locked"
                await self._write(conn, writes, 0)
        return decisions

    def _load_params(self, items: Sequence[engine.Item], limits: engine.Limits) -> list[Any]:
        now_ms = min(i.now_ms for i in items)
        updated_after, created_after = engine.failure_since_ms(now_ms)
        pids = sorted({i.project_id for i in items})
        keys = {(i.project_id, i.idempotency_key) for i in items if i.idempotency_key}
        who = sorted({(i.project_id, i.recipient) for i in items})
        by_recipient = sorted({(i.project_id, i.recipient) for i in items if not i.player_id})
        by_player = sorted({(i.project_id, i.player_id) for i in items if i.player_id})
        hashes = sorted({i.payment_hash for i in items if i.payment_hash})
        iids = {(i.project_id, i.internal_id) for i in items if i.internal_id}
        return [
            pids,
            [project_account(p) for p in pids],
            _json([{"pid": p, "k": k} for p, k in sorted(keys)]),
            _json([{"pid": p, "rk": r} for p, r in who]),
            now_ms - engine.RATE_WINDOW_MS,
            limits.rate_limit,
            created_after,
            updated_after,
            engine.FAILURES_SCAN_MAX,
            _json([{"h": h} for h in hashes]),
            _json([{"pid": p, "iid": i} for p, i in sorted(iids)]),
            HASH_ROWS_MAX,
            _json([{"pid": p, "rk": r} for p, r in by_recipient]),
            _json([{"pid": p, "pl": pl} for p, pl in by_player]),
            now_ms - engine.DAY_MS,
            sorted({i.quote_id for i in items if i.quote_id}),
        ]

    # ------------------------------------------------------------ finalize

    async def finalize(self, finals: Sequence[Final], on_final: OnFinal) -> list[Any]:
        ids = sorted({f.payout_id for f in finals})
        assert len(ids) == len(finals), "one transition per payout per call"
        accounts = sorted({a for f in finals for a in f.lock_accounts})
        # The payouts' project accounts through projects.account_id (no naming rule here).
        listed = ", ".join(_literal(i) for i in ids)
        project_accounts = (
            "SELECT pr.account_id FROM projects pr JOIN payouts po ON po.project_id = pr.id"
            f" WHERE po.id IN ({listed})"
        )
        lock_accounts = (
            f"SELECT 1 FROM accounts WHERE id IN ({project_accounts})"
            f" OR id IN ({', '.join(_literal(a) for a in accounts)}) ORDER BY id FOR UPDATE"
        )
        by_id = {f.payout_id: f for f in finals}
        answers: dict[str, Any] = {}
        async with self._transaction(_lock("payouts", ids), lock_accounts) as conn:
            self.calls += 1
            items = [
                {
                    "id": f.payout_id,
                    "cur": f.current,
                    "target": f.target,
                    "now": f.now_ms,
                    "cause": f.cause,
                    "charge": bool(f.values.get("charge_posted")),
                    "settled_at": f.values.get("settled_at"),
                    "failure_code": f.values.get("failure_code"),
                    "failure_reason": f.values.get("failure_reason"),
                }
                for f in finals
            ]
            writes = Writes()
            for (text,) in await conn.fetch(TRANSITION_SQL, _json(items), ids):
                row = json.loads(text)
                answers[row["id"]] = row
                writes.add(on_final(row, by_id[row["id"]]))
            if answers:
                await self._write(conn, writes, max(f.now_ms for f in finals))
        return [answers.get(f.payout_id) for f in finals]

    # ------------------------------------------------------------ the shared steps

    def _transaction(self, *locks: str) -> _Transaction:
        return _Transaction(self, "; ".join((self._begin, *locks)))

    async def _write(self, conn: asyncpg.Connection, writes: Writes, now_ms: int) -> None:
        self.calls += 1
        deltas = [
            {"id": a, "dp": c[0], "dd": c[1], "cp": c[2], "cc": c[3]}
            for a, c in sorted(writes.deltas.items())
        ]
        rows = [_json(writes.inserts.get(t) or []) for t in ("payouts", "jobs", "callbacks")]
        try:
            moved = await conn.fetchval(
                WRITE_SQL,
                *rows,
                _json(writes.inserts.get("transfers") or []),
                _json(deltas),
                writes.jobs_done,
                now_ms,
                _json(writes.inserts.get("quote_uses") or []),
            )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateKey(_which(exc)) from None
        assert moved == len(deltas), f"unknown account among {sorted(writes.deltas)}"

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


class _Transaction:
    """BEGIN and the locks as one simple query; COMMIT on success, ROLLBACK otherwise."""

    def __init__(self, store: PostgresPayoutStore, opening: str) -> None:
        self._store, self._opening = store, opening

    async def __aenter__(self) -> asyncpg.Connection:
        pool = await self._store._connections()
        self._conn = await pool.acquire()
        try:
            self._store.calls += 1
            await self._conn.execute(self._opening)
        except BaseException:
            await self._release(rollback=True)
            raise
        return self._conn

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        await self._release(rollback=kind is not None)

    async def _release(self, *, rollback: bool) -> None:
        conn, pool = self._conn, self._store._pool
        try:
            if rollback:
                await self._rollback(conn)
            elif conn.is_in_transaction():
                self._store.calls += 1
                await conn.execute("COMMIT")  # a lost connection here raises: outcome unknown
        finally:
            if pool is not None:
                await pool.release(conn)

    async def _rollback(self, conn: asyncpg.Connection) -> None:
        """Roll back after an error; a connection already cut (PgBouncer, a failover) has
        nothing to roll back, and the error that brought us here is the one raised."""
        try:
            if conn.is_in_transaction():
                self._store.calls += 1
                await conn.execute("ROLLBACK")
        except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
            pass


def _which(exc: asyncpg.UniqueViolationError) -> str:
    name = exc.constraint_name or ""
    if "quote_uses" in name:
        return "quote_id"
    for what in ("idempotency_key", "payment_hash", "internal_id", "pending_id"):
        if what in name or what in str(exc):
            return what
    return name or "unique"


def _row(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def _parsed(loaded: dict[str, Any]) -> dict[str, Any]:
    """The load's JSON document as `payout_store.snapshot` takes it."""
    recent: dict[tuple[str, str], list[int]] = {}
    for pid, rk, created_at in loaded["recent"] or []:
        recent.setdefault((pid, rk), []).append(created_at)
    for pid, pl, created_at in loaded["recent_p"] or []:
        recent.setdefault((pid, engine.player_counter(pl)), []).append(created_at)
    spent: dict[tuple[str, str | None], list[tuple[int, str, bool, int]]] = {}
    for pid, b, state, charged, sats in loaded["spent"] or []:
        spent.setdefault((pid, None), []).append((int(b), state, bool(charged), int(sats)))
    for pid, rk, b, state, charged, sats in loaded["spent_r"] or []:
        spent.setdefault((pid, rk), []).append((int(b), state, bool(charged), int(sats)))
    for pid, pl, b, state, charged, sats in loaded["spent_p"] or []:
        key = (pid, engine.player_counter(pl))
        spent.setdefault(key, []).append((int(b), state, bool(charged), int(sats)))
    failed: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for pid, rk, updated_at, created_at in loaded["failed"] or []:
        failed.setdefault((pid, rk), []).append((updated_at, created_at))
    hashes: dict[str, list[tuple[str, str, bool]]] = {}
    for h, payout_id, state, charged in loaded["hashes"] or []:
        hashes.setdefault(h, []).append((payout_id, state, charged))
    return dict(
        projects={p[0]: tuple(p[1:]) for p in loaded["projects"] or []},
        accounts={a[0]: (int(a[1]), bool(a[2])) for a in loaded["accounts"] or []},
        keys={(k["project_id"], k["idempotency_key"]): k for k in loaded["keys"] or []},
        recent=recent,
        failed=failed,
        hashes=hashes,
        internal_ids={(p, i): payout_id for p, i, payout_id in loaded["iids"] or []},
        caps={c[0]: tuple(c[1:]) for c in loaded["caps"] or []},
        spent=spent,
        used_quotes={q: payout_id for q, payout_id in loaded["quotes"] or []},
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: none. Every use ends its transaction (COMMIT/ROLLBACK)
    and sets no session state; asyncpg's default reset query costs a round trip per use."""
