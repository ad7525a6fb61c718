"""The tooling's commands on the `payrail` CLI (`payrail bench`, `payrail loadtest`), added
through the `payrail.commands` entry point (pyproject.toml)."""

from __future__ import annotations

import sys

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        clients: str = typer.Option(
            "10,50", help='comma-separated concurrency levels ("": batches only)'
        ),
        duration_s: float = typer.Option(15.0, min=1, max=600, help="seconds per level"),
        server_workers: int = typer.Option(2, min=1, max=16, help="server processes"),
        database_url: str = typer.Option(
            "postgresql://postgres@127.0.0.1:5432/payrail_bench", help="a database it may recreate"
        ),
        batch_items: int = typer.Option(
            1000, min=0, max=1000, help="items per batch (0: no batch)"
        ),
        batch_clients: int = typer.Option(2, min=0, max=50, help="concurrent batch clients"),
        history: int = typer.Option(
            0,
            min=0,
            max=100_000_000,
            help="instead: fill a database with N payouts and measure an idle server, "
            "reconciliation, lists and the dashboard at N and at --history-small, side by side",
        ),
        history_small: int = typer.Option(10_000, min=0, help="the small N of --history"),
        idle_s: float = typer.Option(60.0, min=5, max=3_600, help="--history: idle seconds"),
        driver: str = typer.Option(
            "wrk",
            help="single-payout load generator: wrk (C, the default: it is not the limit) or "
            "python (payrail_tools.bench_load, the earlier one)",
        ),
    ) -> None:
        """Benchmark payouts (single and batch) on PostgreSQL against pgbench on one database."""
        if history:
            from payrail_tools.bench_history import run_history

            sizes = [n for n in (history_small, history) if n]
            sys.exit(run_history(database_url, sizes, server_workers, idle_s))
        from payrail_tools.bench import run_bench

        levels = [int(c) for c in clients.split(",") if c.strip()]  # "": batches only
        if driver not in ("wrk", "python"):
            raise typer.BadParameter("--driver is wrk or python")
        sys.exit(
            run_bench(
                database_url,
                levels,
                duration_s,
                server_workers,
                batch_items,
                batch_clients,
                driver,
            )
        )

    @app.command()
    def loadtest(
        scenario: str = typer.Option(
            ...,
            help="gaming_rewards | rate_limit_stress | duplicate_detection | "
            "expiration_test | callback_test | timeout_recovery | spike_timeouts",
        ),
        url: str = typer.Option("http://127.0.0.1:3000", help="the server; loopback only"),
        duration_scale: float = typer.Option(1.0, help="multiplies durations and the spike size"),
        report: str | None = typer.Option(None, help="directory for report.json and report.html"),
        api_key: str | None = typer.Option(None, help="key for the sandbox /test endpoints"),
        admin_key: str | None = typer.Option(None, help="admin key (creates projects, reconciles)"),
        threshold: list[str] | None = typer.Option(None, help="e.g. p95<500; repeatable"),  # noqa: B008
        legacy: bool = typer.Option(False, help="rollbackOnTimeout=false: the run must fail"),
        start_server: bool = typer.Option(False, help="start payrail serve on a fresh database"),
        database_url: str | None = typer.Option(None, help="with --start-server; it is recreated"),
    ) -> None:
        """Load and chaos scenarios on Locust, with money invariants. Exit 0 only if all hold."""
        from pathlib import Path

        from payrail_tools.loadtest.command import Arguments, run

        args = Arguments(
            scenario=scenario,
            url=url,
            duration_scale=duration_scale,
            report_dir=Path(report) if report else None,
            api_key=api_key,
            admin_key=admin_key,
            thresholds=threshold or [],
            legacy=legacy,
            start_server=start_server,
            database_url=database_url,
        )
        raise typer.Exit(run(args))
