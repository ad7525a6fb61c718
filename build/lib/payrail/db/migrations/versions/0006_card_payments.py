"""card payments: orders, pay requests, payment log, provider events, Stripe simulator

Revision ID: 0006_card_payments
Revises: 0005_audit_triggers
Create Date: 2026-12-01 23:41:25.889126

The payment log's primary key (order_id) and the unique payment intent ids make "completed at
most once" a property of the schema; provider_events' key (the event id) makes "each event is
applied at most once" one. The sim_stripe_* tables are the sandbox simulator's own records.
"""

from alembic import op
import sqlalchemy as sa


revision = "0006_card_payments"
down_revision = "0005_audit_triggers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_pay_requests",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "idempotency_key", name=op.f("pk_order_pay_requests")),
    )
    op.create_table(
        "order_payments",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("transfer_id", sa.String(length=120), nullable=False),
        sa.Column("cause", sa.String(length=120), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_order_payments")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_order_payments_payment_intent_id")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_order_payments_transfer_id")),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("payment_method", sa.String(length=255), nullable=True),
        sa.Column("provider_idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("pay_attempts", sa.Integer(), nullable=False),
        sa.Column("failure_code", sa.String(length=32), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("check_at", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("fulfilled_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_orders_positive_amount")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_orders_payment_intent_id")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_check", ["status", "check_at"], unique=False)
        batch_op.create_index("ix_orders_list", ["project_id", "created_at", "id"], unique=False)

    op.create_table(
        "provider_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("processed_at", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_events")),
    )
    with op.batch_alter_table("provider_events", schema=None) as batch_op:
        batch_op.create_index("ix_provider_events_order", ["order_id", "received_at"], unique=False)

    op.create_table(
        "sim_stripe_deliveries",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("deliver_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sim_stripe_deliveries")),
    )
    with op.batch_alter_table("sim_stripe_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_sim_stripe_deliveries_due", ["state", "deliver_at"], unique=False)

    op.create_table(
        "sim_stripe_intents",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("payment_method", sa.String(length=255), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sim_stripe_intents")),
    )
    with op.batch_alter_table("sim_stripe_intents", schema=None) as batch_op:
        batch_op.create_index("ix_sim_stripe_intents_created", ["created_at", "id"], unique=False)

    op.create_table(
        "sim_stripe_requests",
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_sim_stripe_requests")),
    )


def downgrade() -> None:
    op.drop_table("sim_stripe_requests")
    with op.batch_alter_table("sim_stripe_intents", schema=None) as batch_op:
        batch_op.drop_index("ix_sim_stripe_intents_created")

    op.drop_table("sim_stripe_intents")
    with op.batch_alter_table("sim_stripe_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_sim_stripe_deliveries_due")

    op.drop_table("sim_stripe_deliveries")
    with op.batch_alter_table("provider_events", schema=None) as batch_op:
        batch_op.drop_index("ix_provider_events_order")

    op.drop_table("provider_events")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_list")
        batch_op.drop_index("ix_orders_check")

    op.drop_table("orders")
    op.drop_table("order_payments")
    op.drop_table("order_pay_requests")
