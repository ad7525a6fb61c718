"""batch payouts: one row per (project, batch Idempotency-Key) with every item's answer

Revision ID: 0009_perf
Revises: 0008_hardening
Create Date: 2026-12-03 10:00:00

A replay of a batch answers the items it answered the first time, refusals included (a
refusal for lack of balance must not turn into a payout on replay because funds arrived).
"""

from alembic import op
import sqlalchemy as sa


revision = "0009_perf"
down_revision = "0008_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payout_batches",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("items_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "idempotency_key", name=op.f("pk_payout_batches")),
    )


def downgrade() -> None:
    op.drop_table("payout_batches")
