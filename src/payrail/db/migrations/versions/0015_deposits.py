"""deposits: money in over Lightning, and the simulated node's invoices

Revision ID: 0015_deposits
Revises: 0014_unique_keys
Create Date: 2026-12-07 02:30:00

The unique payment_hash and transfer_id make "a deposit is credited at most once" a property
of the schema (the ledger transfer's primary key, deposit:<payment_hash>, says it again).
PostgreSQL indexes only open deposits by status: the watcher looks up nothing else.
"""

from alembic import op
import sqlalchemy as sa


revision = "0015_deposits"
down_revision = "0014_unique_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deposits",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(length=144), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("invoice", sa.Text(), nullable=False),
        sa.Column("payment_hash", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("transfer_id", sa.String(length=120), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("expired_at", sa.BigInteger(), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_deposits_positive_amount")),
        sa.CheckConstraint(
            "status IN ('open','completed','expired')", name=op.f("ck_deposits_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposits")),
        sa.UniqueConstraint("payment_hash", name=op.f("uq_deposits_payment_hash")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_deposits_transfer_id")),
        sa.UniqueConstraint(
            "project_id", "idempotency_key", name=op.f("uq_deposits_project_id_idempotency_key")
        ),
    )
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.create_index("ix_deposits_list", ["project_id", "created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_deposits_open",
            ["status", "expires_at"],
            unique=False,
            postgresql_where=sa.text("status = 'open'"),
        )
    op.create_table(
        "sim_node_invoices",
        sa.Column("payment_hash", sa.String(length=64), nullable=False),
        sa.Column("bolt11", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("payment_hash", name=op.f("pk_sim_node_invoices")),
    )


def downgrade() -> None:
    op.drop_table("sim_node_invoices")
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.drop_index("ix_deposits_open")
        batch_op.drop_index("ix_deposits_list")
    op.drop_table("deposits")
