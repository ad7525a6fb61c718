"""The load harness's own rules: thresholds, the client-side ledger, the loopback guard, the
report, and one end-to-end run against a real server subprocess on SQLite.

None of these import Locust (it monkeypatches the process with gevent); the end-to-end test
runs the CLI in a subprocess for the same reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from payrail.support import svg
from payrail_tools.loadtest import command, report, thresholds
from payrail_tools.loadtest.guard import TargetRefused, database_target, loopback_base_url
from payrail_tools.loadtest.ledger import ClientLedger
from payrail_tools.loadtest.stats import Recorder, Sample, classify, payout_ok, percentile

# ---------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("expr", "metric", "op", "value"),
    [
        ("p95<500", "p95", "<", 500.0),
        ("p99 < 1000ms", "p99", "<", 1000.0),
        ("p95<0.5s", "p95", "<", 500.0),
        ("payout_success_rate>0.7", "payout_success_rate", ">", 0.7),
        ("server_errors<10", "server_errors", "<", 10.0),
        ("balance_rollback_failures==0", "balance_rollback_failures", "==", 0.0),
        ("timeout_errors>0", "timeout_errors", ">", 0.0),
        ("avg<=250", "avg", "<=", 250.0),
        ("payouts>=.5", "payouts", ">=", 0.5),
    ],
)
def test_threshold_expressions_parse_to_metric_operator_and_value(expr, metric, op, value):
    parsed = thresholds.parse(expr)
    assert (parsed.metric, parsed.op, parsed.value, parsed.source) == (metric, op, value, "cli")


@pytest.mark.parametrize(
    "expr",
    ["p95 500", "p95<", "<500", "p95=500", "unknown_metric<1", "payouts<1s", "p95<-1", "P95<500"],
)
def test_malformed_or_unknown_thresholds_are_refused_with_a_message(expr):
    with pytest.raises(thresholds.ThresholdError, match="threshold"):
        thresholds.parse(expr)


def test_a_threshold_passes_or_fails_on_the_measured_value():
    limits = [thresholds.parse(e) for e in ("p95<500", "payout_success_rate>0.7")]
    results = thresholds.evaluate(limits, {"p95": 499.9, "payout_success_rate": 0.7})
    assert [r.passed for r in results] == [True, False]  # 0.7 is not > 0.7
    assert "VIOLATED" in results[1].line and "payout_success_rate>0.7" in results[1].line


def test_a_threshold_on_an_unmeasured_metric_fails_instead_of_passing_silently():
    limits = [thresholds.parse("signature_failures==0"), thresholds.parse("p95<500")]
    results = thresholds.evaluate(limits, {"p95": math.nan})
    assert [r.passed for r in results] == [False, False]
    assert all(r.actual is None for r in results)
    assert "no data" in results[0].line


def test_balance_rollback_failures_threshold_fails_on_any_charged_timeout():
    [result] = thresholds.evaluate(
        [thresholds.parse("balance_rollback_failures==0")], {"balance_rollback_failures": 3}
    )
    assert not result.passed and result.actual == 3


def test_command_line_thresholds_replace_the_default_on_the_same_metric_only():
    merged = thresholds.merge(["p95<500", "p99<1000", "server_errors<10"], ["p95<800", "p50<100"])
    texts = {(t.text, t.source) for t in merged}
    assert texts == {
        ("p99<1000", "default"),
        ("server_errors<10", "default"),
        ("p95<800", "cli"),
        ("p50<100", "cli"),
    }


# ---------------------------------------------------------------- client-side ledger


def _payout(payout_id: str, status: str, total: int, project: str = "p1") -> dict:
    return {"id": payout_id, "status": status, "totalCost": total, "projectId": project}


def test_client_ledger_is_funded_minus_completed_minus_pending():
    ledger = ClientLedger()
    ledger.fund("p1", 10_000)
    ledger.observe("p1", _payout("a", "completed", 1_020))
    ledger.observe("p1", _payout("b", "pending", 510))
    ledger.observe("p1", _payout("c", "error", 2_040))  # a rolled-back 504 costs nothing
    ledger.observe("p1", _payout("d", "expired", 102))
    assert ledger.expected_balance("p1") == 10_000 - 1_020 - 510
    assert ledger.pending_ids() == ["b"]
    assert ledger.compare({"p1": (8_470, 510)}) == []


def test_pending_payout_resolved_to_error_gives_its_cost_back():
    ledger = ClientLedger()
    ledger.fund("p1", 5_000)
    ledger.observe("p1", _payout("a", "pending", 1_020))
    assert ledger.expected_balance("p1") == 3_980
    ledger.observe("p1", _payout("a", "error", 1_020))
    assert ledger.expected_balance("p1") == 5_000 and ledger.pending_ids() == []


def test_client_ledger_flags_a_server_that_kept_the_charge_of_a_timeout():
    ledger = ClientLedger()
    ledger.fund("p1", 5_000)
    ledger.observe("p1", _payout("t", "error", 1_020))  # 504, legacy mode: charge stayed
    [mismatch] = ledger.compare({"p1": (3_980, 0)})
    assert (mismatch.expected_sats, mismatch.server_sats) == (5_000, 3_980)
    assert "diff -1020" in mismatch.line


def test_a_final_status_that_changes_or_a_foreign_payout_is_a_conflict():
    ledger = ClientLedger()
    ledger.fund("p1", 5_000)
    ledger.observe("p1", _payout("a", "completed", 100))
    ledger.observe("p1", _payout("a", "error", 100))
    ledger.observe("p1", _payout("a", "completed", 101))
    ledger.observe("p1", _payout("z", "completed", 100, project="p2"))
    assert len(ledger.conflicts) == 3
    assert ledger.payouts["a"].status == "completed" and "z" not in ledger.payouts


def test_a_request_without_an_answer_is_kept_for_replay_by_its_key():
    ledger = ClientLedger()
    ledger.unknown("p1", {"idempotencyKey": "k1", "amount": 10})
    assert ledger.unknowns[0].body["idempotencyKey"] == "k1"


# ---------------------------------------------------------------- loopback guard


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://127.0.0.1:3000/", "http://127.0.0.1:3000"),
        ("http://127.0.0.1:3000/api/v1", "http://127.0.0.1:3000"),
        ("http://localhost:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.2", "http://127.0.0.2"),
        ("http://[::1]:3000", "http://[::1]:3000"),
    ],
)
def test_loopback_urls_are_accepted(url, base):
    assert loopback_base_url(url) == base


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:3000",
        "http://192.168.1.10:3000",
        "https://example.com",
        "http://127.0.0.1.nip.io:3000",
        "http://0.0.0.0:3000",
        "http://2130706433:3000",
        "http://user:pw@127.0.0.1:3000",
        "ftp://127.0.0.1",
        "http://127.0.0.1:3000/other",
        "127.0.0.1:3000",
    ],
)
def test_non_loopback_or_odd_urls_are_refused(url):
    with pytest.raises(TargetRefused):
        loopback_base_url(url)


def test_start_server_databases_must_be_loopback_and_droppable():
    assert database_target("postgresql://postgres@127.0.0.1:5432/payrail_chaos").name == (
        "payrail_chaos"
    )
    assert database_target("sqlite:////tmp/x/payrail.db").kind == "sqlite"
    for bad in (
        "postgresql://postgres@db.internal:5432/payrail_chaos",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://postgres@127.0.0.1:5432/",
        "mysql://127.0.0.1/x",
        "sqlite:///:memory:",
    ):
        with pytest.raises(TargetRefused):
            database_target(bad)


def test_loadtest_command_refuses_a_remote_url_before_sending_anything():
    args = command.Arguments(scenario="duplicate_detection", url="http://203.0.113.7:3000")
    assert command.run(args) == command.EXIT_HARNESS
    assert "locust" not in sys.modules  # refused before Locust (and gevent) was even loaded


@pytest.mark.parametrize(
    "args",
    [
        command.Arguments(scenario="no_such_scenario"),
        command.Arguments(scenario="duplicate_detection", legacy=True),
        command.Arguments(scenario="timeout_recovery", thresholds=["p95 fast"]),
        command.Arguments(scenario="timeout_recovery", start_server=True),
        command.Arguments(scenario="timeout_recovery", duration_scale=0),
    ],
)
def test_bad_arguments_exit_2_without_running(args):
    assert command.run(args) == command.EXIT_HARNESS


# ---------------------------------------------------------------- answers and statistics


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (201, None, "completed"),
        (202, None, "pending"),
        (200, None, "replay"),
        (504, "GATEWAY_TIMEOUT", "timeout"),
        (504, None, "server_error"),  # a proxy's 504 is not the API's designed answer
        (502, "PAYMENT_FAILED", "payment_failed"),
        (429, "RATE_LIMIT_EXCEEDED", "rate_limited"),
        (402, "INSUFFICIENT_BALANCE", "insufficient_balance"),
        (422, "IDEMPOTENCY_KEY_REUSED", "idempotency_conflict"),
        (400, "VALIDATION_ERROR", "client_error"),
        (500, "INTERNAL_ERROR", "server_error"),
        (0, None, "transport_error"),
    ],
)
def test_answers_are_classified_by_status_and_error_code(status, error, outcome):
    body = {"success": False, "data": {"error": error}} if error else {"data": {}}
    assert classify(status, body) == outcome


def test_a_replayed_failed_payout_is_not_a_success():
    assert payout_ok("replay", {"data": {"status": "completed"}})
    assert not payout_ok("replay", {"data": {"status": "error"}})
    assert not payout_ok("timeout", {"data": {"status": "error"}})


def test_percentile_interpolates_like_numpy():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert math.isnan(percentile([], 95))


def test_designed_504s_are_not_server_errors_but_bare_500s_and_no_answer_are():
    rec = Recorder()
    rec.load_started_s = 0.0
    for status, outcome in ((201, "completed"), (504, "timeout"), (500, "server_error")):
        rec.add("payout", status, outcome, 100.0, ok=status == 201)
    rec.add("balance", 0, "transport_error", 5.0, ok=False)
    summary = rec.summary()
    assert summary["timeout_errors"] == 1
    assert summary["server_errors"] == 2
    assert summary["payouts"] == 3
    assert summary["payout_success_rate"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- report


def _sample_report(passed: bool = False) -> dict:
    rec = Recorder()
    rec.load_started_s = 0.0
    for i in range(300):
        t = i / 10
        outcome = "timeout" if i % 3 == 0 else "completed"
        status = 504 if outcome == "timeout" else 201
        rec.samples.append(Sample(t, "payout", status, outcome, 100.0 + i, status == 201))
        if i % 10 == 0:
            rec.users.append((t, min(i // 10, 20)))
            rec.balances.append((t, 50_000_000 - i * 700, 50_000_000 - i * 690, i * 10))
    rec.load_ended_s = 30.0
    limits = thresholds.evaluate(
        [thresholds.parse("p95<500", "default"), thresholds.parse("balance_rollback_failures==0")],
        {"p95": 380.0, "balance_rollback_failures": 0 if passed else 7},
    )
    return {
        "scenario": "timeout_recovery",
        "description": "50% injected node timeouts <b>escaped</b>",
        "passed": passed,
        "startedAt": "2026-01-01T00:00:00+00:00",
        "durationS": 42.0,
        "metrics": rec.summary() | {"balance_rollback_failures": 0 if passed else 7},
        "thresholds": [
            {
                "expr": r.threshold.text,
                "metric": r.threshold.metric,
                "op": r.threshold.op,
                "threshold": r.threshold.value,
                "source": r.threshold.source,
                "actual": r.actual,
                "passed": r.passed,
            }
            for r in limits
        ],
        "invariants": [
            {"name": "reconciliation clean", "passed": passed, "detail": "charged-not-paid 7"}
        ],
        "statusMix": rec.outcome_counts(),
        "payoutStatuses": {"completed": 200, "error": 100},
        "projects": [
            {
                "id": "p1",
                "funded": 1,
                "expected": 1,
                "serverBalance": 1,
                "serverReserved": 0,
                "payouts": 3,
                "ok": True,
            }
        ],
        "reconciliation": {"summary": "7 discrepancies", "discrepancies": []},
        "details": {"balance checks": "300 / 0"},
        "notes": [],
        "locust": {},
        "config": {"url": "http://127.0.0.1:3000", "durationScale": 0.1, "legacy": True},
        "timeseries": rec.timeseries(),
    }


def test_html_report_is_self_contained_with_well_formed_svg_plots():
    html = report.render_html(_sample_report())
    plots = [html[i : html.index("</svg>", i) + 6] for i in _find_all(html, "<svg")]
    assert len(plots) == 5
    titles = [ET.fromstring(p).get("aria-label") for p in plots]  # each parses as XML
    assert any("latency percentiles" in t for t in titles)
    assert any("Throughput" in t for t in titles)
    assert any("Status mix" in t for t in titles)
    assert any("Balance timeline" in t for t in titles)
    assert "<polyline" in html and "<rect" in html
    lowered = html.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    external = [u for u in _urls(html) if u != "http://www.w3.org/2000/svg"]
    assert external == ["http://127.0.0.1:3000"]  # only the target, shown as text
    assert "&lt;b&gt;escaped&lt;/b&gt;" in html  # text from the run is escaped


def test_html_report_names_each_violated_check():
    html = report.render_html(_sample_report(passed=False))
    assert "FAILED" in html
    assert "FAIL threshold balance_rollback_failures==0 violated: actual 7" in html
    assert "FAIL invariant reconciliation clean" in html
    passing = report.render_html(_sample_report(passed=True))
    assert "badge pass" in passing and "FAIL threshold" not in passing


def test_report_files_are_written_with_json_nulls_for_missing_numbers(tmp_path):
    data = _sample_report()
    data["metrics"]["p99"] = math.nan
    json_path, html_path = report.write(data, tmp_path / "out")
    parsed = json.loads(json_path.read_text())
    assert parsed["metrics"]["p99"] is None
    assert html_path.read_text().startswith("<!doctype html>")


def test_failure_lines_name_the_metric_for_ci_logs():
    lines = report.failure_lines(_sample_report(passed=False))
    assert lines[0] == "FAIL threshold balance_rollback_failures==0 violated: actual 7"
    assert lines[1].startswith("FAIL invariant reconciliation clean")


def test_tick_labels_stay_distinct_on_large_balances():
    ticks = svg.nice_ticks(49_980_000, 50_000_000)
    labels = [svg.fmt_number(t, ticks[1] - ticks[0]) for t in ticks]
    assert len(set(labels)) == len(labels) and labels[0] == "49.98M"
    assert ticks[0] <= 49_980_000 and ticks[-1] >= 50_000_000


def _find_all(text: str, needle: str) -> list[int]:
    found, i = [], text.find(needle)
    while i != -1:
        found.append(i)
        i = text.find(needle, i + 1)
    return found


def _urls(text: str) -> list[str]:
    return sorted(set(re.findall(r"https?://[^\s\"'<>]+", text)))


# ---------------------------------------------------------------- end to end


def test_duplicate_detection_end_to_end_against_a_real_server_passes(tmp_path: Path):
    """The whole path: --start-server on SQLite, Locust load, ledger, reconciliation, report."""
    report_dir = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYRAIL_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "payrail.entrypoints.cli.app",
            "loadtest",
            "--scenario",
            "duplicate_detection",
            "--start-server",
            "--database-url",
            f"sqlite:///{tmp_path / 'payrail.db'}",
            "--report",
            str(report_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result = json.loads((report_dir / "report.json").read_text())
    assert result["passed"] and result["metrics"]["duplicate_payouts"] == 0
    assert result["payoutStatuses"] == {"completed": 10}
    assert result["reconciliation"]["clean"]
    assert (report_dir / "report.html").stat().st_size > 10_000
