"""flat cost as history grows: checkpoints, leases, indexes for every reconcile and list read

Revision ID: 0013_flat_cost
Revises: 0012_lean_writes
Create Date: 2026-12-07 02:30:00

Measured on 1.5 M payouts (issue 30): every periodic reconciliation read every payout and
transfer, on sequential scans, in every server process. This revision adds what makes the
periodic work O(changes) (services/reconcile.py, services/sweeps.py, docs/operations.md):

- reconcile_checkpoints: what the last incremental run verified, up to which time (the
  watermark), and the ledger sums per project / revenue account at that watermark, so a run
  reads only the rows changed since.
- background_leases: one row per background sweep; the process holding its lease runs it, so
  a deployment of many server processes runs each sweep once.
- payout_rollups: payouts per project, hour (of creation) and outcome, kept by a sweep
  (services/rollups.py): the dashboard's 24-hour and 7-day charts read these instead of
  every payout of the window.
- indexes, each for a read that scanned a table:
  - ix_transfers_created (created_at): the transfers since the watermark.
  - ix_transfers_debit (debit_account_id): the funded sum (debit = sys:funding) and one
    project's ledger sum, read when a balance looks wrong.
  - ix_payouts_updated (updated_at, id): the payouts changed since the watermark.
  - ix_payouts_created (created_at, id): the lists across projects, newest first.
  - ix_payouts_state_created (state, created_at, id): a status filter across projects.
  - ix_payouts_project_state (project_id, state, created_at, id): a status filter in one
    project (a rare status deep in a large project read 500 ms through ix_payouts_list).
  - ix_payouts_gamertag (lower(gamertag), created_at, id): gamertag search across projects
    (one project's search uses ix_payouts_rate_key, which leads with the project).
  - ix_orders_updated (updated_at, id): the orders changed since the watermark.
  - ix_jobs_done (updated_at) of done jobs only: pruning done jobs in batches.
  - ix_payout_batches_created (created_at): pruning batch idempotency records.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_flat_cost"
down_revision = "0012_lean_writes"
branch_labels = None
depends_on = None

# (name, table, columns): plain indexes, the same on both databases.
INDEXES = (
    ("ix_transfers_created", "transfers", ["created_at"]),
    ("ix_transfers_debit", "transfers", ["debit_account_id"]),
    ("ix_payouts_updated", "payouts", ["updated_at", "id"]),
    ("ix_payouts_created", "payouts", ["created_at", "id"]),
    ("ix_payouts_state_created", "payouts", ["state", "created_at", "id"]),
    ("ix_payouts_project_state", "payouts", ["project_id", "state", "created_at", "id"]),
    ("ix_orders_updated", "orders", ["updated_at", "id"]),
    ("ix_payout_batches_created", "payout_batches", ["created_at"]),
)


def upgrade() -> None:
    op.create_table(
        "reconcile_checkpoints",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("watermark_ms", sa.BigInteger(), nullable=False),
        sa.Column("balances", sa.Text(), nullable=False),
        sa.Column("open_findings", sa.Text(), nullable=False),
        sa.Column("verified_at", sa.BigInteger(), nullable=False),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_reconcile_checkpoints")),
    )
    op.create_table(
        "background_leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=120), nullable=False),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_background_leases")),
    )
    op.create_table(
        "payout_rollups",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("hour_ms", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("payouts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "hour_ms", "outcome", name=op.f("pk_payout_rollups")),
    )
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    op.create_index(
        "ix_payouts_gamertag",
        "payouts",
        [sa.text("lower(gamertag)"), "created_at", "id"],
    )
    done = sa.text("state = 'done'")
    op.create_index(
        "ix_jobs_done", "jobs", ["updated_at"], postgresql_where=done, sqlite_where=done
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_done", table_name="jobs")
    op.drop_index("ix_payouts_gamertag", table_name="payouts")
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_table("payout_rollups")
    op.drop_table("background_leases")
    op.drop_table("reconcile_checkpoints")
