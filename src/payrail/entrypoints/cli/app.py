"""payrail command line: serve · worker · migrate · recover · reconcile · bench.

The resource commands (`payouts`, `projects`) live in cli_resources.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import typer
from rich.console import Console

from payrail import __version__
from payrail.config import SANDBOX_PROJECT_ID, Settings, UnsafeSettings
from payrail.entrypoints.cli import resources as cli_resources
from payrail.entrypoints.cli.preflight import (
    check_database_file,
    check_port_free,
    database_errors,
)
from payrail.entrypoints.cli.resources import print_table
from payrail.support.logging import configure
from payrail.support.wording import plural

app = typer.Typer(add_completion=False, help="payrail: payments that never lose or invent money.")
console = Console(stderr=True)
cli_resources.register(app)


def _print_version(value: bool) -> None:
    if value:
        print(f"payrail {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version"
    ),
) -> None:
    """payrail: payments that never lose or invent money."""


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except UnsafeSettings as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    from payrail.db.migrate import upgrade

    settings = _settings()
    check_database_file(settings, create=True)
    with database_errors(settings):
        upgrade(settings.database_url)
    console.print("[green]database is at the latest revision[/green]")


@app.command()
def serve(
    workers: int = typer.Option(1, min=1, max=32, help="server processes"),
    log_level: str = typer.Option("info", help="debug | info | warning"),
) -> None:
    """Run the HTTP API (with the background worker loop) on PAYRAIL_HOST:PAYRAIL_PORT."""

    from payrail.db.migrate import upgrade
    from payrail.entrypoints.supervise import DRAIN_TIMEOUT_S, mark_supervisor

    settings = _settings()
    _refuse_sqlite_processes(settings, workers)
    check_port_free(settings.host, settings.port)  # before anything starts or is written
    check_database_file(settings, create=True)
    configure(log_level)  # the CLI's own lines (and the libraries') as JSON, as the server's
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per revision: noise here
    with database_errors(settings):
        upgrade(settings.database_url)
        balance = _sandbox_balance(settings) if settings.sandbox else None
    print(start_banner(settings, balance), flush=True)
    os.environ["PAYRAIL_MIGRATED"] = "1"
    os.environ["PAYRAIL_LOG_LEVEL"] = log_level
    _prepare_multiprocess_metrics(workers)
    if workers > 1:
        mark_supervisor()  # each child exits when this parent dies, even by SIGKILL
    from payrail.entrypoints import serving

    serving.run(
        settings.host,
        settings.port,
        workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        http=serving.header_timeout_protocol(settings.http_header_timeout_ms),
    )


def _sandbox_balance(settings: Settings) -> int:
    """The sandbox project's balance now (seeded first, as the server does at start)."""
    from payrail.bootstrap import build_runtime
    from payrail.services import projects

    async def main() -> int:
        rt = build_runtime(settings)
        try:
            await projects.seed_sandbox(rt)
            return int((await projects.balance(rt, SANDBOX_PROJECT_ID))["balance"])
        finally:
            await rt.aclose()

    return asyncio.run(main())


def start_banner(settings: Settings, balance: int | None) -> str:
    """What `serve` prints on stdout before it starts (its logs go to stderr, as JSON)."""
    base = f"http://{settings.host}:{settings.port}"
    if not settings.sandbox or balance is None:
        return f"payrail (production) on {base}  ·  docs {base}/docs  ·  dashboard {base}/dashboard"
    key = settings.sandbox_api_key
    return "\n".join(
        [
            f"payrail sandbox on {base}",
            f"  dashboard     {base}/dashboard (sign in with either key below)",
            f"  API docs      {base}/docs",
            f"  database      {settings.database_url}",
            f"  project       {SANDBOX_PROJECT_ID}, balance {balance:,} sats",
            f"  project key   apikey: {key}",
            f"  admin key     apikey: {settings.admin_key}",
            f"  try           curl -s -H 'apikey: {key}' "
            f"{base}/api/v1/projects/{SANDBOX_PROJECT_ID}/balance",
        ]
    )


