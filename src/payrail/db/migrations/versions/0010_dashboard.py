"""dashboard: browser sessions and kept reconciliation results

Revision ID: 0010_dashboard
Revises: 0009_perf
Create Date: 2026-12-03 09:50:00

Sessions are server-side (the cookie is a random token, stored hashed) so that signing out,
or rotating the key a session was opened with, ends it at once.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_dashboard"
down_revision = "0009_perf"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_dashboard_sessions")),
    )
    op.create_index("ix_dashboard_sessions_expires", "dashboard_sessions", ["expires_at"])
    op.create_table(
        "reconcile_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("clean", sa.Boolean(), nullable=False),
        sa.Column("payouts_checked", sa.Integer(), nullable=False),
        sa.Column("orders_checked", sa.Integer(), nullable=False),
        sa.Column("discrepancy_count", sa.Integer(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
    )
    op.create_index("ix_reconcile_runs_at", "reconcile_runs", ["at_ms"])


def downgrade() -> None:
    op.drop_index("ix_reconcile_runs_at", table_name="reconcile_runs")
    op.drop_table("reconcile_runs")
    op.drop_index("ix_dashboard_sessions_expires", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
