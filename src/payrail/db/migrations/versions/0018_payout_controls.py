"""payout controls: player ids, per-project amount caps (audited), fiat quotes, approvals

Revision ID: 0018_payout_controls
Revises: 0017_claim_links
Create Date: 2026-12-07 12:00:00

- payouts.player_id (the studio's stable player id) and ix_payouts_player (project_id,
  player_id, created_at), only the rows that have one: the rate limit and the daily cap of a
  player read it, a range of one player's recent payouts. recipients.player_id: the
  directory's default for payouts to that gamertag.
- project_limits: one row per project with caps (each NULL: no cap); project_limit_changes:
  who changed them, from what to what, when.
- quotes: a fiat amount priced in sats at a rate, until expires_at; quote_uses: the payout
  that spent it (primary key: a quote pays once).
- payouts.approval / payouts.decided_by: a payout held for approval and who decided it.
"""

from alembic import op
import sqlalchemy as sa


revision = "0018_payout_controls"
down_revision = "0017_claim_links"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("payouts", sa.Column("player_id", sa.String(length=128), nullable=True))
    op.add_column("payouts", sa.Column("approval", sa.String(length=16), nullable=True))
    op.add_column("payouts", sa.Column("decided_by", sa.String(length=120), nullable=True))
    op.add_column("recipients", sa.Column("player_id", sa.String(length=128), nullable=True))
    op.create_index(
        "ix_payouts_player",
        "payouts",
        ["project_id", "player_id", "created_at"],
        postgresql_where=sa.text("player_id IS NOT NULL"),
        sqlite_where=sa.text("player_id IS NOT NULL"),
    )
    op.create_table(
        "project_limits",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("per_payout_max_sats", sa.BigInteger(), nullable=True),
        sa.Column("per_player_daily_max_sats", sa.BigInteger(), nullable=True),
        sa.Column("project_daily_max_sats", sa.BigInteger(), nullable=True),
        sa.Column("approval_above_sats", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "project_limit_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_project_limit_changes_project", "project_limit_changes", ["project_id", "at_ms"]
    )
    op.create_table(
        "quotes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.String(length=32), nullable=False),
        sa.Column("rate", sa.String(length=48), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("sats", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "quote_uses",
        sa.Column("quote_id", sa.String(length=36), nullable=False),
        sa.Column("payout_id", sa.String(length=36), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("quote_id"),
    )


def downgrade() -> None:
    op.drop_table("quote_uses")
    op.drop_table("quotes")
    op.drop_index("ix_project_limit_changes_project", table_name="project_limit_changes")
    op.drop_table("project_limit_changes")
    op.drop_table("project_limits")
    op.drop_index("ix_payouts_player", table_name="payouts")
    op.drop_column("recipients", "player_id")
    op.drop_column("payouts", "decided_by")
    op.drop_column("payouts", "approval")
    op.drop_column("payouts", "player_id")