def _refuse_sqlite_processes(settings: Settings, workers: int) -> None:
    """SQLite has one writer per file: each process has its own writer connection (db/sqlite.py),
    so N processes would only take turns at the file lock, slower than one."""
    if workers > 1 and settings.database_url.startswith("sqlite"):
        console.print(
            f"[red]error:[/red] --workers {workers} needs PostgreSQL: on SQLite one server "
            "process is the fastest (it already queues every write for the file's single "
            "writer). Run without --workers, or set PAYRAIL_DATABASE_URL=postgresql://..."
        )
        raise typer.Exit(2)


def _prepare_multiprocess_metrics(workers: int) -> None:
    """Several server processes share counters through PROMETHEUS_MULTIPROC_DIR (emptied at
    start: files of a previous run would be counted again)."""
    import shutil

    from payrail.support.metrics import MULTIPROC_DIR_ENV

    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory and workers > 1:
        directory = os.path.join("var", "prometheus-multiproc")
        os.environ[MULTIPROC_DIR_ENV] = directory
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
        console.print(f"  metrics       multiprocess, samples in {directory}")


@app.command()
def worker(
    metrics_port: int = typer.Option(
        0, min=0, max=65_535, help="serve this process's counters on :PORT/metrics (0: off)"
    ),
) -> None:
    """Run only the job worker (settlement, tracking, callbacks, expiry, flag guards)."""
    from payrail.bootstrap import build_runtime
    from payrail.entrypoints.worker import run_forever

    configure()
    settings = _settings()
    check_database_file(settings, create=False)
    if metrics_port:
        from prometheus_client import start_http_server

        from payrail.support.metrics import process_registry

        start_http_server(metrics_port, addr=settings.host, registry=process_registry())

    async def main() -> None:
        rt = build_runtime(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from payrail.db import maintenance
        from payrail.services.flags import run_guards_periodically

        interval_s = settings.flag_guard_interval_s
        background = (
            [asyncio.create_task(run_guards_periodically(rt, stop, interval_s))]
            if interval_s
            else []
        )
        # A deployment whose API servers run without a worker (PAYRAIL_RUN_WORKER=0) keeps
        # the tables' statistics here (db/maintenance.py; one process at a time does it).
        background.append(
            asyncio.create_task(
                maintenance.run_periodically(rt.engine, settings.db_maintenance, stop)
            )
        )
        try:
            await run_forever(rt, stop)
        finally:
            stop.set()
            await asyncio.gather(*background)
            await rt.aclose()

    with database_errors(settings):
        asyncio.run(main())


@app.command()
def recover() -> None:
    """Run every due job once and exit: resolve stuck payouts after an outage."""
    from payrail.bootstrap import build_runtime
    from payrail.entrypoints.worker import run_until_idle

    configure("warning")
    settings = _settings()
    check_database_file(settings, create=False)

    async def main() -> int:
        rt = build_runtime(settings)
        try:
            return await run_until_idle(rt)
        finally:
            await rt.aclose()

    with database_errors(settings):
        ran = asyncio.run(main())
    console.print(f"ran {ran} due jobs")


@app.command()
def reconcile(
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    full: bool = typer.Option(
        False,
        "--full",
        help="audit every payout, transfer and order (streamed: bounded memory), not only "
        "what changed since the last checkpoint; its progress goes to stderr",
    ),
) -> None:
    """Check the invariants and the ledger against the node: what changed since the last
    checkpoint (services/reconcile.py); the first run, and --full, check everything.

    Exit 0 clean, 1 discrepancies found, 2 the checks could not run (e.g. no database)."""
    import json

    from payrail.bootstrap import build_runtime
    from payrail.services import reconcile as rec

    configure("warning")
    settings = _settings()
    check_database_file(settings, create=False)

    async def main() -> rec.Report | str:
        rt = build_runtime(settings)
        try:
            problem = await cli_resources.schema_problem(rt)
            if problem is not None:
                return problem
            if full:
                return await rec.reconcile(rt, progress=rec.progress_printer(console.print))
            return await rec.reconcile_incremental(rt)
        finally:
            await rt.aclose()

    try:
        with database_errors(settings):
            report = asyncio.run(main())
    except typer.Exit:
        raise
    except Exception as exc:  # no verdict: the checks could not run (exit 2, not 1)
        Console(stderr=True).print(
            f"[red]reconcile could not run[/red]: {type(exc).__name__}: {exc}"
        )
        raise typer.Exit(2) from None
    if isinstance(report, str):  # never migrated: no verdict, and what to run
        Console(stderr=True).print(f"[red]reconcile could not run[/red]: {report}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(rec.report_dict(report), indent=2))
    else:
        out = Console()
        checked = (
            f"{plural(report.payouts_checked, 'payout')} and "
            f"{plural(report.orders_checked, 'order')} checked"
        )
        if report.clean:
            out.print(f"[green]clean[/green]: {checked}")
        else:
            rows = [(d.kind, d.detail, ", ".join(d.ids), d.amount) for d in report.discrepancies]
            print_table(("kind", "detail", "ids", "amount"), rows, title="discrepancies")
            found = plural(len(report.discrepancies), "discrepancy")
            out.print(f"[red]{found}[/red]: {report.kinds()}; {checked}")
    raise typer.Exit(0 if report.clean else 1)


callbacks_app = typer.Typer(help="Callback deliveries: list them, replay dead ones.")
app.add_typer(callbacks_app, name="callbacks")


@callbacks_app.command("list")
def callbacks_list(
    status: str | None = typer.Option(None, help="pending | delivered | dead"),
    project: str | None = typer.Option(None, help="only this project's deliveries"),
    limit: int = typer.Option(50, min=1, max=200, help="newest first, at most this many"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List callback deliveries, newest first."""
    import json

    from payrail.bootstrap import build_runtime
    from payrail.domain.errors import PayrailError
    from payrail.services import callbacks as cb

    configure("warning")
    settings = _settings()
    try:
        wanted = cb.parse_status(status)
    except PayrailError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None

    async def main() -> list[dict[str, object]]:
        rt = build_runtime(settings)
        try:
            rows, _ = await cb.list_callbacks(rt, project, wanted, limit)
            return [cb.view(r) for r in rows]
        finally:
            await rt.aclose()

    check_database_file(settings, create=False)
    with database_errors(settings):
        rows = asyncio.run(main())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = []
    for r in rows:
        last = r["lastError"] or (str(r["lastStatusCode"]) if r["lastStatusCode"] else "")
        table.append(
            (
                r["id"],
                r["projectId"],
                r["payoutId"],
                r["sequence"],
                r["status"],
                f"{r['attempts']}/{r['attemptsMax']}",
                r["nextAttemptAt"] or "",
                str(last)[:60],
            )
        )
    headers = ("id", "project", "payout", "seq", "status", "attempts", "next attempt", "last")
    print_table(headers, table)


@callbacks_app.command("replay")
def callbacks_replay(callback_id: str) -> None:
    """Queue a dead callback delivery again, with a fresh set of attempts."""
    from payrail.bootstrap import build_runtime
    from payrail.domain.errors import PayrailError
    from payrail.services import callbacks as cb

    configure("warning")
    settings = _settings()

    async def main() -> None:
        rt = build_runtime(settings)
        try:
            await cb.replay(rt, callback_id, None)
        finally:
            await rt.aclose()

    check_database_file(settings, create=False)
    try:
        with database_errors(settings):
            asyncio.run(main())
    except PayrailError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    console.print(f"[green]callback {callback_id} queued for delivery again[/green]")


flags_app = typer.Typer(help="Feature flags: show, change (audited), check rollback guards.")
app.add_typer(flags_app, name="flags")


def _run_flags(action):  # type: ignore[no-untyped-def]
    """Run `action(runtime)` once (flags, jobs, orders commands); a PayrailError exits 1."""
    return cli_resources.run(action)


@flags_app.command("list")
def flags_list() -> None:
    """Every known flag and its state, as JSON."""
    import json

    from payrail.services import flags

    found = _run_flags(flags.list_flags)
    print(json.dumps([f.to_dict() for f in found], indent=2))


@flags_app.command("get")
def flags_get(name: str) -> None:
    """One flag and its recent changes (who, when, old → new), as JSON."""
    import json

    from payrail.services import flags

    async def action(rt):  # type: ignore[no-untyped-def]
        flag = await flags.get_flag(rt, name)
        return flag.to_dict() | {"history": await flags.history(rt, name)}

    print(json.dumps(_run_flags(action), indent=2))


@flags_app.command("set")
def flags_set(
    name: str,
    enabled: bool | None = typer.Option(None, "--enabled/--disabled", help="turn on or off"),
    percent: int | None = typer.Option(None, "--percent", min=0, max=100, help="rollout %"),
    allow: list[str] | None = typer.Option(None, "--allow", help="project id; repeatable"),  # noqa: B008
    guards: str | None = typer.Option(
        None, help='JSON, e.g. \'{"minSuccessRate":0.95,"windowS":300,"maxQueueDepth":1000}\''
    ),
    reason: str | None = typer.Option(None, help="why, for the audit log"),
    actor: str | None = typer.Option(None, help="who (default: cli:$USER)"),
) -> None:
    """Change a flag; fields not given stay as they are. Audited."""
    import getpass
    import json

    from payrail.services import flags

    body: dict[str, object] = {}
    if enabled is not None:
        body["enabled"] = enabled
    if percent is not None:
        body["rolloutPercent"] = percent
    if allow is not None:
        body["allow"] = allow
    if guards is not None:
        try:
            body["guards"] = json.loads(guards)
        except ValueError:
            console.print("[red]error:[/red] --guards must be JSON")
            raise typer.Exit(2) from None
    if reason is not None:
        body["reason"] = reason
    who = "cli:" + (actor or getpass.getuser())

    async def action(rt):  # type: ignore[no-untyped-def]
        return await flags.update_flag(rt, name, body, who)

    old, new = _run_flags(action)
    print(json.dumps({"previous": old.to_dict(), "now": new.to_dict()}, indent=2))


@flags_app.command("check")
def flags_check() -> None:
    """Evaluate every rollback guard now; a tripped guard turns its flag off (audited)."""
    from payrail.services import flags

    for name, why in _run_flags(flags.evaluate_guards):
        console.print(f"[yellow]{name} turned off[/yellow]: {why}")
    console.print("guards checked")


jobs_app = typer.Typer(help="The job queue: list jobs (dead ones by default), replay dead ones.")
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    state: str = typer.Option("dead", help="queued | done | dead"),
    kind: str | None = typer.Option(None, help="e.g. stripe_event, fulfil_order, settle_payout"),
    limit: int = typer.Option(50, min=1, max=200, help="newest change first, at most this many"),
) -> None:
    """List jobs as JSON: kind, payload, attempts, the last error."""
    import json

    from payrail.jobs import queue

    async def action(rt):  # type: ignore[no-untyped-def]
        async with rt.engine.connect() as conn:
            return await queue.list_jobs(conn, state, kind, limit)

    print(json.dumps(_run_flags(action), indent=2))


@jobs_app.command("replay")
def jobs_replay(job_id: str) -> None:
    """Queue a dead job again with a fresh set of attempts (e.g. stripe_event:evt_…)."""
    from payrail.jobs import queue

    async def action(rt):  # type: ignore[no-untyped-def]
        await queue.replay_dead(rt.engine, job_id, rt.clock.now_ms())

    _run_flags(action)
    console.print(f"[green]job {job_id} queued again[/green]")


orders_app = typer.Typer(help="Card payment orders.")
app.add_typer(orders_app, name="orders")


@orders_app.command("sweep")
def orders_sweep(
    all_waiting: bool = typer.Option(
        False, "--all", help="every order waiting on Stripe, not only those past the threshold"
    ),
) -> None:
    """Ask Stripe now about orders stuck in payment_processing/payment_submitted, and apply
    its answer (the worker does this on its own past PAYRAIL_ORDER_SWEEP_AFTER_MS)."""
    from payrail.services import order_events

    async def action(rt):  # type: ignore[no-untyped-def]
        return await order_events.sweep_due(rt, everything=all_waiting)

    console.print(f"checked {_run_flags(action)} orders")


def _add_tool_commands() -> None:
    """Commands of the tooling (bench, loadtest) register themselves through the
    `payrail.commands` entry point: payrail never imports its tooling."""
    from importlib.metadata import entry_points

    for point in entry_points(group="payrail.commands"):
        point.load()(app)


_add_tool_commands()

if __name__ == "__main__":
    app()
