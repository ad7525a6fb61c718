"""payout audit trail written by the database: triggers on payouts

Revision ID: 0005_audit_triggers
Revises: 0004_ops
Create Date: 2026-11-23 01:15:00

Every insert of a payout and every change of payouts.state writes one payout_events row, in
the statement that made the change. The cause travels in payouts.state_cause, set by the same
UPDATE. Two reasons over an INSERT from the application: no state change can escape the trail
(whatever code or operator runs the UPDATE), and a guarded transition stays ONE statement, so
the send intent (reserved → in_flight) needs no transaction of its own: one round trip where it
took four (README, "Benchmark").
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_audit_triggers"
down_revision = "0004_ops"
branch_labels = None
depends_on = None

COLUMNS = "payout_id, from_status, to_status, cause, at_ms"


# A state change whose UPDATE did not set a new cause (raw SQL, a forgotten path) is recorded
# all the same, and says so instead of repeating the previous cause.
def _update_cause(distinct: str) -> str:
    return (
        f"CASE WHEN NEW.state_cause {distinct} OLD.state_cause THEN NEW.state_cause "
        "ELSE 'unattributed: state changed without a cause' END"
    )


PG_FUNCTION = f"""
CREATE FUNCTION payrail_payout_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO payout_events ({COLUMNS})
    VALUES (NEW.id, NULL, NEW.state, COALESCE(NEW.state_cause, 'created'), NEW.updated_at);
  ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
    INSERT INTO payout_events ({COLUMNS})
    VALUES (NEW.id, OLD.state, NEW.state, {_update_cause("IS DISTINCT FROM")}, NEW.updated_at);
  END IF;
  RETURN NULL;
END $$
"""
PG_TRIGGER = (
    "CREATE TRIGGER payouts_audit AFTER INSERT OR UPDATE OF state ON payouts "
    "FOR EACH ROW EXECUTE FUNCTION payrail_payout_audit()"
)
SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER payouts_audit_insert AFTER INSERT ON payouts BEGIN
  INSERT INTO payout_events ({COLUMNS})
  VALUES (NEW.id, NULL, NEW.state, COALESCE(NEW.state_cause, 'created'), NEW.updated_at);
END""",
    f"""CREATE TRIGGER payouts_audit_update AFTER UPDATE OF state ON payouts
WHEN NEW.state IS NOT OLD.state BEGIN
  INSERT INTO payout_events ({COLUMNS})
  VALUES (NEW.id, OLD.state, NEW.state, {_update_cause("IS NOT")}, NEW.updated_at);
END""",
)


def upgrade() -> None:
    op.add_column("payouts", sa.Column("state_cause", sa.String(length=120), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER payouts_audit ON payouts")
        op.execute("DROP FUNCTION payrail_payout_audit()")
    else:
        op.execute("DROP TRIGGER payouts_audit_update")
        op.execute("DROP TRIGGER payouts_audit_insert")
    with op.batch_alter_table("payouts") as batch:
        batch.drop_column("state_cause")
