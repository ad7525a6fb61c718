"""Settings: PAYRAIL_* environment variables through one object, safe sandbox defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from payrail.db.sqlite import SQLITE_SYNCHRONOUS_CHOICES, SQLITE_SYNCHRONOUS_DEFAULT
from payrail.domain.fx import FX_FIXED_SANDBOX, parse_fixed

DEFAULT_SANDBOX_API_KEY = "test_api_key_12345"
DEFAULT_ADMIN_KEY = "sandbox_admin_key_change_me"
# Claim links' secrets are HMACs of their ids under this key (a replay can answer the same
# link; only the secret's hash is stored). Production must set its own.
DEFAULT_CLAIM_LINK_KEY = "sandbox_claim_link_key_change_me_0000"
DEFAULT_DATABASE_URL = "sqlite:///" + str(Path("var") / "payrail.db")
SANDBOX_PROJECT_ID = "project_test_001"
SANDBOX_PROJECT_FUNDING_SATS = 100_000
DEFAULT_SANDBOX_WEBHOOK_SECRET = "whsec_test_sandbox"  # documented: sandbox only
# The built-in Stripe simulator's credentials (sandbox only; production refuses them).
DEFAULT_SANDBOX_STRIPE_API_KEY = "sk_test_payrail_sandbox"
DEFAULT_SANDBOX_STRIPE_WEBHOOK_SECRET = "whsec_payrail_stripe_sandbox"
STRIPE_API_BASE = "https://api.stripe.com"
STRIPE_SIMULATOR_PATH = "/sim/stripe"  # where the sandbox mounts its Stripe simulator


class UnsafeSettings(Exception):
    """Production settings that would lose money or leak access; the server refuses to start."""


def _int(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UnsafeSettings(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise UnsafeSettings(f"{name} must be between {low} and {high}, got {value}")
    return value


def _default_stripe_backend(env: dict[str, str], mode: str) -> str:
    """Sandbox: the simulator. Production: Stripe when any Stripe setting is given (a half
    configuration is then refused), else card payments are off and payouts run alone."""
    if mode == "sandbox":
        return "simulator"
    configured = env.get("PAYRAIL_STRIPE_API_KEY") or env.get("PAYRAIL_STRIPE_WEBHOOK_SECRET")
    return "stripe" if configured else "disabled"


@dataclass(frozen=True)
class Settings:
    mode: str = "sandbox"
    host: str = "127.0.0.1"
    port: int = 3000
    database_url: str = DEFAULT_DATABASE_URL
    # A streaming replica (or a pool of them) for reads that tolerate staleness; empty: every
    # read on database_url. Which reads may go there: payrail/bootstrap.py, Runtime.reads.
    read_database_url: str = ""
    admin_key: str = DEFAULT_ADMIN_KEY
    sandbox_api_key: str = DEFAULT_SANDBOX_API_KEY
    lightning_backend: str = "simulated"  # simulated | lnd | lnbits
    lightning_network: str = "bitcoin"  # bitcoin | testnet | signet | regtest: invoices must match
    lnbits_url: str = ""
    lnbits_admin_key: str = ""  # the paying wallet's admin key (X-Api-Key)
    lnurl_timeout_ms: int = 5_000  # one LNURL fetch (pay parameters or invoice), all of it
    lnurl_insecure_hosts: tuple[str, ...] = ()  # host:port fetched over http, loopback allowed
    lnd_url: str = ""
    lnd_macaroon_hex: str = ""
    lnd_tls_cert_path: str = ""
    lnd_preimage_secret: str = ""  # fixed secret: payment hashes must survive macaroon rotation
    settle_wait_ms: int = 5_000  # how long POST /payouts waits for a final answer
    node_timeout_ms: int = 10_000  # our bound on one node call; past it the outcome is unknown
    lease_ms: int = 30_000  # a job's lease; must exceed node_timeout_ms
    # The worker's poll: every worker_poll_ms while it finds work; after each round that finds
    # none the wait doubles up to worker_idle_poll_max_ms (issue 30: an idle server costs
    # little). Work made in the process wakes it at once; the maximum bounds how late it sees
    # what it is not told of (a lease run out, a job enqueued by another process).
    worker_poll_ms: int = 200
    worker_idle_poll_max_ms: int = 2_000
    worker_batch_max: int = 50
    worker_concurrency_max: int = 32  # running jobs other than callbacks, per worker
    callback_concurrency_max: int = 16  # running callback deliveries, per worker
    callback_host_concurrency_max: int = 4  # ... of which to one destination host
    rate_limit_per_hour: int = 10
    # Recipient guard: this many failed payouts to one gamertag within the window block it
    # for block_s (0 failures: off). A project may override each (services/recipient_guard.py).
    recipient_failures_max: int = 3
    recipient_failure_window_s: int = 600
    recipient_block_s: int = 600
    body_max_bytes: int = 64 * 1024
    # A connection whose request headers are not complete this long after it opened (or after
    # its previous response) is closed with 408: a slow-loris client holds no slot for long.
    http_header_timeout_ms: int = 10_000
    db_pool_size: int = 20
    sqlite_synchronous: str = SQLITE_SYNCHRONOUS_DEFAULT  # docs/operations.md, SQLite durability
    sim_seed: int | None = None
    run_worker: bool = True
    reconcile_interval_s: int = 60
    # ANALYZE/VACUUM of payrail's tables by the server: auto (when autovacuum is off) | on | off
    db_maintenance: str = "auto"
    # A pending payout that changed this recently is in motion, not a discrepancy (reconcile).
    reconcile_settle_window_ms: int = 30_000
    # Retention of rows never read once old (services/retention.py; 0: kept forever), and how
    # often the pruning sweep runs (once per deployment: services/sweeps.py).
    retention_jobs_days: int = 7  # done jobs
    retention_callbacks_days: int = 30  # delivered callbacks and their attempt log
    retention_batch_keys_days: int = 30  # batch Idempotency-Key records (their replay window)
    retention_interval_s: int = 300
    flag_guard_interval_s: int = 15  # how often rollback guards are checked (0: never)
    callback_timeout_ms: int = 5_000  # one callback attempt, connect to last byte read
    webhook_secret_grace_s: int = 86_400  # a rotated-out webhook secret keeps signing this long
    sandbox_webhook_secret: str = DEFAULT_SANDBOX_WEBHOOK_SECRET
    callback_allow_hosts: tuple[str, ...] = ()  # hosts/CIDRs exempt from the private-address ban
    metrics_token: str = ""  # set: GET /metrics needs "Authorization: Bearer <token>"
    # The ZBD-compatible API (docs/zbd.md): a /v0 payout's internalId is its idempotency
    # key when it carries no Idempotency-Key header (ZBD itself does not dedupe on it).
    zbd_internal_id_idempotent: bool = False
    # US dollars per bitcoin, the fixed rate GET /v0/btcusd answers (domain/fx.py); "": no
    # rate (production's default: set it, or /v0/btcusd answers 503).
    fx_fixed: str = FX_FIXED_SANDBOX
    # Where quotes' rates come from (services/quotes.py): "fixed" (fx_fixed) or "http" (a
    # JSON document at fx_http_url, the rate at the dotted fx_http_field, its time in Unix
    # seconds at fx_http_time_field if set); a rate older than fx_max_age_s is refused.
    fx_source: str = "fixed"
    fx_http_url: str = ""
    fx_http_field: str = ""
    fx_http_time_field: str = ""
    fx_max_age_s: int = 60
    quote_ttl_s: int = 300  # how long a quote's sats may be paid
    # Card payments (docs/card-payments.md).
    stripe_backend: str = "simulator"  # simulator | stripe
    stripe_api_key: str = DEFAULT_SANDBOX_STRIPE_API_KEY
    stripe_webhook_secret: str = DEFAULT_SANDBOX_STRIPE_WEBHOOK_SECRET
    stripe_api_base: str = ""  # empty: the simulator on this server (sandbox) or Stripe's
    stripe_timeout_ms: int = 10_000  # one call to Stripe; past it the outcome is unknown
    webhook_attempts_max: int = 8  # an event for an order not ready is retried this many times
    webhook_retry_base_ms: int = 2_000  # first retry delay; doubles each time
    order_sweep_after_ms: int = 120_000  # an order this long in processing/submitted is checked
    # Deposits (docs/deposits.md): the invoice's default lifetime, the watcher's schedule
    # (first re-check, its cap, how long an expired deposit is still watched for a late
    # payment), how many deposit checks one worker runs at once, and where LNbits pushes
    # "paid" (empty: no push; the watcher alone finds payments).
    deposit_expiry_s_default: int = 3_600
    deposit_check_base_ms: int = 1_000
    deposit_check_cap_ms: int = 30_000
    deposit_late_window_ms: int = 600_000
    deposit_checks_max: int = 8
    deposit_webhook_url: str = ""
    # Claim links (docs/claim-links.md): the base of the links payrail hands out (never
    # fetched by payrail), and the key their secrets are derived with.
    public_url: str = "http://127.0.0.1:3000"
    claim_link_key: str = DEFAULT_CLAIM_LINK_KEY
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def sandbox(self) -> bool:
        return self.mode == "sandbox"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        mode = env.get("PAYRAIL_MODE", "sandbox")
        if mode not in ("sandbox", "production"):
            raise UnsafeSettings(f"PAYRAIL_MODE must be sandbox or production, got {mode!r}")
        seed = env.get("PAYRAIL_SIM_SEED")
        settings = cls(
            mode=mode,
            host=env.get("PAYRAIL_HOST", "127.0.0.1"),
            port=_int(env, "PAYRAIL_PORT", 3000, 1, 65_535),
            database_url=env.get("PAYRAIL_DATABASE_URL", DEFAULT_DATABASE_URL),
            read_database_url=env.get("PAYRAIL_READ_DATABASE_URL", ""),
            admin_key=env.get("PAYRAIL_ADMIN_KEY", DEFAULT_ADMIN_KEY),
            sandbox_api_key=env.get("PAYRAIL_SANDBOX_API_KEY", DEFAULT_SANDBOX_API_KEY),
            lightning_backend=env.get(
                "PAYRAIL_LIGHTNING_BACKEND", "simulated" if mode == "sandbox" else "lnd"
            ),
            lightning_network=env.get("PAYRAIL_LIGHTNING_NETWORK", "bitcoin"),
            lnbits_url=env.get("PAYRAIL_LNBITS_URL", ""),
            lnbits_admin_key=env.get("PAYRAIL_LNBITS_ADMIN_KEY", ""),
            lnurl_timeout_ms=_int(env, "PAYRAIL_LNURL_TIMEOUT_MS", 5_000, 100, 60_000),
            lnurl_insecure_hosts=tuple(
                h.strip().lower()
                for h in env.get("PAYRAIL_LNURL_INSECURE_HOSTS", "").split(",")
                if h.strip()
            ),
            lnd_url=env.get("PAYRAIL_LND_URL", ""),
            lnd_macaroon_hex=env.get("PAYRAIL_LND_MACAROON_HEX", ""),
            lnd_tls_cert_path=env.get("PAYRAIL_LND_TLS_CERT_PATH", ""),
            lnd_preimage_secret=env.get("PAYRAIL_LND_PREIMAGE_SECRET", ""),
            settle_wait_ms=_int(env, "PAYRAIL_SETTLE_WAIT_MS", 5_000, 0, 60_000),
            node_timeout_ms=_int(env, "PAYRAIL_NODE_TIMEOUT_MS", 10_000, 100, 120_000),
            lease_ms=_int(env, "PAYRAIL_LEASE_MS", 30_000, 1_000, 600_000),
            worker_poll_ms=_int(env, "PAYRAIL_WORKER_POLL_MS", 200, 10, 60_000),
            worker_idle_poll_max_ms=_int(env, "PAYRAIL_WORKER_IDLE_POLL_MAX_MS", 2_000, 10, 60_000),
            rate_limit_per_hour=_int(env, "PAYRAIL_RATE_LIMIT_PER_HOUR", 10, 1, 1_000_000),
            recipient_failures_max=_int(env, "PAYRAIL_RECIPIENT_FAILURES_MAX", 3, 0, 1_000),
            recipient_failure_window_s=_int(
                env, "PAYRAIL_RECIPIENT_FAILURE_WINDOW_S", 600, 1, 86_400
            ),
            recipient_block_s=_int(env, "PAYRAIL_RECIPIENT_BLOCK_S", 600, 1, 86_400),
            http_header_timeout_ms=_int(
                env, "PAYRAIL_HTTP_HEADER_TIMEOUT_MS", 10_000, 100, 300_000
            ),
            db_pool_size=_int(env, "PAYRAIL_DB_POOL_SIZE", 20, 1, 500),
            sqlite_synchronous=env.get(
                "PAYRAIL_SQLITE_SYNCHRONOUS", SQLITE_SYNCHRONOUS_DEFAULT
            ).upper(),
            sim_seed=int(seed) if seed else None,
            run_worker=env.get("PAYRAIL_RUN_WORKER", "1") not in ("0", "false", "no"),
            reconcile_interval_s=_int(env, "PAYRAIL_RECONCILE_INTERVAL_S", 60, 0, 86_400),
            db_maintenance=env.get("PAYRAIL_DB_MAINTENANCE", "auto").lower(),
            reconcile_settle_window_ms=_int(
                env, "PAYRAIL_RECONCILE_SETTLE_WINDOW_MS", 30_000, 0, 3_600_000
            ),
            retention_jobs_days=_int(env, "PAYRAIL_RETENTION_JOBS_DAYS", 7, 0, 36_500),
            retention_callbacks_days=_int(env, "PAYRAIL_RETENTION_CALLBACKS_DAYS", 30, 0, 36_500),
            retention_batch_keys_days=_int(env, "PAYRAIL_RETENTION_BATCH_KEYS_DAYS", 30, 0, 36_500),
            retention_interval_s=_int(env, "PAYRAIL_RETENTION_INTERVAL_S", 300, 0, 86_400),
            flag_guard_interval_s=_int(env, "PAYRAIL_FLAG_GUARD_INTERVAL_S", 15, 0, 3_600),
            callback_timeout_ms=_int(env, "PAYRAIL_CALLBACK_TIMEOUT_MS", 5_000, 100, 60_000),
            callback_concurrency_max=_int(env, "PAYRAIL_CALLBACK_CONCURRENCY_MAX", 16, 1, 1_000),
            callback_host_concurrency_max=_int(
                env, "PAYRAIL_CALLBACK_HOST_CONCURRENCY_MAX", 4, 1, 1_000
            ),
            webhook_secret_grace_s=_int(
                env, "PAYRAIL_WEBHOOK_SECRET_GRACE_S", 86_400, 0, 30 * 86_400
            ),
            sandbox_webhook_secret=env.get(
                "PAYRAIL_SANDBOX_WEBHOOK_SECRET", DEFAULT_SANDBOX_WEBHOOK_SECRET
            ),
            callback_allow_hosts=tuple(
                h.strip().lower()
                for h in env.get("PAYRAIL_CALLBACK_ALLOW_HOSTS", "").split(",")
                if h.strip()
            ),
            stripe_backend=env.get("PAYRAIL_STRIPE_BACKEND", _default_stripe_backend(env, mode)),
            metrics_token=env.get("PAYRAIL_METRICS_TOKEN", ""),
            zbd_internal_id_idempotent=env.get("PAYRAIL_ZBD_INTERNAL_ID_IDEMPOTENT", "0")
            in ("1", "true", "yes"),
            fx_fixed=env.get("PAYRAIL_FX_FIXED", FX_FIXED_SANDBOX if mode == "sandbox" else ""),
            fx_source=env.get("PAYRAIL_FX_SOURCE", "fixed"),
            fx_http_url=env.get("PAYRAIL_FX_HTTP_URL", ""),
            fx_http_field=env.get("PAYRAIL_FX_HTTP_FIELD", ""),
            fx_http_time_field=env.get("PAYRAIL_FX_HTTP_TIME_FIELD", ""),
            fx_max_age_s=_int(env, "PAYRAIL_FX_MAX_AGE_S", 60, 1, 86_400),
            quote_ttl_s=_int(env, "PAYRAIL_QUOTE_TTL_S", 300, 1, 86_400),
            stripe_api_key=env.get(
                "PAYRAIL_STRIPE_API_KEY",
                DEFAULT_SANDBOX_STRIPE_API_KEY if mode == "sandbox" else "",
            ),
            stripe_webhook_secret=env.get(
                "PAYRAIL_STRIPE_WEBHOOK_SECRET",
                DEFAULT_SANDBOX_STRIPE_WEBHOOK_SECRET if mode == "sandbox" else "",
            ),
            stripe_api_base=env.get("PAYRAIL_STRIPE_API_BASE", ""),
            stripe_timeout_ms=_int(env, "PAYRAIL_STRIPE_TIMEOUT_MS", 10_000, 100, 120_000),
            webhook_attempts_max=_int(env, "PAYRAIL_WEBHOOK_ATTEMPTS_MAX", 8, 1, 100),
            webhook_retry_base_ms=_int(env, "PAYRAIL_WEBHOOK_RETRY_BASE_MS", 2_000, 10, 3_600_000),
            order_sweep_after_ms=_int(
                env, "PAYRAIL_ORDER_SWEEP_AFTER_MS", 120_000, 1_000, 86_400_000
            ),
            deposit_expiry_s_default=_int(
                env, "PAYRAIL_DEPOSIT_EXPIRY_S_DEFAULT", 3_600, 60, 7 * 86_400
            ),
            deposit_check_base_ms=_int(env, "PAYRAIL_DEPOSIT_CHECK_BASE_MS", 1_000, 10, 600_000),
            deposit_check_cap_ms=_int(env, "PAYRAIL_DEPOSIT_CHECK_CAP_MS", 30_000, 10, 3_600_000),
            deposit_late_window_ms=_int(
                env, "PAYRAIL_DEPOSIT_LATE_WINDOW_MS", 600_000, 0, 7 * 86_400_000
            ),
            deposit_checks_max=_int(env, "PAYRAIL_DEPOSIT_CHECKS_MAX", 8, 1, 1_000),
            deposit_webhook_url=env.get("PAYRAIL_DEPOSIT_WEBHOOK_URL", ""),
            public_url=env.get("PAYRAIL_PUBLIC_URL", "http://127.0.0.1:3000").rstrip("/"),
            claim_link_key=env.get("PAYRAIL_CLAIM_LINK_KEY", DEFAULT_CLAIM_LINK_KEY),
        )
        settings.check()
        return settings

    @property
    def claim_links(self) -> bool:
        """False in production until PAYRAIL_CLAIM_LINK_KEY is set: the routes answer 503."""
        return self.sandbox or self.claim_link_key != DEFAULT_CLAIM_LINK_KEY

    @property
    def card_payments(self) -> bool:
        """False when production runs without Stripe: the card routes then answer 503."""
        return self.stripe_backend != "disabled"

    @property
    def stripe_base_url(self) -> str:
        """Where the stripe library sends its requests: the simulator on this server in sandbox."""
        if self.stripe_api_base:
            return self.stripe_api_base.rstrip("/")
        if self.stripe_backend == "simulator":
            return f"http://127.0.0.1:{self.port}{STRIPE_SIMULATOR_PATH}"
        return STRIPE_API_BASE

    def check(self) -> None:
        if self.lease_ms <= self.node_timeout_ms:
            raise UnsafeSettings(
                "PAYRAIL_LEASE_MS must exceed PAYRAIL_NODE_TIMEOUT_MS, or a live node call could "
                "be resent by another worker"
            )
        if self.lease_ms <= self.callback_timeout_ms:
            raise UnsafeSettings(
                "PAYRAIL_LEASE_MS must exceed PAYRAIL_CALLBACK_TIMEOUT_MS, or a callback still "
                "being sent could be sent again by another worker"
            )
        try:
            parse_fixed(self.fx_fixed)
        except ValueError as exc:
            raise UnsafeSettings(f"PAYRAIL_FX_FIXED: {exc}") from None
        if self.fx_source not in ("fixed", "http"):
            raise UnsafeSettings("PAYRAIL_FX_SOURCE must be fixed or http")
        if self.fx_source == "http" and not (
            self.fx_http_url.startswith(("http://", "https://")) and self.fx_http_field
        ):
            raise UnsafeSettings(
                "PAYRAIL_FX_SOURCE=http needs PAYRAIL_FX_HTTP_URL (http or https) and "
                "PAYRAIL_FX_HTTP_FIELD (the rate's dotted path in the JSON answer)"
            )
        if self.stripe_backend not in ("simulator", "stripe", "disabled"):
            raise UnsafeSettings("PAYRAIL_STRIPE_BACKEND must be simulator, stripe or disabled")
        if self.lightning_backend not in ("simulated", "lnd", "lnbits"):
            raise UnsafeSettings("PAYRAIL_LIGHTNING_BACKEND must be simulated, lnd or lnbits")
        if self.lightning_network not in ("bitcoin", "testnet", "signet", "regtest"):
            raise UnsafeSettings(
                "PAYRAIL_LIGHTNING_NETWORK must be bitcoin, testnet, signet or regtest"
            )
        if self.lightning_backend == "lnbits" and not (self.lnbits_url and self.lnbits_admin_key):
            raise UnsafeSettings("PAYRAIL_LNBITS_URL and PAYRAIL_LNBITS_ADMIN_KEY are required")
        if self.read_database_url and not (
            self.read_database_url.startswith(("postgresql://", "postgres://"))
            and self.database_url.startswith(("postgresql://", "postgres://"))
        ):
            raise UnsafeSettings(
                "PAYRAIL_READ_DATABASE_URL is a PostgreSQL replica of a PostgreSQL "
                "PAYRAIL_DATABASE_URL (postgresql://…)"
            )
        if self.db_maintenance not in ("auto", "on", "off"):
            raise UnsafeSettings("PAYRAIL_DB_MAINTENANCE must be auto, on or off")
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS_CHOICES:
            raise UnsafeSettings(
                f"PAYRAIL_SQLITE_SYNCHRONOUS must be one of {', '.join(SQLITE_SYNCHRONOUS_CHOICES)}"
            )
        if self.order_sweep_after_ms <= self.stripe_timeout_ms:
            raise UnsafeSettings(
                "PAYRAIL_ORDER_SWEEP_AFTER_MS must exceed PAYRAIL_STRIPE_TIMEOUT_MS, or the "
                "sweeper could check an order whose Stripe call is still running"
            )
        if self.deposit_check_cap_ms < self.deposit_check_base_ms:
            raise UnsafeSettings(
                "PAYRAIL_DEPOSIT_CHECK_CAP_MS must be at least PAYRAIL_DEPOSIT_CHECK_BASE_MS"
            )
        if self.deposit_webhook_url and not self.deposit_webhook_url.startswith(
            ("https://", "http://")
        ):
            raise UnsafeSettings("PAYRAIL_DEPOSIT_WEBHOOK_URL must be an http(s) URL")
        if not self.public_url.startswith(("https://", "http://")):
            raise UnsafeSettings("PAYRAIL_PUBLIC_URL must be an http(s) URL")
        if self.mode != "production":
            return
        problems = []
        if self.stripe_backend == "simulator":
            problems.append("the Stripe simulator cannot be used in production")
        stripe = self.stripe_backend == "stripe"  # "disabled": payouts only, cards answer 503
        if stripe and (
            not self.stripe_api_key or self.stripe_api_key == DEFAULT_SANDBOX_STRIPE_API_KEY
        ):
            problems.append("PAYRAIL_STRIPE_API_KEY must be set to your Stripe secret key")
        if stripe and (
            not self.stripe_webhook_secret.startswith("whsec_")
            or self.stripe_webhook_secret == DEFAULT_SANDBOX_STRIPE_WEBHOOK_SECRET
        ):
            problems.append(
                "PAYRAIL_STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret (whsec_...)"
            )
        if self.admin_key == DEFAULT_ADMIN_KEY or len(self.admin_key) < 24:
            problems.append("PAYRAIL_ADMIN_KEY must be set to a secret of 24+ characters")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            problems.append("production needs PostgreSQL (PAYRAIL_DATABASE_URL=postgresql://...)")
        if self.lightning_backend == "simulated":
            problems.append("the simulated Lightning node cannot be used in production")
        if self.lightning_backend == "lnd" and not (self.lnd_url and self.lnd_macaroon_hex):
            problems.append("PAYRAIL_LND_URL and PAYRAIL_LND_MACAROON_HEX are required")
        if self.lightning_backend == "lnd" and len(self.lnd_preimage_secret) < 32:
            problems.append(
                "PAYRAIL_LND_PREIMAGE_SECRET (32+ chars) is required: payout ids map to payment "
                "hashes through it, and a changed secret could pay an unresolved payout twice"
            )
        # Claim links are off in production until the operator sets their key (503 until
        # then), so a deployment that does not use them needs neither setting.
        if self.claim_links and not self.public_url.startswith("https://"):
            problems.append("PAYRAIL_PUBLIC_URL must be https (wallets open claim links)")
        if self.claim_links and len(self.claim_link_key) < 32:
            problems.append("PAYRAIL_CLAIM_LINK_KEY must be a secret of 32+ characters")
        if problems:
            raise UnsafeSettings("refusing to start in production: " + "; ".join(problems))
