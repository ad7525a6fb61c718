"""claim links: withdrawals, a payout reserved before it has a destination (LUD-03)

Revision ID: 0017_claim_links
Revises: 0016_project_keys
Create Date: 2026-12-07 11:45:00

One row per claim link (services/withdrawals.py, docs/claim-links.md). Its payout
(payout_id, unique) is reserved by the payout engine when the link is made; the row keeps
the SHA-256 of the link's secret (never the secret), its status (open → claimed | revoked,
each once, by a guarded UPDATE) and, once claimed, the invoice's payment hash.
"""

from alembic import op
import sqlalchemy as sa


revision = "0017_claim_links"
down_revision = "0016_project_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "withdrawals",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("payout_id", sa.String(length=36), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(length=144), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("payment_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_withdrawals_positive_amount")),
        sa.CheckConstraint(
            "status IN ('open','claimed','revoked')", name=op.f("ck_withdrawals_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawals")),
        sa.UniqueConstraint("payout_id", name=op.f("uq_withdrawals_payout_id")),
    )
    op.create_index("ix_withdrawals_list", "withdrawals", ["project_id", "created_at", "id"])
    op.create_index("ix_withdrawals_all", "withdrawals", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_withdrawals_all", table_name="withdrawals")
    op.drop_index("ix_withdrawals_list", table_name="withdrawals")
    op.drop_table("withdrawals")
