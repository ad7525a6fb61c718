"""payout hot path on PostgreSQL: a payout's two transactions as one function call each

Revision ID: 0011_hot_path
Revises: 0010_dashboard
Create Date: 2026-12-03 13:30:00

services/hot_path/ describes each transaction once in Python (every row it writes, as JSON);
these functions carry it out in one round trip, committed on their own. Sent statement by
statement, a payout cost ~25 round trips and held the project's account lock across the
Python in between (README, "Benchmark").

Each function takes a list of payouts: one process's concurrent requests share a call
(services/hot_path/postgres.py groups what arrives while a call is on its way), and a lone
payout is a list of one. Same steps, same order and the same lock order as the general path
(services/payouts.py, ledger/ledger.py), one class of lock at a time, each in id order:

- payrail_reserve_many: every (project, recipient) lock of the group, then per item (sorted by
  project, then in order) the checks (project, key, failed-payout block, rate limit) and the
  debit with its balance check, the payout, job, callback and transfer rows; then the
  credited system accounts, in id order, once. An item is decided as it would be alone; a
  refused item writes nothing (the lock rows created for recipients that got no payout are
  deleted) and comes back as (item, kind, figures). Anything unexpected (a same-key race on
  the unique index, an unknown account) fails the whole call, and the caller reserves each
  item alone.
- payrail_finalize_many: the payouts locked in id order, each guarded UPDATE only from its
  expected state (audited by trigger), the jobs, the resolutions, then every account the
  group moves, locked in id order. An item comes back as ('final', its new row as JSON); one
  whose payout has a callback URL as ('general', its id), untouched (its event payload is
  built in Python: the caller runs the general path); one no longer in its state not at all.

Every statement finds its rows through an id, key or index, never by joining the items to a
whole table. SQLite has no such functions: its unit runs on the one writer connection instead
(services/hot_path/sqlite.py).
"""

from alembic import op

revision = "0011_hot_path"
down_revision = "0010_dashboard"
branch_labels = None
depends_on = None

