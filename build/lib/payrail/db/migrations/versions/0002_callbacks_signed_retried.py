"""callbacks: signed, retried deliveries; per-payout sequence; attempt log; webhook secrets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 21:44:29.856603
"""

import secrets
import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SANDBOX_PROJECT_ID = "project_test_001"  # seeded with the documented sandbox secret instead


def upgrade() -> None:
    op.create_table(
        "callback_attempts",
        sa.Column("callback_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("callback_id", "attempt", name=op.f("pk_callback_attempts")),
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_secrets")),
    )
    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_secrets_project", ["project_id", "created_at"], unique=False
        )

    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sequence", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("next_attempt_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("delivered_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_callbacks_status", ["status", "created_at"], unique=False)

    # Existing deliveries: number them per payout in creation order, before the unique
    # constraint. 'gone' (a 410) is now 'dead', with its job dead too, so it can be replayed.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, payout_id FROM callbacks ORDER BY payout_id, created_at, id")
    ).all()
    sequence: dict[str, int] = {}
    for callback_id, payout_id in rows:
        sequence[payout_id] = sequence.get(payout_id, 0) + 1
        conn.execute(
            sa.text("UPDATE callbacks SET sequence = :n WHERE id = :id"),
            {"n": sequence[payout_id], "id": callback_id},
        )
    conn.execute(
        sa.text(
            "UPDATE jobs SET state = 'dead' WHERE id IN "
            "(SELECT 'callback:' || id FROM callbacks WHERE status = 'gone')"
        )
    )
    conn.execute(sa.text("UPDATE callbacks SET status = 'dead' WHERE status = 'gone'"))
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_callbacks_payout_id_sequence"), ["payout_id", "sequence"]
        )

    # Every existing project gets a secret so its callbacks can be signed; the admin
    # rotates it to learn it (POST /api/v1/projects/{id}/webhook-secret/rotate).
    now_ms = int(time.time() * 1000)
    for (project_id,) in conn.execute(sa.text("SELECT id FROM projects")).all():
        if project_id == SANDBOX_PROJECT_ID:
            continue
        conn.execute(
            sa.text(
                "INSERT INTO webhook_secrets (id, project_id, secret, created_at) "
                "VALUES (:id, :project_id, :secret, :now)"
            ),
            {
                "id": str(uuid.uuid4()),
                "project_id": project_id,
                "secret": "whsec_" + secrets.token_urlsafe(32),
                "now": now_ms,
            },
        )


def downgrade() -> None:
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_callbacks_payout_id_sequence"), type_="unique")
        batch_op.drop_index("ix_callbacks_status")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("delivered_at")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("sequence")

    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_secrets_project")

    op.drop_table("webhook_secrets")
    op.drop_table("callback_attempts")
