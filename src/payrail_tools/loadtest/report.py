"""The run's verdict in three forms: report.json, a self-contained report.html, a terminal summary.

The HTML has no script, stylesheet link or font from anywhere: it is one file that opens the
same on a laptop offline as in a CI artifact viewer.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from payrail.support import svg
from payrail_tools.loadtest.stats import OUTCOMES

OUTCOME_COLORS = {
    "completed": "#16a34a",
    "pending": "#0ea5e9",
    "replay": "#6366f1",
    "timeout": "#f59e0b",
    "payment_failed": "#ea580c",
    "rate_limited": "#a855f7",
    "insufficient_balance": "#64748b",
    "idempotency_conflict": "#d946ef",
    "client_error": "#94a3b8",
    "server_error": "#dc2626",
    "transport_error": "#7f1d1d",
}
STATUS_COLORS = {
    "completed": "#16a34a",
    "pending": "#0ea5e9",
    "error": "#f59e0b",
    "expired": "#64748b",
}
KEY_FIGURES = (
    ("payouts", "payouts"),
    ("payouts_per_s", "payouts/s"),
    ("p95", "p95 ms"),
    ("p99", "p99 ms"),
    ("payout_success_rate", "success rate"),
    ("timeout_errors", "504 timeouts"),
    ("balance_rollback_failures", "rollback failures"),
    ("reconciliation_discrepancies", "reconciliation"),
)
DISCREPANCIES_SHOWN_MAX = 50


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per violated threshold or invariant, naming it: what CI logs and greps."""
    lines = [
        f"FAIL threshold {t['expr']} violated: actual {_show(t['actual'])}"
        for t in report["thresholds"]
        if not t["passed"]
    ]
    lines += [
        f"FAIL invariant {i['name']}: {i['detail']}"
        for i in report["invariants"]
        if not i["passed"]
    ]
    return lines


def _show(value: Any) -> str:
    if value is None:
        return "no data"
    if isinstance(value, float):
        if math.isnan(value):
            return "no data"
        if value.is_integer():
            return f"{int(value):,}"
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    json_path.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path


# ---------------------------------------------------------------- terminal


