"""payout hot path on PostgreSQL: the final transitions of concurrent payouts in one call

Revision ID: 0012_finalize_many
Revises: 0011_hot_path
Create Date: 2026-12-03 13:45:00

payrail_finalize_many(items) is payrail_finalize (0011) for many payouts at once, as one
transaction: what concurrent requests of one process finish while a call is on its way goes
in the next call (services/hot_path/postgres.py), one round trip and one commit for the group.
Locks are taken one class at a time, each in id order: the payouts, then the accounts (the
projects' sort before the system accounts' shards, as in every ledger transaction), so
groups and single transactions never wait on each other in a circle.

An item comes back as ('final', its new row as JSON) if it changed; an item whose payout has
a callback URL comes back as ('general', its id) untouched (its event payload is built in Python:
the caller runs the general path); an item no longer in its expected state is not returned.
"""

from alembic import op

revision = "0012_finalize_many"
down_revision = "0011_hot_path"
branch_labels = None
depends_on = None

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
        op.execute(FINALIZE_MANY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION payrail_finalize_many")
