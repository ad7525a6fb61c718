"""payrail command line: serve · worker · migrate · recover · reconcile · bench."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import typer
from rich.console import Console

from payrail.config import SANDBOX_PROJECT_ID, Settings, UnsafeSettings
from payrail.logging import configure

app = typer.Typer(add_completion=False, help="payrail: payments that never lose or invent money.")
console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except UnsafeSettings as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _ensure_sqlite_dir(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite:///"):
        path = settings.database_url.removeprefix("sqlite:///")
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    from payrail.db.migrate import upgrade

    settings = _settings()
    _ensure_sqlite_dir(settings)
    upgrade(settings.database_url)
    console.print("[green]database is at the latest revision[/green]")


@app.command()
def serve(
    workers: int = typer.Option(1, min=1, max=32, help="server processes"),
    log_level: str = typer.Option("info", help="debug | info | warning"),
) -> None:
    """Run the HTTP API (with the background worker loop) on PAYRAIL_HOST:PAYRAIL_PORT."""
    import uvicorn

    from payrail.db.migrate import upgrade

    settings = _settings()
    _ensure_sqlite_dir(settings)
    upgrade(settings.database_url)
    if settings.sandbox:
        console.print(
            f"[bold]payrail sandbox[/bold] on http://{settings.host}:{settings.port}\n"
            f"  database      {settings.database_url}\n"
            f"  project       {SANDBOX_PROJECT_ID} (100,000 sats)\n"
            f"  project key   apikey: {settings.sandbox_api_key}\n"
            f"  admin key     apikey: {settings.admin_key}\n"
            f"  try           curl -s -H 'apikey: {settings.sandbox_api_key}' "
            f"http://{settings.host}:{settings.port}/api/v1/projects/{SANDBOX_PROJECT_ID}/balance"
        )
    os.environ["PAYRAIL_MIGRATED"] = "1"
    os.environ["PAYRAIL_LOG_LEVEL"] = log_level
    uvicorn.run(
        "payrail.api.main:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


@app.command()
def worker() -> None:
    """Run only the job worker (settlement, tracking, callbacks, expiry)."""
    from payrail.jobs.worker import run_forever
    from payrail.services.runtime import build_runtime

    configure()
    settings = _settings()

    async def main() -> None:
        rt = build_runtime(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_forever(rt, stop)
        finally:
            await rt.aclose()

    asyncio.run(main())


@app.command()
def recover() -> None:
    """Run every due job once and exit: resolve stuck payouts after an outage."""
    from payrail.jobs.worker import run_until_idle
    from payrail.services.runtime import build_runtime

    configure("warning")
    settings = _settings()

    async def main() -> int:
        rt = build_runtime(settings)
        try:
            return await run_until_idle(rt)
        finally:
            await rt.aclose()

    ran = asyncio.run(main())
    console.print(f"ran {ran} due jobs")


@app.command()
def reconcile(
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check every invariant and the ledger against the node. Exit 0 only when clean."""
    import json

    from rich.table import Table

    from payrail.services import reconcile as rec
    from payrail.services.runtime import build_runtime

    configure("warning")
    settings = _settings()

    async def main() -> rec.Report:
        rt = build_runtime(settings)
        try:
            return await rec.reconcile(rt)
        finally:
            await rt.aclose()

    report = asyncio.run(main())
    if as_json:
        print(json.dumps(rec.report_dict(report), indent=2))
    else:
        out = Console()
        if report.clean:
            out.print(f"[green]clean[/green]: {report.payouts_checked} payouts checked")
        else:
            table = Table("kind", "detail", "ids", "amount", title="discrepancies")
            for d in report.discrepancies:
                table.add_row(d.kind, d.detail, ", ".join(d.ids), str(d.amount))
            out.print(table)
            out.print(f"[red]{len(report.discrepancies)} discrepancies[/red]: {report.kinds()}")
    raise typer.Exit(0 if report.clean else 1)


@app.command()
def bench(
    clients: str = typer.Option("10,50", help="comma-separated concurrency levels"),
    duration_s: float = typer.Option(15.0, min=1, max=600, help="seconds per level"),
    server_workers: int = typer.Option(2, min=1, max=16, help="server processes"),
    database_url: str = typer.Option(
        "postgresql://postgres@127.0.0.1:5432/payrail_bench", help="a database it may recreate"
    ),
) -> None:
    """Benchmark payouts on PostgreSQL against pgbench on the same database."""
    from payrail.bench import run_bench

    sys.exit(
        run_bench(database_url, [int(c) for c in clients.split(",")], duration_s, server_workers)
    )


if __name__ == "__main__":
    app()
