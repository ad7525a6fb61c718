"""flat cost as history grows: checkpoints, indexes, rollups (filled in by that work)

Revision ID: 0013_flat_cost
Revises: 0012_lean_writes
Create Date: 2026-12-07 02:30:00
"""

revision = "0013_flat_cost"
down_revision = "0012_lean_writes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