def print_summary(report: dict[str, Any], console: Console) -> None:
    metrics = report["metrics"]
    verdict = "[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]"
    console.rule(f"loadtest {report['scenario']}: {verdict}")
    figures = Table(show_header=False, box=None, pad_edge=False)
    for key, label in KEY_FIGURES:
        figures.add_row(label, _show(metrics.get(key)))
    figures.add_row("load duration", f"{_show(metrics.get('load_duration_s'))} s")
    figures.add_row("whole run", f"{report['durationS']:.1f} s")
    console.print(figures)
    mix = Table("answer", "count", title="POST /payouts answers", title_justify="left")
    for outcome, count in report["statusMix"].items():
        mix.add_row(OUTCOMES.get(outcome, outcome), f"{count:,}")
    console.print(mix)
    checks = Table("", "check", "actual / detail", title="thresholds and invariants")
    for t in report["thresholds"]:
        mark = "[green]✓[/green]" if t["passed"] else "[red]✗[/red]"
        checks.add_row(mark, f"{t['expr']} ({t['source']})", _show(t["actual"]))
    for i in report["invariants"]:
        mark = "[green]✓[/green]" if i["passed"] else "[red]✗[/red]"
        checks.add_row(mark, i["name"], i["detail"])
    console.print(checks)
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for line in failure_lines(report):
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)
    for name, path in report.get("files", {}).items():
        console.print(f"{name}: {path}", markup=False, highlight=False, soft_wrap=True)
    count = len(failure_lines(report))
    console.print(
        f"loadtest {report['scenario']}: "
        + ("PASSED" if report["passed"] else f"FAILED ({count} checks violated)"),
        style="bold green" if report["passed"] else "bold red",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------- HTML

CSS = """
body{margin:0;background:#f8fafc;color:#0f172a;font:14px/1.45 system-ui,-apple-system,Segoe UI,
Roboto,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 10px}
.sub{color:#475569;margin:0 0 18px}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-weight:700;color:#fff;
font-size:13px;vertical-align:middle;margin-left:8px}
.pass{background:#16a34a}.fail{background:#dc2626}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:10px 12px}
.card .v{font-size:20px;font-weight:700}.card .k{color:#64748b;font-size:12px}
.card.bad{border-color:#fca5a5;background:#fef2f2}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
.panel{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:10px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e2e8f0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #f1f5f9;vertical-align:top}
th{background:#f1f5f9;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#16a34a;font-weight:700}.no{color:#dc2626;font-weight:700}
ul.fail{background:#fef2f2;border:1px solid #fca5a5;border-radius:10px;padding:10px 28px;
color:#991b1b}
code{background:#f1f5f9;padding:1px 4px;border-radius:4px}
footer{color:#94a3b8;margin-top:30px;font-size:12px}
"""


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            text = cell if isinstance(cell, _Raw) else escape(_show(cell))
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class _Raw(str):
    """Trusted markup (built here from escaped parts)."""


def _mark(passed: bool) -> _Raw:
    return _Raw('<span class="ok">✓ pass</span>' if passed else '<span class="no">✗ FAIL</span>')


def _charts(report: dict[str, Any]) -> list[str]:
    ts = report["timeseries"]
    x = ts["t"]
    latency_refs = [
        svg.Reference(t["expr"], t["threshold"])
        for t in report["thresholds"]
        if t["metric"] in ("p95", "p99") and t["op"] in ("<", "<=")
    ]
    latency = svg.time_chart(
        f"POST /payouts latency percentiles ({ts['bucket_s']} s buckets)",
        x,
        lines=[
            svg.Series("p50", ts["p50"], "#0ea5e9"),
            svg.Series("p95", ts["p95"], "#f59e0b"),
            svg.Series("p99", ts["p99"], "#dc2626"),
        ],
        references=latency_refs,
        y_label="milliseconds",
    )
    throughput = svg.time_chart(
        "Throughput: answered payouts per second, by answer",
        x,
        stacked=[svg.Series(OUTCOMES[k], v, OUTCOME_COLORS[k]) for k, v in ts["per_s"].items()],
        lines=[svg.Series("users", ts["users"], "#0f172a", dashed=True, right_axis=True)],
        y_label="payouts / s",
        y2_label="Locust users",
    )
    mix = svg.bar_chart(
        "Status mix: POST /payouts answers",
        [(OUTCOMES[k], v, OUTCOME_COLORS[k]) for k, v in report["statusMix"].items()],
    )
    finals = svg.bar_chart(
        "Final payout statuses (client ledger, after the settle wait)",
        [
            (k, v, STATUS_COLORS.get(k, "#94a3b8"))
            for k, v in sorted(report["payoutStatuses"].items(), key=lambda kv: -kv[1])
        ],
    )
    points = ts["balances"]
    bx = [p[0] for p in points]
    balance = svg.time_chart(
        "Balance timeline: Σ project balances, server vs client-side ledger",
        bx if bx else [0.0],
        lines=[
            svg.Series("server balance", [p[1] for p in points], "#16a34a"),
            svg.Series("client ledger", [p[2] for p in points], "#6366f1", dashed=True),
            svg.Series("server reserved", [p[3] for p in points], "#f59e0b", right_axis=True),
        ]
        if points
        else [],
        y_label="sats",
        y2_label="reserved sats",
        from_zero=False,
    )
    return [latency, throughput, mix, finals, balance]


def render_html(report: dict[str, Any]) -> str:
    m = report["metrics"]
    passed = report["passed"]
    cards = []
    for key, label in KEY_FIGURES:
        value = m.get(key)
        bad = any(t["metric"] == key and not t["passed"] for t in report["thresholds"])
        cls = "card bad" if bad else "card"
        shown = _show(
            round(value, 3) if isinstance(value, float) and math.isfinite(value) else value
        )
        cards.append(
            f'<div class="{cls}"><div class="v">{escape(shown)}</div>'
            f'<div class="k">{escape(label)}</div></div>'
        )
    fails = failure_lines(report)
    fail_html = (
        '<ul class="fail">' + "".join(f"<li>{escape(f)}</li>" for f in fails) + "</ul>"
        if fails
        else ""
    )
    charts = "".join(f'<div class="panel">{c}</div>' for c in _charts(report))
    thresholds = _table(
        ["threshold", "source", "actual", "result"],
        [[t["expr"], t["source"], t["actual"], _mark(t["passed"])] for t in report["thresholds"]],
        {2},
    )
    invariants = _table(
        ["invariant", "detail", "result"],
        [[i["name"], i["detail"], _mark(i["passed"])] for i in report["invariants"]],
    )
    projects = _table(
        ["project", "funded", "client ledger", "server balance", "server reserved", "payouts", ""],
        [
            [
                p["id"],
                p["funded"],
                p["expected"],
                p["serverBalance"],
                p["serverReserved"],
                p["payouts"],
                _mark(p["ok"]),
            ]
            for p in report["projects"]
        ],
        {1, 2, 3, 4, 5},
    )
    recon = report.get("reconciliation") or {}
    recon_rows = [
        [d.get("kind"), d.get("detail"), ", ".join(d.get("ids", [])[:3]), d.get("amount")]
        for d in recon.get("discrepancies", [])[:DISCREPANCIES_SHOWN_MAX]
    ]
    recon_html = f"<p>{escape(recon.get('summary', 'not run'))}</p>" + (
        _table(["kind", "detail", "ids", "amount"], recon_rows, {3}) if recon_rows else ""
    )
    details = _table(
        ["", "value"],
        [
            [k, json.dumps(v) if isinstance(v, dict | list) else v]
            for k, v in report["details"].items()
        ],
    )
    config = _table(
        ["setting", "value"],
        [
            [k, json.dumps(v) if isinstance(v, dict | list) else v]
            for k, v in report["config"].items()
        ],
    )
    metrics = _table(
        ["metric", "value"],
        [[k, round(v, 3) if isinstance(v, float) else v] for k, v in sorted(m.items())],
        {1},
    )
    badge = (
        '<span class="badge pass">PASSED</span>'
        if passed
        else ('<span class="badge fail">FAILED</span>')
    )
    legacy = " · <b>legacy mode</b>" if report["config"]["legacy"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>payrail loadtest {escape(report["scenario"])}: {"passed" if passed else "FAILED"}</title>
<style>{CSS}</style></head>
<body><main>
<h1>payrail loadtest: {escape(report["scenario"])} {badge}</h1>
<p class="sub">{escape(report["description"])}<br>
{escape(report["startedAt"])} · {report["durationS"]:.1f} s · target
<code>{escape(report["config"]["url"])}</code> · duration scale
{escape(_show(report["config"]["durationScale"]))}{legacy}</p>
<div class="cards">{"".join(cards)}</div>
{fail_html}
<h2>Plots</h2><div class="grid">{charts}</div>
<h2>Thresholds</h2>{thresholds}
<h2>Invariants</h2>{invariants}
<h2>Client-side ledger vs server, per project</h2>{projects}
<h2>Reconciliation</h2>{recon_html}
<h2>Scenario details</h2>{details}
<h2>All metrics</h2>{metrics}
<h2>Configuration</h2>{config}
<footer>Generated by <code>payrail loadtest</code>. Self-contained: no scripts, no network.
</footer>
</main></body></html>
"""
