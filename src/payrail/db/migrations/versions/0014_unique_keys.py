"""one payout engine: its rules leave the database; one live payout per invoice, internal ids
unique per project

Revision ID: 0014_unique_keys
Revises: 0013_flat_cost
Create Date: 2026-12-07 02:30:00

- The payout rules now live once, in Python (domain/payout_engine.py), and both databases'
  storage (db/payout_store/) only loads and writes: the PL/pgSQL functions of migration 0011
  are dropped.
- One payment hash belongs to at most one payout that is not voided (a payout whose
  reservation was released: failed or expired without a charge). The engine refuses a second
  one (409 INVOICE_ALREADY_USED) under its lock; this unique index also refuses one that a
  concurrent transaction of another project committed first.
- gamertag_locks goes: the engine counts a recipient's payouts under the project account's
  row lock, which every payout of the project takes first; a lock row per recipient was a
  write per payout (0.17 GB at 1.5 M payouts) that serialised nothing more.
- ix_payouts_payment_hash finds a hash's payouts (the engine reads them all, voided included).
- internalId names one payout per project. The engine refuses a second one (409
  INTERNAL_ID_TAKEN) under the project's account lock, which every payout of a project takes.
  Where an older database already holds duplicates, the unique index cannot be built: the
  migration keeps the plain index and says so; the engine's rule holds from now on anyway.
"""

import logging

from alembic import op
from sqlalchemy import text

revision = "0014_unique_keys"
down_revision = "0013_flat_cost"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

LIVE = "payment_hash IS NOT NULL AND NOT (state IN ('failed', 'expired') AND NOT charge_posted)"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS payrail_reserve_many")
        op.execute("DROP FUNCTION IF EXISTS payrail_finalize_many")
    # The rate limit's lock rows: the engine counts under the project account's lock instead.
    op.execute("DROP TABLE IF EXISTS gamertag_locks")
    op.execute(
        "CREATE INDEX ix_payouts_payment_hash ON payouts (payment_hash)"
        " WHERE payment_hash IS NOT NULL"
    )
    op.execute(f"CREATE UNIQUE INDEX uq_payouts_live_payment_hash ON payouts (payment_hash) WHERE {LIVE}")
    duplicates = bind.execute(
        text(
            "SELECT count(*) FROM (SELECT 1 FROM payouts WHERE internal_id IS NOT NULL"
            " GROUP BY project_id, internal_id HAVING count(*) > 1) d"
        )
    ).scalar()
    if duplicates:
        log.warning(
            "%s internal ids name more than one payout: uq_payouts_internal_id not created;"
            " new duplicates are refused by the payout engine",
            duplicates,
        )
        return
    op.execute(
        "CREATE UNIQUE INDEX uq_payouts_internal_id ON payouts (project_id, internal_id)"
        " WHERE internal_id IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS gamertag_locks (project_id VARCHAR(64) NOT NULL,"
        " gamertag VARCHAR(64) NOT NULL, touched_at BIGINT NOT NULL,"
        " PRIMARY KEY (project_id, gamertag))"
    )
    op.execute("DROP INDEX IF EXISTS uq_payouts_internal_id")
    op.execute("DROP INDEX IF EXISTS uq_payouts_live_payment_hash")
    op.execute("DROP INDEX IF EXISTS ix_payouts_payment_hash")
