"""hardening: case-insensitive recipient index, per-project recipient guard overrides

Revision ID: 0008_hardening
Revises: 0007_recipients
Create Date: 2026-12-03 10:30:00

The rate limit and the failed-payout block count a recipient whatever its spelling, so they
look payouts up by lower(gamertag); the old index on the raw spelling is replaced. Projects
get three nullable overrides of the recipient guard's settings (NULL: the server default).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_hardening"
down_revision = "0007_recipients"
branch_labels = None
depends_on = None

OVERRIDES = ("recipient_failures_max", "recipient_failure_window_s", "recipient_block_s")


def upgrade() -> None:
    op.drop_index("ix_payouts_rate", table_name="payouts")
    op.create_index(
        "ix_payouts_rate_key",
        "payouts",
        ["project_id", sa.text("lower(gamertag)"), "created_at"],
    )
    for name in OVERRIDES:
        op.add_column("projects", sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        for name in OVERRIDES:
            batch.drop_column(name)
    op.drop_index("ix_payouts_rate_key", table_name="payouts")
    op.create_index("ix_payouts_rate", "payouts", ["project_id", "gamertag", "created_at"])
