"""one live payout per payment hash, internal ids unique per project (filled in by that work)

Revision ID: 0014_unique_keys
Revises: 0013_flat_cost
Create Date: 2026-12-07 02:30:00
"""

revision = "0014_unique_keys"
down_revision = "0013_flat_cost"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
