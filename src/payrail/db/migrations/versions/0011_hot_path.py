"""payout hot path on PostgreSQL: a payout's two transactions as one function call each

Revision ID: 0011_hot_path
Revises: 0010_dashboard
Create Date: 2026-12-03 13:30:00

services/hot_path/ describes each transaction once in Python (every row it writes, as JSON);
these functions carry it out in one round trip, committed on their own. Sent statement by
statement, a payout cost ~25 round trips and held the project's account lock across the
Python in between; now it is one call per transaction (README, "Benchmark").

Refusals raise SQLSTATE PR001 with the refusal's kind as the message and its figures as the
detail, so the whole call rolls back (nothing written, the recipient's lock row included);
PR002 says the case is not covered here (a payout with a callback URL: its event payload is
built in Python from the final row) and the caller runs the general path. Same steps, same
order and the same lock order as the general path (services/payouts.py, ledger/ledger.py):
project account first, then the credited accounts sorted by id. SQLite has no such functions;
its unit runs on the one writer connection instead (services/hot_path/sqlite.py).
"""

from alembic import op

revision = "0011_hot_path"
down_revision = "0010_dashboard"
branch_labels = None
depends_on = None

RESERVE = """
CREATE FUNCTION payrail_reserve(
  p_payout jsonb, p_job jsonb, p_callback jsonb, p_callback_job jsonb, p_transfers jsonb,
  p_recipient_key text, p_rate_limit integer, p_rate_window_ms bigint,
  p_failures_max integer, p_failure_window_s integer, p_block_s integer,
  p_failures_scan_max integer, p_failure_lookback_ms bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_project text := p_payout->>'project_id';
  v_key text := p_payout->>'idempotency_key';
  v_now bigint := (p_payout->>'created_at')::bigint;
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
  v_credit record;
BEGIN
  SELECT COALESCE(recipient_failures_max, p_failures_max),
         COALESCE(recipient_failure_window_s, p_failure_window_s),
         COALESCE(recipient_block_s, p_block_s)
    INTO v_failures_max, v_window_s, v_block_s FROM projects WHERE id = v_project;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PR001', MESSAGE = 'no_project';
  END IF;
  IF v_key IS NOT NULL AND EXISTS (
      SELECT 1 FROM payouts WHERE project_id = v_project AND idempotency_key = v_key) THEN
    RAISE EXCEPTION USING ERRCODE = 'PR001', MESSAGE = 'key_taken';
  END IF;
  -- The (project, recipient) lock: the guard's counts below are exact under concurrency.
  INSERT INTO gamertag_locks (project_id, gamertag, touched_at)
    VALUES (v_project, p_recipient_key, v_now)
    ON CONFLICT (project_id, gamertag) DO UPDATE SET touched_at = EXCLUDED.touched_at;
  -- The failed-payout block: any v_failures_max failures within the window block the
  -- recipient for v_block_s from the last of them (recipient_guard.blocked_until_ms).
  IF v_failures_max > 0 THEN
    v_horizon := v_now - (v_window_s + v_block_s)::bigint * 1000;
    SELECT array_agg(f.updated_at ORDER BY f.updated_at) INTO v_failed FROM (
      SELECT updated_at FROM payouts
       WHERE project_id = v_project AND lower(gamertag) = p_recipient_key
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
  IF v_until IS NULL OR v_until <= v_now THEN
    v_until := NULL;
    -- The rate limit: the limit-th newest payout in the window, if there is one.
    SELECT created_at INTO v_oldest FROM payouts
     WHERE project_id = v_project AND lower(gamertag) = p_recipient_key
       AND created_at > v_now - p_rate_window_ms
     ORDER BY created_at DESC OFFSET p_rate_limit - 1 LIMIT 1;
  END IF;
  IF v_until IS NOT NULL OR v_oldest IS NOT NULL THEN
    -- A same-key request may have committed while we waited for the lock: replay wins.
    IF v_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM payouts WHERE project_id = v_project AND idempotency_key = v_key) THEN
      RAISE EXCEPTION USING ERRCODE = 'PR001', MESSAGE = 'key_taken';
    END IF;
    IF v_until IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = 'PR001', MESSAGE = 'blocked',
        DETAIL = v_until || ' ' || v_failures_max || ' ' || v_window_s;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'PR001', MESSAGE = 'rate_limited', DETAIL = v_oldest;
  END IF;
  -- The payout row (its audit row by trigger), its settle job, its created callback.
  INSERT INTO payouts SELECT * FROM jsonb_populate_record(NULL::payouts, p_payout);
  INSERT INTO jobs SELECT * FROM jsonb_populate_record(NULL::jobs, p_job);
  IF p_callback IS NOT NULL THEN
    INSERT INTO callbacks SELECT * FROM jsonb_populate_record(NULL::callbacks, p_callback);
    INSERT INTO jobs SELECT * FROM jsonb_populate_record(NULL::jobs, p_callback_job);
  END IF;
  -- The reservation: the debit with its balance check, then the pending transfers and
  -- their credits, the credited accounts locked in id order.
  SELECT min(t.debit_account_id), sum(t.amount), count(DISTINCT t.debit_account_id)
    INTO v_debit, v_total, v_n
    FROM jsonb_populate_recordset(NULL::transfers, p_transfers) t;
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
    RAISE EXCEPTION USING ERRCODE = 'PR001', MESSAGE = 'insufficient', DETAIL = v_available;
  END IF;
  INSERT INTO transfers SELECT * FROM jsonb_populate_recordset(NULL::transfers, p_transfers);
  FOR v_credit IN
    SELECT t.credit_account_id AS id, sum(t.amount) AS amount
      FROM jsonb_populate_recordset(NULL::transfers, p_transfers) t
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

FINALIZE = """
CREATE FUNCTION payrail_finalize(
  p_id text, p_from text, p_to text, p_now bigint, p_cause text, p_charge boolean,
  p_settled_at bigint, p_failure_code text, p_failure_reason text, p_job_id text,
  p_transfer_ids text[], p_post boolean
) RETURNS SETOF payouts LANGUAGE plpgsql AS $$
DECLARE
  v_row payouts;
  v_debit text;
  v_total bigint;
  v_n integer;
  v_credit record;
