"""payout hot path on PostgreSQL: the reservations of concurrent payouts in one call

Revision ID: 0013_reserve_many
Revises: 0012_finalize_many
Create Date: 2026-12-03 13:55:00

payrail_reserve_many(items, guard settings) is payrail_reserve (0011) for the payouts that
one process's concurrent requests reserve while a call is on its way: one round trip and one
commit for the group (services/hot_path/postgres.py). Each item is decided as it would be
alone, in order, and a refused item writes nothing: its answer is a row (item, kind, figures)
instead of an exception, so the others go on. Locks by class, each in order: every
(project, recipient) lock of the group first, then the items' project accounts (items sorted
by project), then the credited system accounts in id order, once, at the end. Anything
unexpected (a same-key race on the unique index, an unknown account) fails the whole call,
and the caller reserves each item alone.
"""

from alembic import op

revision = "0013_reserve_many"
down_revision = "0012_finalize_many"
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE_MANY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION payrail_reserve_many")
