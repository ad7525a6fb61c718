"""project keys: a rotated-out API key's grace period, and the audit of every rotation

Revision ID: 0016_project_keys
Revises: 0015_deposits
Create Date: 2026-12-07 02:40:00

`POST /projects/{id}/keys` replaces a project's key (projects.api_key_hash). The key it
replaced keeps working until `expires_at` (at most one such key per project: a second
rotation ends the first one's grace at once); every rotation is one row of
project_key_events, in the same transaction as the change.
"""

from alembic import op
import sqlalchemy as sa


revision = "0016_project_keys"
down_revision = "0015_deposits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_previous_keys",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id"),
        sa.UniqueConstraint("key_hash", name="uq_project_previous_keys_key_hash"),
    )
    op.create_table(
        "project_key_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("grace_s", sa.Integer(), nullable=False),
        sa.Column("previous_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_project_key_events_project", "project_key_events", ["project_id", "at_ms"]
    )


def downgrade() -> None:
    op.drop_index("ix_project_key_events_project", table_name="project_key_events")
    op.drop_table("project_key_events")
    op.drop_table("project_previous_keys")
