"""Schema. Times are epoch milliseconds (BIGINT): portable across SQLite and PostgreSQL.

Changing a table here needs a new Alembic revision in migrations/versions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    insert,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# TigerBeetle-style accounts. The CHECK is invariant 1, enforced by the database itself.
accounts = Table(
    "accounts",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("code", Integer, nullable=False),
    Column("currency", String(8), nullable=False),
    Column("debits_pending", BigInteger, nullable=False, default=0),
    Column("debits_posted", BigInteger, nullable=False, default=0),
    Column("credits_pending", BigInteger, nullable=False, default=0),
    Column("credits_posted", BigInteger, nullable=False, default=0),
    Column("allow_negative", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint(
        "allow_negative OR debits_posted + debits_pending <= credits_posted", name="no_overdraft"
    ),
    CheckConstraint(
        "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 "
        "AND credits_posted >= 0",
        name="non_negative_columns",
    ),
)

# Append-only. A post/void row names its pending transfer; the unique pending_id means
# a pending transfer is resolved exactly once, whatever the application does.
transfers = Table(
    "transfers",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("debit_account_id", String(80), nullable=False),
    Column("credit_account_id", String(80), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("pending_id", String(120), nullable=True),
    Column("kind", String(8), nullable=False),
    Column("timeout_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="positive_amount"),
    CheckConstraint("kind IN ('single','pending','post','void')", name="kind"),
    # Unique: a pending transfer has one resolution. A pending transfer has no pending_id,
    # and PostgreSQL leaves those out of the index (migration 0012); SQLite keeps the
    # UNIQUE constraint it was created with.
    Index(
        "uq_transfers_pending_id",
        "pending_id",
        unique=True,
        postgresql_where=text("pending_id IS NOT NULL"),
    ),
)

projects = Table(
    "projects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("api_key_hash", String(64), nullable=False, unique=True),
    Column("account_id", String(80), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Recipient guard overrides (services/recipient_guard.py); NULL: the server's setting.
    Column("recipient_failures_max", Integer, nullable=True),
    Column("recipient_failure_window_s", Integer, nullable=True),
    Column("recipient_block_s", Integer, nullable=True),
)

# A payout that may still be or has been paid: not failed or expired without a charge.
LIVE_PAYMENT_HASH = (
    "payment_hash IS NOT NULL AND NOT (state IN ('failed', 'expired') AND NOT charge_posted)"
)

payouts = Table(
    "payouts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("gamertag", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("internal_id", String(128), nullable=True),
    Column("description", String(144), nullable=True),
    Column("callback_url", Text, nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("failure_code", String(32), nullable=True),
    Column("failure_reason", Text, nullable=True),
    Column("charge_posted", Boolean, nullable=False, default=False),
    Column("expires_in", Integer, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("settled_at", BigInteger, nullable=True),
    # Which settlement path ran it ("inline" | "queue"): the flag guard's success rate is per path.
    Column("settle_path", String(16), nullable=True),
    # Why the state last changed; the audit triggers (migration 0005) copy it to payout_events.
    Column("state_cause", String(120), nullable=True),
    # Where the money goes (migration 0007). destination_kind: gamertag (sandbox, simulated
    # node) | lightning_address | lnurl | invoice | keysend. The invoice is fetched before
    # the reservation and stored in its transaction: a payout is paid with this one invoice.
    Column("destination_kind", String(24), nullable=True),
    Column("destination", Text, nullable=True),
    Column("invoice", Text, nullable=True),
    Column("payment_hash", String(64), nullable=True),
    # Payout controls (migration 0018): the studio's stable player id (the rate limit and
    # the daily player cap count by it when given), and an approval hold ("required",
    # "approved", "rejected") with who decided it.
    Column("player_id", String(128), nullable=True),
    Column("approval", String(16), nullable=True),
    Column("decided_by", String(120), nullable=True),
    UniqueConstraint("project_id", "idempotency_key"),
    Index("ix_payouts_list", "project_id", "created_at", "id"),
    # PostgreSQL indexes only the rows these are for (migration 0012): most payouts have no
    # internal id, and only the open ones are looked up by state.
    Index(
        "ix_payouts_internal",
        "project_id",
        "internal_id",
        postgresql_where=text("internal_id IS NOT NULL"),
    ),
    # One live payout per invoice, internal ids unique per project (migration 0014).
    Index(
        "ix_payouts_payment_hash",
        "payment_hash",
        postgresql_where=text("payment_hash IS NOT NULL"),
        sqlite_where=text("payment_hash IS NOT NULL"),
    ),
    Index(
        "uq_payouts_live_payment_hash",
        "payment_hash",
        unique=True,
        postgresql_where=text(LIVE_PAYMENT_HASH),
        sqlite_where=text(LIVE_PAYMENT_HASH),
    ),
    Index(
        "uq_payouts_internal_id",
        "project_id",
        "internal_id",
        unique=True,
        postgresql_where=text("internal_id IS NOT NULL"),
        sqlite_where=text("internal_id IS NOT NULL"),
    ),
    Index(
        "ix_payouts_state",
        "state",
        "expires_at",
        postgresql_where=text("state IN ('reserved', 'in_flight')"),
    ),
)

# The recipient directory (migration 0007): where a project's gamertag is paid. gamertag_key is
# the gamertag lowercased, so "Alice" and "alice" are one recipient.
recipients = Table(
    "recipients",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("gamertag", String(64), nullable=False),
    Column("gamertag_key", String(64), nullable=False),
    Column("kind", String(24), nullable=False),  # lightning_address | lnurl | node_pubkey
    Column("destination", Text, nullable=False),
    Column("suspended", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("player_id", String(128), nullable=True),  # migration 0018: payouts' default
    UniqueConstraint("project_id", "gamertag_key"),
    Index("ix_recipients_list", "project_id", "created_at", "id"),
)

# Every directory change: who, when, what it was, what it became (JSON; None = absent).
recipient_changes = Table(
    "recipient_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("gamertag_key", String(64), nullable=False),
    Column("action", String(16), nullable=False),  # created | updated | deleted
    Column("actor", String(120), nullable=False),
    Column("old", Text, nullable=True),
    Column("new", Text, nullable=True),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_recipient_changes_key", "project_id", "gamertag_key", "at_ms"),
)

# The rate limit and the failed-payout block find a recipient's payouts whatever its spelling.
Index(
    "ix_payouts_rate_key",
    payouts.c.project_id,
    func.lower(payouts.c.gamertag),
    payouts.c.created_at,
)

# The durable queue (transactional outbox). A job is available when state='queued',
# run_at has passed and no live lease holds it.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("run_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("lease_until", BigInteger, nullable=True),
    Column("locked_by", String(120), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint("state IN ('queued','done','dead')", name="state"),
    # Done jobs are never looked up by state (PostgreSQL, migration 0012).
    Index("ix_jobs_due", "state", "run_at", postgresql_where=text("state <> 'done'")),
)

# Sandbox fault-injection settings, in the database so every process sees the same ones.
sandbox_settings = Table(
    "sandbox_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# The simulated Lightning node's own record of payments. Written in the node's own
# transactions, never inside payrail's, as a separate system's database would be.
sim_node_payments = Table(
    "sim_node_payments",
    metadata,
    Column("payment_id", String(64), primary_key=True),
    Column("destination", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("failure_reason", String(64), nullable=True),
    Column("settle_at", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Batch payouts (POST /payouts/batch): one row per (project, batch Idempotency-Key), written
# once every item has its answer, so a replay answers the same items. items_json holds, per
# item, the payout id it created or replayed, or the refusal (code, message, extra).
payout_batches = Table(
    "payout_batches",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("items_json", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Outbound callback deliveries, enqueued with the status change that causes them.
callbacks = Table(
    "callbacks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("payout_id", String(36), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, nullable=True),
    # Per payout, 1, 2, …: receivers ignore an event older than one they already applied.
    Column("sequence", Integer, nullable=False, server_default="1"),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("delivered_at", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=True),
    Index("ix_callbacks_project", "project_id", "created_at"),
    Index("ix_callbacks_status", "status", "created_at"),
    UniqueConstraint("payout_id", "sequence"),
)

# One row per delivery attempt, written as 'started' before the request is sent, so an
# attempt cut short by a crash still counts towards the bound and shows in the log.
callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("callback_id", String(36), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("outcome", String(12), nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("duration_ms", Integer, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
)

# Webhook signing secrets. Kept in the clear because signing needs them (as Stripe does);
# a rotated-out secret signs alongside the new one until expires_at.
webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Index("ix_webhook_secrets_project", "project_id", "created_at"),
)

# ---------------------------------------------------------------- operations (migration 0004)

# The audit trail of payout states: one row per transition, written in the transaction
# that makes it, so the history can never disagree with the payout row.
payout_events = Table(
    "payout_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("payout_id", String(36), nullable=False),
    Column("from_status", String(16), nullable=True),  # None: the payout was created
    Column("to_status", String(16), nullable=False),
    Column("cause", String(120), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_payout_events_payout", "payout_id", "at_ms"),
    # Recent outcomes for the flag guards' success rate; append-only, so cheap to keep.
    Index(
        "ix_payout_events_recent",
        "to_status",
        "at_ms",
        postgresql_where=text("to_status IN ('completed', 'failed')"),  # migration 0012
    ),
)

# The same trail for orders (pay-ins); the orders branch writes it through services/audit.py.
order_events = Table(
    "order_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("from_status", String(32), nullable=True),
    Column("to_status", String(32), nullable=False),
    Column("cause", String(120), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_order_events_order", "order_id", "at_ms"),
)

# Feature flags, read through a short per-process cache (services/flags.py).
feature_flags = Table(
    "feature_flags",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False, default=False),
    Column("rollout_percent", Integer, nullable=False, default=0),
    Column("allow", Text, nullable=False, default="[]"),  # JSON list of project ids
    Column("guards", Text, nullable=False, default="{}"),  # JSON object, see domain/flags.py
    Column("updated_at", BigInteger, nullable=False),
    Column("updated_by", String(120), nullable=False),
    CheckConstraint("rollout_percent BETWEEN 0 AND 100", name="rollout_percent"),
)

# Every flag change, manual or by a guard: who, when, old → new, why.
flag_changes = Table(
    "flag_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("flag", String(64), nullable=False),
    Column("actor", String(120), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("old", Text, nullable=True),  # JSON; None when the flag was first set
    Column("new", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Index("ix_flag_changes_flag", "flag", "at_ms"),
)

# Worker liveness for /ready: each worker loop beats here, whatever process it runs in.
worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("worker_id", String(120), primary_key=True),
    Column("beat_at", BigInteger, nullable=False),
)

# ---------------------------------------------------------------- card payments (migration 0006)

# An order paid by card. Every status change is a guarded UPDATE (WHERE status = expected)
# recorded in order_events by the same transaction (services/audit.py).
orders = Table(
    "orders",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),  # the currency's minor unit
    Column("currency", String(3), nullable=False),  # ISO 4217, lowercase
    Column("customer_id", String(255), nullable=True),
    Column("metadata", Text, nullable=True),  # JSON object of strings
    Column("status", String(32), nullable=False),
    Column("payment_method", String(255), nullable=True),
    # The key the current attempt was created with at the provider: stored before the call,
    # so a crash after it can be resolved by asking again with the same key.
    Column("provider_idempotency_key", String(255), nullable=True),
    Column("payment_intent_id", String(255), nullable=True, unique=True),
    Column("pay_attempts", Integer, nullable=False, default=0),
    Column("failure_code", String(32), nullable=True),
    Column("failure_reason", Text, nullable=True),
    # When the sweeper next asks the provider about an order waiting on it (None: never).
    Column("check_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger, nullable=True),
    Column("fulfilled_at", BigInteger, nullable=True),
    CheckConstraint("amount > 0", name="positive_amount"),
    Index("ix_orders_list", "project_id", "created_at", "id"),
    Index("ix_orders_check", "status", "check_at"),
)

# One row per pay request (order, Idempotency-Key): a retry with the key answers its outcome.
order_pay_requests = Table(
    "order_pay_requests",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=True),  # None while the provider is asked
    Column("error_code", String(32), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# The payment log: one row per completed order, written with the ledger transfer.
order_payments = Table(
    "order_payments",
    metadata,
    Column("order_id", String(64), primary_key=True),  # completed at most once
    Column("payment_intent_id", String(255), nullable=False, unique=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("transfer_id", String(120), nullable=False, unique=True),
    Column("cause", String(120), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Provider webhook events, stored once (the provider's event id is the key) before 200.
provider_events = Table(
    "provider_events",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("provider", String(16), nullable=False),
    Column("type", String(64), nullable=False),
    Column("order_id", String(64), nullable=True),
    Column("payment_intent_id", String(255), nullable=True),
    Column("payload", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("processed_at", BigInteger, nullable=True),
    Column("outcome", String(24), nullable=True),  # applied | ignored | illegal_transition
    Index("ix_provider_events_order", "order_id", "received_at"),
)

# The Stripe simulator's own records (sandbox), written in its own transactions, never in
# payrail's, as Stripe's database would be.
sim_stripe_intents = Table(
    "sim_stripe_intents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(32), nullable=False),
    Column("payment_method", String(255), nullable=True),
    Column("metadata", Text, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),  # epoch seconds, as Stripe's `created`
    Index("ix_sim_stripe_intents_created", "created_at", "id"),
)

# Stripe's idempotency record: the first answer for a key, replayed for the same parameters.
sim_stripe_requests = Table(
    "sim_stripe_requests",
    metadata,
    Column("idempotency_key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# The simulator's webhook outbox: each delivery is a row, so faults (delay, duplicate,
# reorder, drop) are decided once and survive restarts.
sim_stripe_deliveries = Table(
    "sim_stripe_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    # pending | sending | sent | dropped | failed; one left 'sending' by a crash is lost, as a
    # dropped webhook is: payrail's sweeper finds the outcome without it.
    Column("state", String(12), nullable=False),
    Column("deliver_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_sim_stripe_deliveries_due", "state", "deliver_at"),
)

# ---------------------------------------------------------------- flat cost (migration 0013)

# What the last incremental reconciliation verified (services/reconcile.py): every row changed
# up to watermark_ms, and the ledger's sums per project and revenue account at that watermark
# (JSON {account: sum}); a run reads only the rows changed since. open_findings (JSON) are the
# ids still wrong at the last run, checked again at every run until they are right.
reconcile_checkpoints = Table(
    "reconcile_checkpoints",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("watermark_ms", BigInteger, nullable=False),
    Column("balances", Text, nullable=False),
    Column("open_findings", Text, nullable=False),
    Column("verified_at", BigInteger, nullable=False),
    Column("rows_checked", BigInteger, nullable=False),
)

# One row per background sweep (services/sweeps.py): the process holding the lease runs it.
background_leases = Table(
    "background_leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(120), nullable=False),
    Column("lease_until", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Payouts per project, hour of creation (epoch ms at the hour) and dashboard outcome (success |
# failed | timed out | pending), kept by a sweep (services/rollups.py) for the dashboard's charts.
payout_rollups = Table(
    "payout_rollups",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("hour_ms", BigInteger, primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("payouts", BigInteger, nullable=False),
)

# Every reconcile, list and pruning read on an index (migration 0013 says which read each is).
Index("ix_transfers_created", transfers.c.created_at)
Index("ix_transfers_debit", transfers.c.debit_account_id)
Index("ix_payouts_updated", payouts.c.updated_at, payouts.c.id)
Index("ix_payouts_created", payouts.c.created_at, payouts.c.id)
Index("ix_payouts_state_created", payouts.c.state, payouts.c.created_at, payouts.c.id)
Index(
    "ix_payouts_project_state",
    payouts.c.project_id,
    payouts.c.state,
    payouts.c.created_at,
    payouts.c.id,
)
Index("ix_payouts_gamertag", func.lower(payouts.c.gamertag), payouts.c.created_at, payouts.c.id)
Index("ix_orders_updated", orders.c.updated_at, orders.c.id)
Index("ix_payout_batches_created", payout_batches.c.created_at)
# Done jobs only (the pruning query repeats the condition, so SQLite's planner uses it too).
Index(
    "ix_jobs_done",
    jobs.c.updated_at,
    postgresql_where=text("state = 'done'"),
    sqlite_where=text("state = 'done'"),
)

# ---------------------------------------------------------------- dashboard (migration 0010)

# Signed-in dashboard browsers. The cookie holds a random token; only its SHA-256 is stored,
# with the key's hash, so rotating that key (or the admin key) ends its sessions too.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("admin", Boolean, nullable=False),
    Column("project_id", String(64), nullable=True),  # None for the admin key
    Column("key_hash", String(64), nullable=False),
    Column("actor", String(64), nullable=False),  # the name given at sign-in, for the audit log
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_dashboard_sessions_expires", "expires_at"),
)

# Reconciliation results kept for the dashboard's "last result" (newest row wins).
reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("source", String(32), nullable=False),  # dashboard | cli | periodic
    Column("clean", Boolean, nullable=False),
    Column("payouts_checked", Integer, nullable=False),
    Column("orders_checked", Integer, nullable=False),
    Column("discrepancy_count", Integer, nullable=False),
    Column("report", Text, nullable=False),  # JSON: counts and the first discrepancies
    Index("ix_reconcile_runs_at", "at_ms"),
)


# ---------------------------------------------------------------- deposits (migration 0015)

# Money in over Lightning (services/deposits.py): one row per invoice payrail asked its
# backend for. open → completed | expired (and expired → completed for a payment that
# arrives late). The credit is the ledger transfer `deposit:<payment_hash>` (its primary key
# refuses a second), written in the transaction that moves the row to completed; the unique
# payment_hash and transfer_id say the same in this table.
deposits = Table(
    "deposits",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),  # sats
    Column("description", String(144), nullable=True),
    Column("status", String(16), nullable=False),
    Column("invoice", Text, nullable=False),
    Column("payment_hash", String(64), nullable=False, unique=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("checks", Integer, nullable=False, default=0),  # times the backend was asked
    Column("transfer_id", String(120), nullable=True, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger, nullable=True),
    Column("expired_at", BigInteger, nullable=True),
    # deposit.completed / deposit.expired go here (services/callbacks.py delivers them).
    Column("callback_url", Text, nullable=True),
    CheckConstraint("amount > 0", name="positive_amount"),
    CheckConstraint("status IN ('open','completed','expired')", name="status"),
    UniqueConstraint("project_id", "idempotency_key"),
    Index("ix_deposits_list", "project_id", "created_at", "id"),
    # Only open deposits are looked up by status (PostgreSQL indexes only those).
    Index("ix_deposits_open", "status", "expires_at", postgresql_where=text("status = 'open'")),
)

# The simulated node's own record of the invoices it made (sandbox, tests). Written in the
# node's own transactions, never inside payrail's, like sim_node_payments.
sim_node_invoices = Table(
    "sim_node_invoices",
    metadata,
    Column("payment_hash", String(64), primary_key=True),
    Column("bolt11", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(12), nullable=False),  # open | paid
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("paid_at", BigInteger, nullable=True),
)

# Claim links (migration 0017; services/withdrawals.py, docs/claim-links.md): a payout the
# engine reserved before it has a destination. open → claimed | revoked, each once (a guarded
# UPDATE); only the secret's SHA-256 is kept; payment_hash is the claim's invoice.
withdrawals = Table(
    "withdrawals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("payout_id", String(36), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),  # sats
    Column("description", String(144), nullable=True),
    Column("expires_at", BigInteger, nullable=False),
    Column("payment_hash", String(64), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("claimed_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    CheckConstraint("amount > 0", name="positive_amount"),
    CheckConstraint("status IN ('open','claimed','revoked')", name="status"),
    Index("ix_withdrawals_list", "project_id", "created_at", "id"),
    Index("ix_withdrawals_all", "created_at", "id"),
)

# A rotated-out project API key that still authenticates until expires_at (migration 0016;
# services/project_keys.py): at most one per project.
project_previous_keys = Table(
    "project_previous_keys",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("expires_at", BigInteger, nullable=False),
)

# The audit of API key rotations: who, why, the grace given, when.
project_key_events = Table(
    "project_key_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(64), nullable=False),
    Column("actor", String(120), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("grace_s", Integer, nullable=False),
    Column("previous_expires_at", BigInteger, nullable=True),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_project_key_events_project", "project_id", "at_ms"),
)


# A project's keys with the approver role (migration 0019; services/project_keys.py): each
# approves or rejects the project's held payouts and nothing else. Only the key's hash is kept.
project_approver_keys = Table(
    "project_approver_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("label", String(40), nullable=True),
    Column("created_by", String(120), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Index("ix_project_approver_keys_project", "project_id", "created_at"),
)

# The payouts waiting for an approver (migration 0019): the dashboard's approvals queue.
HELD_PAYOUT = "approval = 'required' AND state = 'reserved'"
Index(
    "ix_payouts_held",
    payouts.c.project_id,
    payouts.c.created_at,
    payouts.c.id,
    postgresql_where=text(HELD_PAYOUT),
    sqlite_where=text(HELD_PAYOUT),
)
Index(
    "ix_payouts_held_all",
    payouts.c.created_at,
    payouts.c.id,
    postgresql_where=text(HELD_PAYOUT),
    sqlite_where=text(HELD_PAYOUT),
)


# A player's recent payouts (migration 0018): the rate limit and the daily player cap.
Index(
    "ix_payouts_player",
    payouts.c.project_id,
    payouts.c.player_id,
    payouts.c.created_at,
    postgresql_where=text("player_id IS NOT NULL"),
    sqlite_where=text("player_id IS NOT NULL"),
)

# Amount caps per project (migration 0018; services/limits.py, the rules in
# domain/payout_engine.py). NULL: no cap.
project_limits = Table(
    "project_limits",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("per_payout_max_sats", BigInteger, nullable=True),
    Column("per_player_daily_max_sats", BigInteger, nullable=True),
    Column("project_daily_max_sats", BigInteger, nullable=True),
    Column("approval_above_sats", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

# Every change of a project's limits: who, from what, to what (JSON), when.
project_limit_changes = Table(
    "project_limit_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(64), nullable=False),
    Column("actor", String(120), nullable=False),
    Column("old", Text, nullable=True),
    Column("new", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_project_limit_changes_project", "project_id", "at_ms"),
)

# A fiat amount priced in sats (services/quotes.py): amount and rate are decimal strings.
quotes = Table(
    "quotes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", String(32), nullable=False),
    Column("rate", String(48), nullable=False),
    Column("source", String(32), nullable=False),
    Column("sats", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

# The payout that spent a quote, written in its reservation: one use per quote (the key).
quote_uses = Table(
    "quote_uses",
    metadata,
    Column("quote_id", String(36), primary_key=True),
    Column("payout_id", String(36), nullable=False),
    Column("used_at", BigInteger, nullable=False),
)


def insert_row(table: Table, dialect_insert: Any = insert) -> Any:
    """INSERT of whole rows (a dict per row with every column), built once by its caller.

    A bare insert(table) has no cache key in SQLAlchemy 2.0, so it was compiled again on
    every execution; with each column named as a bind parameter, it is compiled once."""
    return dialect_insert(table).values({c.name: bindparam(c.name) for c in table.c})
