"""ops/prometheus/alerts.yml is valid, its expressions fire on synthetic series (promtool),
it covers the signals the runbook promises, and every metric it and the Grafana dashboard
name is one payrail exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from payrail.services.ops_metrics import DB_GAUGES
from payrail.support import metrics

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "payrail.json"
OPERATIONS = ROOT / "docs" / "operations.md"
REQUIRED_ALERTS = {
    "PayrailNodeTimeoutRateHigh",
    "PayrailPayoutSuccessRateLow",
    "PayrailReconciliationMismatch",
    "PayrailWebhookLagHigh",
    "PayrailJobQueueDepthHigh",
    "PayrailDeadDeliveries",
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (make tools installs Debian's prometheus package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI=true: the alert rules must be checked")
        pytest.skip(message)
    return path


def _run(*args: str) -> str:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_alert_rules():
    out = _run(_promtool(), "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_alert_expressions_fire_on_bad_series_and_stay_quiet_on_healthy_ones():
    out = _run(_promtool(), "test", "rules", str(ALERT_TESTS))
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {r["alert"] for r in _rules()}, "every alert has a unit test"


def test_alerts_cover_the_required_signals_with_severity_and_a_runbook_that_exists():
    rules = {r["alert"]: r for r in _rules()}
    assert set(rules) >= REQUIRED_ALERTS
    # A finding is looked at after several runs and pages only once it has lasted 30 min.
    assert rules["PayrailReconciliationMismatch"]["labels"]["severity"] == "warning"
    assert rules["PayrailReconciliationMismatch"]["for"] == "5m"
    assert rules["PayrailReconciliationMismatchPersistent"]["labels"]["severity"] == "critical"
    assert rules["PayrailReconciliationMismatchPersistent"]["for"] == "30m"
    assert rules["PayrailNodeTimeoutRateHigh"]["labels"]["severity"] == "warning"
    guide = OPERATIONS.read_text()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical")
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == f"runbook-{name.lower()}"
        assert f"### Runbook: {name}" in guide, f"docs/operations.md has no runbook for {name}"


def _exported_names() -> set[str]:
    names = {g.name for g in DB_GAUGES} | {"payrail_scrape_db_ok"}
    for value in vars(metrics).values():
        if hasattr(value, "_type") and hasattr(value, "_name"):
            base = value._name
            if value._type == "counter":
                names.add(base + "_total")
            elif value._type == "histogram":
                names |= {base + "_bucket", base + "_count", base + "_sum"}
            else:
                names.add(base)
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(payrail_[a-z_]+)", expr))


def test_every_metric_in_the_alerts_and_the_dashboard_is_one_payrail_exports():
    exported = _exported_names()
    used = set()
    for rule in _rules():
        used |= _metric_names(rule["expr"])
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        used |= _metric_names(expr)
    assert used - exported == set()
    # The dashboard shows every alert's signal.
    for rule in _rules():
        assert _metric_names(rule["expr"]) & set().union(*map(_metric_names, exprs)), rule["alert"]
