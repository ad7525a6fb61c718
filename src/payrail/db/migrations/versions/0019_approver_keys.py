"""approver keys: project keys with the approver role, and the held payouts' queue index

Revision ID: 0019_approver_keys
Revises: 0018_payout_controls
Create Date: 2026-12-08 09:00:00

- project_approver_keys: a project's keys with the `approver` role (services/project_keys.py):
  each may approve or reject the project's held payouts and nothing else (it creates no
  payout, moves no money of its own). Only the key's SHA-256 is kept; a revoked key has
  revoked_at.
- ix_payouts_held (project_id, created_at, id) and ix_payouts_held_all (created_at, id), only
  the payouts waiting for an approver (reserved, approval required): the dashboard's
  approvals queue reads a page of them, keyset-paginated, and no other row.
"""

from alembic import op
import sqlalchemy as sa


revision = "0019_approver_keys"
down_revision = "0018_payout_controls"
branch_labels = None
depends_on = None

HELD = "approval = 'required' AND state = 'reserved'"


def upgrade() -> None:
    op.create_table(
        "project_approver_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=40), nullable=True),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash", name="uq_project_approver_keys_key_hash"),
    )
    op.create_index(
        "ix_project_approver_keys_project", "project_approver_keys", ["project_id", "created_at"]
    )
    op.create_index(
        "ix_payouts_held",
        "payouts",
        ["project_id", "created_at", "id"],
        postgresql_where=sa.text(HELD),
        sqlite_where=sa.text(HELD),
    )
    op.create_index(
        "ix_payouts_held_all",
        "payouts",
        ["created_at", "id"],
        postgresql_where=sa.text(HELD),
        sqlite_where=sa.text(HELD),
    )


def downgrade() -> None:
    op.drop_index("ix_payouts_held_all", table_name="payouts")
    op.drop_index("ix_payouts_held", table_name="payouts")
    op.drop_index("ix_project_approver_keys_project", table_name="project_approver_keys")
    op.drop_table("project_approver_keys")