RESERVE_MANY = """
CREATE FUNCTION payrail_reserve_many(
  p_items jsonb, p_rate_limit integer, p_rate_window_ms bigint,
  p_failures_max integer, p_failure_window_s integer, p_block_s integer,
  p_failures_scan_max integer, p_failure_lookback_ms bigint
) RETURNS TABLE (item integer, outcome text, detail text) LANGUAGE plpgsql AS $$
DECLARE
  v_item jsonb;
  v_payout jsonb;
  v_project text;
  v_key text;
  v_recipient text;
  v_now bigint;
  v_failures_max integer;
  v_window_s integer;
  v_block_s integer;
  v_horizon bigint;
  v_failed bigint[];
  v_n integer;
  v_until bigint;
  v_oldest bigint;
  v_debit text;
  v_total bigint;
  v_available bigint;
  v_reserved jsonb := '[]'::jsonb;
  v_credit record;
  v_new_locks text[];
  v_paid_locks text[] := '{}';
  v_lock text;
BEGIN
  -- Every (project, recipient) lock of the group, in order, before anything is counted.
  -- The rows this call creates are remembered: those of recipients that get no payout here
  -- are deleted at the end, so a refused item leaves no row behind (as alone).
  WITH locked AS (
  INSERT INTO gamertag_locks (project_id, gamertag, touched_at)
  SELECT project_id, recipient, max(touched_at) FROM (
    SELECT x->'payout'->>'project_id' AS project_id, x->>'recipient_key' AS recipient,
           (x->'payout'->>'created_at')::bigint AS touched_at
      FROM jsonb_array_elements(p_items) x
  ) l
  WHERE EXISTS (SELECT 1 FROM projects WHERE id = l.project_id)
  GROUP BY project_id, recipient ORDER BY project_id, recipient
  ON CONFLICT (project_id, gamertag) DO UPDATE SET touched_at = EXCLUDED.touched_at
  RETURNING project_id || chr(31) || gamertag AS lock_key, xmax = 0 AS created
  )
  SELECT array_agg(lock_key) FILTER (WHERE created) INTO v_new_locks FROM locked;
  FOR v_item IN
    SELECT x FROM jsonb_array_elements(p_items) x
     ORDER BY x->'payout'->>'project_id', (x->>'i')::integer
  LOOP
    item := (v_item->>'i')::integer;
    detail := NULL;
    v_payout := v_item->'payout';
    v_project := v_payout->>'project_id';
    v_key := v_payout->>'idempotency_key';
    v_recipient := v_item->>'recipient_key';
    v_now := (v_payout->>'created_at')::bigint;
    v_until := NULL;
    v_oldest := NULL;
    SELECT COALESCE(recipient_failures_max, p_failures_max),
           COALESCE(recipient_failure_window_s, p_failure_window_s),
           COALESCE(recipient_block_s, p_block_s)
      INTO v_failures_max, v_window_s, v_block_s FROM projects WHERE id = v_project;
    IF NOT FOUND THEN
      outcome := 'no_project';
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF v_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM payouts WHERE project_id = v_project AND idempotency_key = v_key) THEN
      outcome := 'key_taken';
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF v_failures_max > 0 THEN
      v_horizon := v_now - (v_window_s + v_block_s)::bigint * 1000;
      SELECT array_agg(f.updated_at ORDER BY f.updated_at) INTO v_failed FROM (
        SELECT updated_at FROM payouts
         WHERE project_id = v_project AND lower(gamertag) = v_recipient
           AND created_at > v_horizon - p_failure_lookback_ms
           AND state = 'failed' AND updated_at > v_horizon
         ORDER BY updated_at DESC LIMIT p_failures_scan_max) f;
      v_n := COALESCE(array_length(v_failed, 1), 0);
      IF v_n >= v_failures_max THEN
        FOR i IN v_failures_max..v_n LOOP
          IF v_failed[i] - v_failed[i - v_failures_max + 1] <= v_window_s::bigint * 1000 THEN
            v_until := v_failed[i] + v_block_s::bigint * 1000;
          END IF;
        END LOOP;
      END IF;
    END IF;
    IF v_until IS NOT NULL AND v_until > v_now THEN
      outcome := 'blocked';
      detail := v_until || ' ' || v_failures_max || ' ' || v_window_s;
      RETURN NEXT;
      CONTINUE;
    END IF;
    SELECT created_at INTO v_oldest FROM payouts
     WHERE project_id = v_project AND lower(gamertag) = v_recipient
       AND created_at > v_now - p_rate_window_ms
     ORDER BY created_at DESC OFFSET p_rate_limit - 1 LIMIT 1;
    IF v_oldest IS NOT NULL THEN
      outcome := 'rate_limited';
      detail := v_oldest::text;
      RETURN NEXT;
      CONTINUE;
    END IF;
    -- The debit with its balance check: a refusal here has written nothing for the item.
    SELECT min(t.debit_account_id), sum(t.amount), count(DISTINCT t.debit_account_id)
      INTO v_debit, v_total, v_n
      FROM jsonb_populate_recordset(NULL::transfers, v_item->'transfers') t;
    IF v_n <> 1 THEN
      RAISE EXCEPTION 'linked transfers share one debit account';
    END IF;
    UPDATE accounts SET debits_pending = debits_pending + v_total
     WHERE id = v_debit
       AND (allow_negative OR credits_posted - debits_posted - debits_pending >= v_total);
    IF NOT FOUND THEN
      SELECT credits_posted - debits_posted - debits_pending INTO v_available
        FROM accounts WHERE id = v_debit;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown account %', v_debit;
      END IF;
      outcome := 'insufficient';
      detail := v_available::text;
      RETURN NEXT;
      CONTINUE;
    END IF;
    INSERT INTO payouts SELECT * FROM jsonb_populate_record(NULL::payouts, v_payout);
    INSERT INTO jobs SELECT * FROM jsonb_populate_record(NULL::jobs, v_item->'job');
    IF jsonb_typeof(v_item->'callback') = 'object' THEN
      INSERT INTO callbacks
        SELECT * FROM jsonb_populate_record(NULL::callbacks, v_item->'callback');
      INSERT INTO jobs SELECT * FROM jsonb_populate_record(NULL::jobs, v_item->'callback_job');
    END IF;
    INSERT INTO transfers
      SELECT * FROM jsonb_populate_recordset(NULL::transfers, v_item->'transfers');
    v_reserved := v_reserved || (v_item->'transfers');
    v_paid_locks := v_paid_locks || (v_project || chr(31) || v_recipient);
    outcome := 'reserved';
    RETURN NEXT;
  END LOOP;
  FOR v_lock IN SELECT k FROM unnest(v_new_locks) k WHERE NOT (k = ANY(v_paid_locks)) LOOP
    DELETE FROM gamertag_locks
     WHERE project_id = split_part(v_lock, chr(31), 1)
       AND gamertag = split_part(v_lock, chr(31), 2);
  END LOOP;
  -- The credits of every reserved item, the credited accounts locked in id order.
  FOR v_credit IN
    SELECT t.credit_account_id AS id, sum(t.amount) AS amount
      FROM jsonb_populate_recordset(NULL::transfers, v_reserved) t
     GROUP BY t.credit_account_id ORDER BY t.credit_account_id
  LOOP
    UPDATE accounts SET credits_pending = credits_pending + v_credit.amount
     WHERE id = v_credit.id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'unknown account %', v_credit.id;
    END IF;
  END LOOP;
END $$
"""

