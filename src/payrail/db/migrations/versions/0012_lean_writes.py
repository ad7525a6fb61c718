"""lean writes on PostgreSQL: a statement-level audit trigger, indexes only where they are read

Revision ID: 0012_lean_writes
Revises: 0011_hot_path
Create Date: 2026-12-03 19:00:00

Measured on `payrail bench`'s batch run (perf, PostgreSQL's share of the machine): index
insertions were ~27 % of PostgreSQL's CPU and the per-row audit trigger ~11 %.

- The audit trigger fires once per statement and writes that statement's payout_events rows
  with one INSERT … SELECT over its transition tables, where it ran a PL/pgSQL call and an
  INSERT per payout: a batch's 100-payout UPDATE was 100 of each. Same rows, same causes:
  an insert is recorded as created; an update only where the state changed, with the cause
  the UPDATE set, or 'unattributed: …' if it set none (migration 0005). PostgreSQL allows
  transition tables only on triggers without a column list, so the UPDATE trigger fires for
  every UPDATE of payouts and keeps the rows whose state changed.
- Partial indexes, each keeping only the rows it is read for:
  - ix_payouts_state: open payouts (reserved, in flight); the queries that use it ask for
    those (expiry, open totals, the dashboard's open list).
  - ix_payouts_internal: payouts with an internal id (GET by internal id names one).
  - ix_jobs_due: jobs not done (claiming, dead-job listing, queue gauges).
  - ix_payout_events_recent: completed and failed events (the flag guards' success rate).
  - uq_transfers_pending_id: resolutions (a pending transfer has no pending_id; unique
    still means one resolution per pending transfer).
  A finished payout's or job's row then leaves these indexes instead of adding to them.

SQLite keeps its row triggers and full indexes: it has no statement triggers with transition
tables, and its planner uses a partial index only for a query that repeats its condition.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0012_lean_writes"
down_revision = "0011_hot_path"
branch_labels = None
depends_on = None

COLUMNS = "payout_id, from_status, to_status, cause, at_ms"

AUDIT_INSERTED = f"""
CREATE FUNCTION payrail_payouts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO payout_events ({COLUMNS})
  SELECT n.id, NULL, n.state, COALESCE(n.state_cause, 'created'), n.updated_at FROM new_rows n;
  RETURN NULL;
END $$
"""
AUDIT_UPDATED = f"""
CREATE FUNCTION payrail_payouts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO payout_events ({COLUMNS})
  SELECT n.id, o.state, n.state,
         CASE WHEN n.state_cause IS DISTINCT FROM o.state_cause THEN n.state_cause
              ELSE 'unattributed: state changed without a cause' END,
         n.updated_at
  FROM new_rows n JOIN old_rows o ON o.id = n.id
  WHERE n.state IS DISTINCT FROM o.state;
  RETURN NULL;
END $$
"""
TRIGGERS = (
    "CREATE TRIGGER payouts_audit_inserted AFTER INSERT ON payouts"
    " REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION payrail_payouts_inserted()",
    "CREATE TRIGGER payouts_audit_updated AFTER UPDATE ON payouts"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION payrail_payouts_updated()",
)

# (name, table, columns, condition): condition None is the index as it was.
INDEXES = (
    ("ix_payouts_state", "payouts", "state, expires_at", "state IN ('reserved', 'in_flight')"),
    ("ix_payouts_internal", "payouts", "project_id, internal_id", "internal_id IS NOT NULL"),
    ("ix_jobs_due", "jobs", "state, run_at", "state <> 'done'"),
    (
        "ix_payout_events_recent",
        "payout_events",
        "to_status, at_ms",
        "to_status IN ('completed', 'failed')",
    ),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER payouts_audit ON payouts")
    op.execute("DROP FUNCTION payrail_payout_audit()")
    op.execute(AUDIT_INSERTED)
    op.execute(AUDIT_UPDATED)
    for statement in TRIGGERS:
        op.execute(statement)
    for name, table, columns, condition in INDEXES:
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON {table} ({columns}) WHERE {condition}")
    op.execute("ALTER TABLE transfers DROP CONSTRAINT uq_transfers_pending_id")
    op.execute(
        "CREATE UNIQUE INDEX uq_transfers_pending_id ON transfers (pending_id)"
        " WHERE pending_id IS NOT NULL"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX uq_transfers_pending_id")
    op.execute("ALTER TABLE transfers ADD CONSTRAINT uq_transfers_pending_id UNIQUE (pending_id)")
    for name, table, columns, _ in INDEXES:
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    op.execute("DROP TRIGGER payouts_audit_updated ON payouts")
    op.execute("DROP TRIGGER payouts_audit_inserted ON payouts")
    op.execute("DROP FUNCTION payrail_payouts_updated()")
    op.execute("DROP FUNCTION payrail_payouts_inserted()")
    audit = _revision_0005()  # its row trigger, as it was
    op.execute(audit.PG_FUNCTION)
    op.execute(audit.PG_TRIGGER)


def _revision_0005() -> ModuleType:
    path = Path(__file__).with_name("0005_payout_audit_triggers.py")
    spec = importlib.util.spec_from_file_location("payrail_revision_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
