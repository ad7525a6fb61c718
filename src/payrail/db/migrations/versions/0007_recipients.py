"""recipients: the per-project recipient directory, its change log, payout destinations

Revision ID: 0007_recipients
Revises: 0006_card_payments
Create Date: 2026-12-03 09:55:00

A payout now records where its money goes (destination_kind, destination) and, for Lightning
invoices, the one invoice and payment hash it is paid with, written in the reservation's
transaction before anything is sent.
"""

from alembic import op
import sqlalchemy as sa


revision = "0007_recipients"
down_revision = "0006_card_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("gamertag", sa.String(length=64), nullable=False),
        sa.Column("gamertag_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipients")),
        sa.UniqueConstraint(
            "project_id", "gamertag_key", name=op.f("uq_recipients_project_id_gamertag_key")
        ),
    )
    op.create_index(
        "ix_recipients_list", "recipients", ["project_id", "created_at", "id"], unique=False
    )
    op.create_table(
        "recipient_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("gamertag_key", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipient_changes")),
    )
    op.create_index(
        "ix_recipient_changes_key",
        "recipient_changes",
        ["project_id", "gamertag_key", "at_ms"],
        unique=False,
    )
    # Plain ADD COLUMN (no batch copy), so SQLite keeps the payouts audit triggers of 0005.
    op.add_column("payouts", sa.Column("destination_kind", sa.String(length=24), nullable=True))
    op.add_column("payouts", sa.Column("destination", sa.Text(), nullable=True))
    op.add_column("payouts", sa.Column("invoice", sa.Text(), nullable=True))
    op.add_column("payouts", sa.Column("payment_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+), so SQLite keeps the payouts audit triggers of 0005.
    for column in ("payment_hash", "invoice", "destination", "destination_kind"):
        op.drop_column("payouts", column)
    op.drop_index("ix_recipient_changes_key", table_name="recipient_changes")
    op.drop_table("recipient_changes")
    op.drop_index("ix_recipients_list", table_name="recipients")
    op.drop_table("recipients")
