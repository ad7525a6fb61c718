"""Settings: safe sandbox defaults, and production refuses unsafe configurations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from payrail.config import Settings, UnsafeSettings

GOOD_PRODUCTION = {
    "PAYRAIL_MODE": "production",
    "PAYRAIL_ADMIN_KEY": "a" * 32,
    "PAYRAIL_DATABASE_URL": "postgresql://payrail@127.0.0.1:5432/payrail",
    "PAYRAIL_LND_URL": "https://127.0.0.1:8080",
    "PAYRAIL_LND_MACAROON_HEX": "ab" * 32,
    "PAYRAIL_LND_PREIMAGE_SECRET": "s" * 32,
    "PAYRAIL_STRIPE_API_KEY": "sk_live_" + "k" * 24,
    "PAYRAIL_STRIPE_WEBHOOK_SECRET": "whsec_" + "w" * 32,
}


def test_sandbox_defaults_listen_on_loopback_port_3000_with_sqlite():
    s = Settings.from_env({})
    assert (s.mode, s.host, s.port, s.lightning_backend) == (
        "sandbox",
        "127.0.0.1",
        3000,
        "simulated",
    )
    assert s.database_url.startswith("sqlite:///")
    assert s.sandbox_api_key == "test_api_key_12345"


def test_a_complete_production_configuration_is_accepted():
    assert Settings.from_env(GOOD_PRODUCTION).lightning_backend == "lnd"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"PAYRAIL_ADMIN_KEY": ""}, "PAYRAIL_ADMIN_KEY"),
        ({"PAYRAIL_LIGHTNING_BACKEND": "simulated"}, "simulated"),
        ({"PAYRAIL_DATABASE_URL": "sqlite:///x.db"}, "PostgreSQL"),
        ({"PAYRAIL_LND_MACAROON_HEX": ""}, "MACAROON"),
        ({"PAYRAIL_LND_PREIMAGE_SECRET": "short"}, "PREIMAGE_SECRET"),
        ({"PAYRAIL_STRIPE_BACKEND": "simulator"}, "Stripe simulator"),
        ({"PAYRAIL_STRIPE_API_KEY": ""}, "PAYRAIL_STRIPE_API_KEY"),
        ({"PAYRAIL_STRIPE_API_KEY": "sk_test_payrail_sandbox"}, "PAYRAIL_STRIPE_API_KEY"),
        ({"PAYRAIL_STRIPE_WEBHOOK_SECRET": "not-a-secret"}, "PAYRAIL_STRIPE_WEBHOOK_SECRET"),
    ],
)
def test_production_refuses_to_start_on_unsafe_settings(change, complaint):
    env = {**GOOD_PRODUCTION, **change}
    env = {k: v for k, v in env.items() if v != ""}
    with pytest.raises(UnsafeSettings, match=complaint):
        Settings.from_env(env)


def test_production_talks_to_stripe_and_sandbox_to_its_own_simulator():
    assert Settings.from_env(GOOD_PRODUCTION).stripe_base_url == "https://api.stripe.com"
    sandbox = Settings.from_env({"PAYRAIL_PORT": "3100"})
    assert sandbox.stripe_base_url == "http://127.0.0.1:3100/sim/stripe"


def test_the_sweeper_must_wait_longer_than_a_stripe_call():
    with pytest.raises(UnsafeSettings, match="SWEEP_AFTER"):
        Settings.from_env(
            {"PAYRAIL_ORDER_SWEEP_AFTER_MS": "5000", "PAYRAIL_STRIPE_TIMEOUT_MS": "10000"}
        )


def test_lease_must_outlast_a_node_call():
    with pytest.raises(UnsafeSettings, match="LEASE"):
        Settings.from_env({"PAYRAIL_LEASE_MS": "5000", "PAYRAIL_NODE_TIMEOUT_MS": "10000"})


@pytest.mark.parametrize(
    "bad", [{"PAYRAIL_PORT": "abc"}, {"PAYRAIL_PORT": "0"}, {"PAYRAIL_MODE": "prod"}]
)
def test_malformed_settings_are_refused_with_the_variable_named(bad):
    with pytest.raises(UnsafeSettings, match=next(iter(bad))):
        Settings.from_env(bad)


LNBITS_ONLY_PRODUCTION = {
    "PAYRAIL_MODE": "production",
    "PAYRAIL_ADMIN_KEY": "a" * 32,
    "PAYRAIL_DATABASE_URL": "postgresql://payrail@127.0.0.1:5432/payrail",
    "PAYRAIL_LIGHTNING_BACKEND": "lnbits",
    "PAYRAIL_LNBITS_URL": "https://lnbits.example.com",
    "PAYRAIL_LNBITS_ADMIN_KEY": "k" * 32,
}


def test_production_starts_with_only_lightning_settings_and_card_payments_off():
    settings = Settings.from_env(LNBITS_ONLY_PRODUCTION)
    assert (settings.stripe_backend, settings.card_payments) == ("disabled", False)
    assert Settings.from_env(GOOD_PRODUCTION).card_payments is True


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"PAYRAIL_LNBITS_ADMIN_KEY": ""}, "PAYRAIL_LNBITS_ADMIN_KEY"),
        ({"PAYRAIL_LIGHTNING_BACKEND": "clightning"}, "PAYRAIL_LIGHTNING_BACKEND"),
        ({"PAYRAIL_LIGHTNING_NETWORK": "mainnet"}, "PAYRAIL_LIGHTNING_NETWORK"),
        ({"PAYRAIL_STRIPE_WEBHOOK_SECRET": "whsec_" + "w" * 32}, "PAYRAIL_STRIPE_API_KEY"),
    ],
)
def test_lnbits_production_refuses_incomplete_settings(change, complaint):
    env = {k: v for k, v in {**LNBITS_ONLY_PRODUCTION, **change}.items() if v != ""}
    with pytest.raises(UnsafeSettings, match=complaint):
        Settings.from_env(env)


def test_sqlite_durability_is_full_unless_normal_is_asked_for():
    assert Settings.from_env({}).sqlite_synchronous == "FULL"
    normal = Settings.from_env({"PAYRAIL_SQLITE_SYNCHRONOUS": "normal"})
    assert normal.sqlite_synchronous == "NORMAL"
    with pytest.raises(UnsafeSettings, match="PAYRAIL_SQLITE_SYNCHRONOUS"):
        Settings.from_env({"PAYRAIL_SQLITE_SYNCHRONOUS": "OFF"})


def test_every_variable_the_settings_read_is_in_docs_configuration_md():
    """docs/configuration.md says it lists every PAYRAIL_* variable: each one config.py reads."""
    root = Path(__file__).resolve().parents[1]
    name = re.compile(r"PAYRAIL_[A-Z0-9_]+")
    read = set(name.findall((root / "src/payrail/config.py").read_text()))
    documented = set(name.findall((root / "docs/configuration.md").read_text()))
    assert read, "config.py reads no PAYRAIL_* variable?"
    assert sorted(read - documented) == []
