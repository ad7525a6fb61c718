"""deposits: money in (filled in by that work)

Revision ID: 0015_deposits
Revises: 0014_unique_keys
Create Date: 2026-12-07 02:30:00
"""

revision = "0015_deposits"
down_revision = "0014_unique_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
