"""Run one scenario: set up projects and faults, drive Locust, settle, check money, report.

The order after the load matters: first every unknown outcome is replayed by its idempotency
key, then every pending payout is polled until final, and only then are balances compared and
reconciliation asked. Checking earlier would flag money that is merely still in flight.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from locust.env import Environment
from locust.runners import STATE_STOPPED
from rich.console import Console

from payrail.support.wording import plural
from payrail_tools.loadtest import report as report_mod
from payrail_tools.loadtest import scenarios, thresholds
from payrail_tools.loadtest.api import Api, HarnessError
from payrail_tools.loadtest.context import Project, RunContext
from payrail_tools.loadtest.receiver import CallbackReceiver
from payrail_tools.loadtest.stats import Recorder

STOP_TIMEOUT_S = 60.0  # graceful stop: a user finishes the request it is in
LOAD_MARGIN_S = 120.0  # a load phase past 1.5 × its plan + this is stuck
PROGRESS_EVERY_S = 5.0
MONITOR_TICK_S = 1.0
BALANCE_SAMPLE_S = 1.0
PENDING_POLL_S = 0.5
GET_CONCURRENCY = 16
FUND_SATS = 10_000_000  # per project: far above what any scenario can spend at scale 1
FAULT_SETTLE_S = 0.6  # > the server's 500 ms fault-settings cache
UNKNOWN_REPLAY_ATTEMPTS = 3
EXAMPLES_MAX = 3


@dataclass
class Options:
    scenario: str
    base_url: str
    admin_key: str
    control_key: str
    duration_scale: float
    report_dir: Path
    thresholds: list[str]
    legacy: bool
    server: dict[str, Any] | None = None  # what --start-server started, for the report


def run(opts: Options, console: Console) -> tuple[int, dict[str, Any]]:
    """Returns (exit code, report). 0 pass, 1 a threshold or invariant failed."""
    logging.getLogger("locust").setLevel(logging.ERROR)
    scenario = scenarios.get(opts.scenario)
    limits = thresholds.merge(scenario.defaults, opts.thresholds)
    started_at = datetime.now(UTC)
    api = Api(opts.base_url, opts.admin_key, opts.control_key, Recorder())
    ctx = RunContext(scenario.name, opts.base_url, api, opts.duration_scale, opts.legacy)
    api.health()
    original_faults = api.faults()
    if original_faults is None:
        raise HarnessError(
            f"{opts.base_url} has no /test endpoints (production mode?): the load harness needs "
            "a sandbox server"
        )
    faults = scenario.faults(opts.legacy)
    locust_stats: dict[str, Any] = {}
    recon: dict[str, Any] = {}
    try:
        _setup_projects(ctx, scenario.project_count)
        if scenario.needs_receiver:
            ctx.receiver = CallbackReceiver(scenario.refuse_first_every)
            ctx.receiver.start()
        api.set_faults(faults)
        gevent.sleep(FAULT_SETTLE_S)
        console.print(
            f"loadtest {scenario.name}: {plural(len(ctx.projects), 'project')} funded with "
            f"{FUND_SATS:,} sats each, faults {faults}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sampler_stop = Event()
        sampler = gevent.spawn(_sample_balances, ctx, sampler_stop)
        locust_stats = _run_load(ctx, scenario.plan(ctx), console)
        scenario.after_load(ctx)
        _resolve_unknowns(ctx)
        unresolved = _resolve_pending(ctx, scenario.settle_deadline_s, console)
        sampler_stop.set()
        sampler.join()
        _take_balance_sample(ctx)
        _check_money(ctx, unresolved)
        scenario.check(ctx)
        recon = _reconcile(ctx)
    finally:
        if ctx.receiver is not None:
            ctx.receiver.stop()
        try:
            api.set_faults(original_faults)
        finally:
            api.close()
    report = _build_report(ctx, opts, scenario, limits, started_at, locust_stats, recon, faults)
    json_path, html_path = report_mod.write(report, opts.report_dir)
    report["files"] = {"report.json": str(json_path), "report.html": str(html_path)}
    report_mod.print_summary(report, console)
    return (0 if report["passed"] else 1), report


# ---------------------------------------------------------------- setup


def _find_secret(data: dict[str, Any]) -> str | None:
    """A callback-signing secret, if project creation returned one (any key naming a secret)."""
    for holder in (data, data.get("project") or {}):
        for key, value in holder.items():
            if "secret" in key.lower() and isinstance(value, str) and value:
                return value
    return None


def _setup_projects(ctx: RunContext, count: int) -> None:
    for i in range(count):
        project_id = f"lt_{ctx.run_id}_{ctx.scenario}_{i}"
        created = ctx.api.create_project(project_id)
        funded = ctx.api.fund(project_id, FUND_SATS)
        if funded["previousBalance"] != 0:
            raise HarnessError(f"new project {project_id} did not start at 0: {funded}")
        ctx.ledger.fund(project_id, int(funded["addedAmount"]))
        ctx.projects.append(Project(project_id, created["apiKey"], i, _find_secret(created)))


# ---------------------------------------------------------------- load


def _run_load(ctx: RunContext, plan: scenarios.Plan, console: Console) -> dict[str, Any]:
    user_class = type(plan.user_class.__name__, (plan.user_class,), {"abstract": False})
    user_class.ctx = ctx
    user_class.host = ctx.base_url
    env = Environment(
        user_classes=[user_class],
        shape_class=plan.shape,
        stop_timeout=STOP_TIMEOUT_S,
        host=ctx.base_url,
    )

    def on_user_error(user_instance: Any, exception: Exception, tb: Any, **_: Any) -> None:
        ctx.task_errors.append(f"{type(exception).__name__}: {exception}")

    env.events.user_error.add_listener(on_user_error)
    runner = env.create_local_runner()
    ctx.users_expected = plan.users
    recorder = ctx.recorder
    recorder.load_started_s = recorder.now()
    deadline = recorder.now() + plan.expected_s * 1.5 + LOAD_MARGIN_S
    monitor_stop = Event()
    monitor = gevent.spawn(_monitor, ctx, runner, console, plan.expected_s, monitor_stop)
    timed_out = False
    try:
        if plan.shape is not None:
            runner.start_shape()
            gevent.sleep(MONITOR_TICK_S)
            while runner.state != STATE_STOPPED and recorder.now() < deadline:
                gevent.sleep(0.2)
            timed_out = runner.state != STATE_STOPPED
        else:
            runner.start(plan.users, spawn_rate=plan.spawn_rate)
            if plan.fixed_work:
                timed_out = not ctx.finished.wait(max(deadline - recorder.now(), 1.0))
            else:
                gevent.sleep(plan.duration_s or 0)
        runner.stop()  # graceful: a user finishes its request (stop_timeout)
    finally:
        runner.quit()
        recorder.load_ended_s = recorder.now()
        monitor_stop.set()
        monitor.join()
    if timed_out:
        ctx.check(
            "load phase finished in time",
            False,
            f"still running after {deadline - recorder.load_started_s:.0f} s; stopped",
        )
    if runner.cpu_warning_emitted:
        ctx.notes.append(
            "the load generator's CPU went above 90%: latencies include its own queueing"
        )
    total = env.stats.total
    return {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "medianMs": total.median_response_time,
        "p95Ms": total.get_response_time_percentile(0.95),
        "avgMs": round(total.avg_response_time, 1),
        "endpoints": {
            name: {"requests": s.num_requests, "failures": s.num_failures}
            for (name, _method), s in env.stats.entries.items()
        },
    }


def _monitor(
    ctx: RunContext, runner: Any, console: Console, expected_s: float, stop: Event
) -> None:
    """Users over time for the report, and a progress line every few seconds."""
    recorder = ctx.recorder
    last_print, seen = recorder.now(), 0
    while not stop.wait(MONITOR_TICK_S):
        now = recorder.now()
        recorder.users.append((now, runner.user_count))
        if now - last_print < PROGRESS_EVERY_S:
            continue
        window = [s for s in recorder.samples[seen:] if s.op == "payout"]
        seen = len(recorder.samples)
        latencies = sorted(s.latency_ms for s in window)
        p95 = (
            latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
            if window
            else 0
        )
        outcomes: dict[str, int] = {}
        for s in window:
            outcomes[s.outcome] = outcomes.get(s.outcome, 0) + 1
        mix = " ".join(f"{k}:{v}" for k, v in sorted(outcomes.items()))
        elapsed = now - (recorder.load_started_s or 0)
        console.print(
            f"[{elapsed:6.1f}s / ~{expected_s:.0f}s] users {runner.user_count:4d} | "
            f"payouts {len(recorder.payouts()):,} ({len(window) / (now - last_print):.1f}/s) | "
            f"p95 {p95:.0f} ms | {mix or 'no answers yet'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        last_print = now


def _take_balance_sample(ctx: RunContext) -> None:
    server = reserved = 0
    try:
        for project in ctx.projects:
            balance, held = ctx.api.balance(project.id)
            server += balance
            reserved += held
    except HarnessError:
        return  # a missing point; a failing read is counted as a server error anyway
    ctx.recorder.balances.append(
        (ctx.recorder.now(), server, ctx.ledger.expected_total(), reserved)
    )


def _sample_balances(ctx: RunContext, stop: Event) -> None:
    while True:
        _take_balance_sample(ctx)
        if stop.wait(BALANCE_SAMPLE_S):
            return


# ---------------------------------------------------------------- after the load


def _project(ctx: RunContext, project_id: str) -> Project:
    return next(p for p in ctx.projects if p.id == project_id)


def _resolve_unknowns(ctx: RunContext) -> None:
    """A request with no answer may or may not have made a payout: its key tells."""
    unknowns, ctx.ledger.unknowns = ctx.ledger.unknowns, []
    ctx.counters["unknown_outcomes"] = len(unknowns)
    left = 0
    for unknown in unknowns:
        project = _project(ctx, unknown.project_id)
        if not unknown.body.get("idempotencyKey"):
            left += 1
            continue
        for _ in range(UNKNOWN_REPLAY_ATTEMPTS):
            answer = ctx.api.post_payout(project.api_key, unknown.body)
            if {"id", "totalCost", "status"} <= answer.data.keys():
                ctx.ledger.observe(project.id, answer.data)
                break
            if 400 <= answer.status < 500:
                break  # definite: no payout was made (rate limit, validation, balance)
            gevent.sleep(1.0)
        else:
            left += 1
    if left:
        ctx.check("every unknown outcome resolved", False, f"{left} requests stay unknown")


def _resolve_pending(ctx: RunContext, deadline_s: float, console: Console) -> int:
    """Poll pending payouts by GET until all are final or the deadline passes."""
    deadline = ctx.recorder.now() + deadline_s
    started, last_print = ctx.recorder.now(), ctx.recorder.now()
    pool = Pool(GET_CONCURRENCY)
    while True:
        pending = ctx.ledger.pending_ids()
        if not pending:
            break
        now = ctx.recorder.now()
        if now > deadline:
            break
        if now - last_print >= PROGRESS_EVERY_S or now == started:
            console.print(
                f"settling: {plural(len(pending), 'payout')} still pending "
                f"({now - started:.0f}s of at most {deadline_s:.0f}s)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            last_print = now
        owners = {pid: ctx.ledger.payouts[pid].project_id for pid in pending}
        for payout_id, data in zip(pending, pool.imap(ctx.api.payout, pending), strict=True):
            if data and {"id", "totalCost", "status"} <= data.keys():
                ctx.ledger.observe(owners[payout_id], data)
        if ctx.ledger.pending_ids():
            gevent.sleep(PENDING_POLL_S)
    ctx.details["settle wait (s)"] = round(ctx.recorder.now() - started, 1)
    return len(ctx.ledger.pending_ids())


def _check_money(ctx: RunContext, unresolved: int) -> None:
    server = {p.id: ctx.api.balance(p.id) for p in ctx.projects}
    ctx.state["server_balances"] = server
    mismatches = ctx.ledger.compare(server)
    ctx.state["mismatches"] = {m.project_id for m in mismatches}
    ctx.counters["ledger_mismatches"] = len(mismatches)
    ctx.check(
        "client-side ledger = server balance, per project",
        not mismatches,
        "; ".join(m.line for m in mismatches[:EXAMPLES_MAX])
        or f"{len(server)} projects agree to the sat "
        f"(funded − Σ completed − Σ pending, from {len(ctx.ledger.payouts):,} payouts seen)",
    )
    reserved = sum(held for _, held in server.values())
    ctx.counters["unresolved_payouts"] = unresolved
    ctx.check(
        "every payout final, no reservation left",
        unresolved == 0 and reserved == 0,
        f"{unresolved} payouts still pending, {reserved:,} sats reserved"
        if unresolved or reserved
        else "all final, 0 sats reserved",
    )
    unseen, phantom = [], []
    for project in ctx.projects:
        on_server = set(ctx.api.payout_ids(project.id))
        seen = ctx.ledger.ids_for(project.id)
        unseen += sorted(on_server - seen)
        phantom += sorted(seen - on_server)
    ctx.counters["unseen_payouts"] = len(unseen) + len(phantom)
    ctx.check(
        "server and client know the same payouts",
        not unseen and not phantom,
        f"{len(unseen)} on the server but never in an answer {unseen[:EXAMPLES_MAX]}, "
        f"{len(phantom)} answered but not listed {phantom[:EXAMPLES_MAX]}"
        if unseen or phantom
        else f"{len(ctx.ledger.payouts):,} payouts, listed and answered alike",
    )
    ctx.check(
        "answers never contradict each other",
        not ctx.ledger.conflicts,
        "; ".join(ctx.ledger.conflicts[:EXAMPLES_MAX]) or "no payout changed a final status",
    )


def _reconcile(ctx: RunContext) -> dict[str, Any]:
    data = ctx.api.reconciliation()
    ours_ids = set(ctx.ledger.payouts) | {f"project:{p.id}" for p in ctx.projects}
    ours = [
        d for d in data.get("discrepancies", []) if not d.get("ids") or set(d["ids"]) & ours_ids
    ]
    foreign = len(data.get("discrepancies", [])) - len(ours)
    kinds: dict[str, int] = {}
    for d in ours:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    ctx.counters["reconciliation_discrepancies"] = len(ours)
    summary = (
        f"clean over {data.get('payoutsChecked', 0):,} payouts"
        if not ours
        else f"{plural(len(ours), 'discrepancy')} on this run's data: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )
    if foreign:
        summary += f" ({foreign} older discrepancies on other data, not counted)"
        ctx.notes.append(
            f"reconciliation also reports {foreign} discrepancies on data this run did not make"
        )
    ctx.check("reconciliation clean (GET /admin/reconciliation)", not ours, summary)
    return {
        "summary": summary,
        "clean": not ours,
        "payoutsChecked": data.get("payoutsChecked"),
        "counts": kinds,
        "foreign": foreign,
        "discrepancies": ours,
    }


# ---------------------------------------------------------------- report


def _build_report(
    ctx: RunContext,
    opts: Options,
    scenario: scenarios.Scenario,
    limits: list[thresholds.Threshold],
    started_at: datetime,
    locust_stats: dict[str, Any],
    recon: dict[str, Any],
    faults: dict[str, Any],
) -> dict[str, Any]:
    recorder = ctx.recorder
    if ctx.task_errors:
        ctx.check(
            "harness tasks ran without errors",
            False,
            f"{len(ctx.task_errors)}: {'; '.join(ctx.task_errors[:EXAMPLES_MAX])}",
        )
    metrics: dict[str, Any] = dict(recorder.summary())
    metrics |= dict(ctx.counters)
    metrics["balance_rollback_failures"] = len(ctx.rollback_failures)
    metrics["task_errors"] = len(ctx.task_errors)
    results = thresholds.evaluate(limits, metrics)
    server_balances: dict[str, tuple[int, int]] = ctx.state.get("server_balances", {})
    mismatched: set[str] = ctx.state.get("mismatches", set())
    projects = [
        {
            "id": p.id,
            "funded": ctx.ledger.funded[p.id],
            "expected": ctx.ledger.expected_balance(p.id),
            "serverBalance": server_balances.get(p.id, (None, None))[0],
            "serverReserved": server_balances.get(p.id, (None, None))[1],
            "payouts": len(ctx.ledger.ids_for(p.id)),
            "ok": p.id in server_balances and p.id not in mismatched,
        }
        for p in ctx.projects
    ]
    passed = all(r.passed for r in results) and all(c.passed for c in ctx.checks)
    if ctx.rollback_failures:
        ctx.details["payouts charged on a 504/502 (examples)"] = sorted(ctx.rollback_failures)[
            :EXAMPLES_MAX
        ]
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "passed": passed,
        "startedAt": started_at.isoformat(timespec="seconds"),
        "durationS": recorder.now(),
        "metrics": metrics,
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
            for r in results
        ],
        "invariants": [
            {"name": c.name, "passed": c.passed, "detail": c.detail} for c in ctx.checks
        ],
        "statusMix": recorder.outcome_counts(),
        "payoutStatuses": ctx.ledger.status_counts(),
        "projects": projects,
        "reconciliation": recon,
        "details": ctx.details,
        "notes": ctx.notes,
        "locust": locust_stats,
        "config": {
            "url": opts.base_url,
            "durationScale": opts.duration_scale,
            "legacy": opts.legacy,
            "faults": faults,
            "thresholdsGiven": opts.thresholds,
            "runId": ctx.run_id,
            "server": opts.server,
        },
        "timeseries": recorder.timeseries(),
    }