FINALIZE_MANY = """
CREATE FUNCTION payrail_finalize_many(p_items jsonb)
RETURNS TABLE (outcome text, payout text) LANGUAGE plpgsql AS $$
DECLARE
  v_all text[];
  v_changed payouts[];
  v_ids text[];
  v_tids text[];
  v_n integer;
  v_accounts text[];
  v_dp bigint[];
  v_dd bigint[];
  v_cp bigint[];
  v_cc bigint[];
BEGIN
  -- Every statement below finds its rows through an id array (an index scan), never by
  -- joining the items to a whole table.
  v_all := ARRAY(SELECT i->>'id' FROM jsonb_array_elements(p_items) i ORDER BY 1);
  PERFORM 1 FROM payouts WHERE id = ANY(v_all) ORDER BY id FOR UPDATE;
  RETURN QUERY
    SELECT 'general', p.id::text FROM payouts p
      JOIN jsonb_to_recordset(p_items) AS i(id text, cur text) ON p.id = i.id
     WHERE p.id = ANY(v_all) AND p.state = i.cur AND p.callback_url IS NOT NULL;
  WITH items AS (
    SELECT * FROM jsonb_to_recordset(p_items) AS i(
      id text, cur text, target text, now bigint, cause text, charge boolean,
      settled_at bigint, failure_code text, failure_reason text)
  ), changed AS (
    UPDATE payouts p SET state = i.target, updated_at = i.now, state_cause = i.cause,
           charge_posted = i.charge,
           settled_at = COALESCE(i.settled_at, p.settled_at),
           failure_code = COALESCE(i.failure_code, p.failure_code),
           failure_reason = CASE WHEN i.failure_code IS NULL THEN p.failure_reason
                                 ELSE i.failure_reason END
      FROM items i
     WHERE p.id = ANY(v_all) AND p.id = i.id AND p.state = i.cur AND p.callback_url IS NULL
    RETURNING p.*
  )
  SELECT array_agg(c ORDER BY c.id) INTO v_changed FROM changed c;
  IF v_changed IS NULL THEN
    RETURN;
  END IF;
  v_ids := ARRAY(SELECT c.id FROM unnest(v_changed) c);
  v_tids := ARRAY(
    SELECT unnest(i.transfer_ids)
      FROM jsonb_to_recordset(p_items) AS i(id text, transfer_ids text[])
     WHERE i.id = ANY(v_ids));
  UPDATE jobs j SET state = 'done', lease_until = NULL, locked_by = NULL, updated_at = i.now
    FROM jsonb_to_recordset(p_items) AS i(id text, job_id text, now bigint)
   WHERE j.id = ANY(ARRAY(SELECT x->>'job_id' FROM jsonb_array_elements(p_items) x
                          WHERE x->>'id' = ANY(v_ids)))
     AND j.id = i.job_id;
  -- The resolutions (the unique pending_id refuses a second one: the call rolls back).
  INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, pending_id, kind,
                         timeout_at, created_at)
  SELECT t.id || ':' || CASE WHEN i.post THEN 'post' ELSE 'void' END, t.debit_account_id,
         t.credit_account_id, t.amount, t.id,
         CASE WHEN i.post THEN 'post' ELSE 'void' END, NULL, i.now
    FROM transfers t
    JOIN jsonb_to_recordset(p_items) AS i(id text, post boolean, now bigint, transfer_ids text[])
      ON t.id = ANY(i.transfer_ids)
   WHERE t.id = ANY(v_tids) AND t.kind = 'pending' AND i.id = ANY(v_ids);
  GET DIAGNOSTICS v_n = ROW_COUNT;
  IF v_n <> cardinality(v_tids) THEN
    RAISE EXCEPTION 'not pending transfers among %', v_tids;
  END IF;
  -- The balances: every account the group moves, locked in id order, then changed at once.
  SELECT array_agg(account ORDER BY account), array_agg(dp ORDER BY account),
         array_agg(dd ORDER BY account), array_agg(cp ORDER BY account),
         array_agg(cc ORDER BY account)
    INTO v_accounts, v_dp, v_dd, v_cp, v_cc
    FROM (
      SELECT account, sum(dp) AS dp, sum(dd) AS dd, sum(cp) AS cp, sum(cc) AS cc FROM (
        SELECT t.debit_account_id AS account, -t.amount AS dp,
               CASE WHEN t.kind = 'post' THEN t.amount ELSE 0 END AS dd, 0 AS cp, 0 AS cc
          FROM transfers t WHERE t.pending_id = ANY(v_tids)
        UNION ALL
        SELECT t.credit_account_id, 0, 0, -t.amount,
               CASE WHEN t.kind = 'post' THEN t.amount ELSE 0 END
          FROM transfers t WHERE t.pending_id = ANY(v_tids)
      ) moves GROUP BY account
    ) d;
  PERFORM 1 FROM accounts WHERE id = ANY(v_accounts) ORDER BY id FOR UPDATE;
  UPDATE accounts a SET debits_pending = a.debits_pending + d.dp,
         debits_posted = a.debits_posted + d.dd,
         credits_pending = a.credits_pending + d.cp,
         credits_posted = a.credits_posted + d.cc
    FROM unnest(v_accounts, v_dp, v_dd, v_cp, v_cc) AS d(id, dp, dd, cp, cc)
   WHERE a.id = ANY(v_accounts) AND a.id = d.id;
  RETURN QUERY SELECT 'final', row_to_json(c)::text FROM unnest(v_changed) c;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE_MANY)
        op.execute(FINALIZE_MANY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION payrail_finalize_many")
        op.execute("DROP FUNCTION payrail_reserve_many")
