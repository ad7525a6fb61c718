"""ops: payout/order audit trail, feature flags and their audit, worker heartbeats

Revision ID: 0004_ops
Revises: 0002
Create Date: 2026-11-23 00:50:00

down_revision is 0002 for now; the integrator re-chains it after the orders branch's 0003.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_ops"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "payout_events",
        _id(),
        sa.Column("payout_id", sa.String(length=36), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("cause", sa.String(length=120), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_payout_events_payout", "payout_events", ["payout_id", "at_ms"])
    op.create_index("ix_payout_events_recent", "payout_events", ["to_status", "at_ms"])
    op.create_table(
        "order_events",
        _id(),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("cause", sa.String(length=120), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_order_events_order", "order_events", ["order_id", "at_ms"])
    op.create_table(
        "feature_flags",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("rollout_percent", sa.Integer(), nullable=False),
        sa.Column("allow", sa.Text(), nullable=False),
        sa.Column("guards", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(length=120), nullable=False),
        sa.CheckConstraint(
            "rollout_percent BETWEEN 0 AND 100", name=op.f("ck_feature_flags_rollout_percent")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_feature_flags")),
    )
    op.create_table(
        "flag_changes",
        _id(),
        sa.Column("flag", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_flag_changes_flag", "flag_changes", ["flag", "at_ms"])
    op.create_table(
        "worker_heartbeats",
        sa.Column("worker_id", sa.String(length=120), nullable=False),
        sa.Column("beat_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_worker_heartbeats")),
    )
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settle_path", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_column("settle_path")
    op.drop_table("worker_heartbeats")
    op.drop_index("ix_flag_changes_flag", table_name="flag_changes")
    op.drop_table("flag_changes")
    op.drop_table("feature_flags")
    op.drop_index("ix_order_events_order", table_name="order_events")
    op.drop_table("order_events")
    op.drop_index("ix_payout_events_recent", table_name="payout_events")
    op.drop_index("ix_payout_events_payout", table_name="payout_events")
    op.drop_table("payout_events")