BEGIN
  -- The guarded transition (its audit row by trigger): only from p_from.
  UPDATE payouts SET state = p_to, updated_at = p_now, state_cause = p_cause,
         charge_posted = p_charge,
         settled_at = COALESCE(p_settled_at, settled_at),
         failure_code = COALESCE(p_failure_code, failure_code),
         failure_reason = CASE WHEN p_failure_code IS NULL THEN failure_reason
                               ELSE p_failure_reason END
   WHERE id = p_id AND state = p_from
  RETURNING * INTO v_row;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  IF v_row.callback_url IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PR002', MESSAGE = 'needs_general_path';
  END IF;
  UPDATE jobs SET state = 'done', lease_until = NULL, locked_by = NULL, updated_at = p_now
   WHERE id = p_job_id;
  -- The resolutions: the unique pending_id refuses a second one (the call rolls back).
  INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, pending_id, kind,
                         timeout_at, created_at)
  SELECT id || ':' || CASE WHEN p_post THEN 'post' ELSE 'void' END, debit_account_id,
         credit_account_id, amount, id, CASE WHEN p_post THEN 'post' ELSE 'void' END,
         NULL, p_now
    FROM transfers WHERE id = ANY(p_transfer_ids) AND kind = 'pending';
  GET DIAGNOSTICS v_n = ROW_COUNT;
  IF v_n <> cardinality(p_transfer_ids) THEN
    RAISE EXCEPTION 'not pending transfers: %', p_transfer_ids;
  END IF;
  SELECT min(debit_account_id), sum(amount), count(DISTINCT debit_account_id)
    INTO v_debit, v_total, v_n
    FROM transfers WHERE id = ANY(p_transfer_ids);
  IF v_n <> 1 THEN
    RAISE EXCEPTION 'linked transfers share one debit account';
  END IF;
  UPDATE accounts SET debits_pending = debits_pending - v_total,
         debits_posted = debits_posted + CASE WHEN p_post THEN v_total ELSE 0 END
   WHERE id = v_debit;
  FOR v_credit IN
    SELECT credit_account_id AS id, sum(amount) AS amount FROM transfers
     WHERE id = ANY(p_transfer_ids) GROUP BY credit_account_id ORDER BY credit_account_id
  LOOP
    UPDATE accounts SET credits_pending = credits_pending - v_credit.amount,
           credits_posted = credits_posted + CASE WHEN p_post THEN v_credit.amount ELSE 0 END
     WHERE id = v_credit.id;
  END LOOP;
  RETURN NEXT v_row;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE)
        op.execute(FINALIZE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION payrail_finalize")
        op.execute("DROP FUNCTION payrail_reserve")
