"""`payrail payouts …` and `payrail projects …`, and what every command prints with.

Commands here act on the database of PAYRAIL_DATABASE_URL through the services, as the
operator commands of cli.py do. Output: `plural` (wording.py) and `print_table`
(a table on a terminal; whole values, tab-separated, when piped, so ids are never cut).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from payrail.config import Settings, UnsafeSettings
from payrail.db.availability import is_database_unavailable
from payrail.entrypoints.cli.preflight import check_database_file, database_errors
from payrail.support.logging import configure
from payrail.support.wording import plural

T = TypeVar("T")
err = Console(stderr=True)

payouts_app = typer.Typer(help="Payouts: look one up, list them, show a payout's history.")
projects_app = typer.Typer(
    help="Projects: create one (its API key is shown once), an approver key, fund, balance."
)


def register(app: typer.Typer) -> None:
    app.add_typer(payouts_app, name="payouts")
    app.add_typer(projects_app, name="projects")


# ---------------------------------------------------------------- output


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A table on a terminal; tab-separated whole values when stdout is piped or redirected."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not sys.stdout.isatty():
        print("\t".join(headers))
        for row in cells:
            print("\t".join(c.replace("\t", " ").replace("\n", " ") for c in row))
        return
    table = Table(*headers, title=title or None)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# ---------------------------------------------------------------- running


def settings_from_env() -> Settings:
    try:
        return Settings.from_env()
    except UnsafeSettings as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


async def schema_problem(rt: Any) -> str | None:
    """Why this database cannot be used yet (never migrated, or behind), else None."""
    from sqlalchemy import text

    from payrail.db.migrate import head_revision

    head = head_revision()
    try:
        async with rt.engine.connect() as conn:
            current = sorted(
                (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
            )
    except Exception as exc:
        if is_database_unavailable(exc):
            raise  # unreachable is not "never migrated": the caller says which URL to check
        current = []
    if current == [head]:
        return None
    where = "has no payrail schema" if not current else f"is at {', '.join(current)}, not {head}"
    return (
        f"The database {rt.settings.database_url} {where}. Run `.venv/bin/payrail migrate` "
        "with the same PAYRAIL_DATABASE_URL first."
    )


def run(action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(runtime)` on a migrated database; a PayrailError or an unmigrated one exits."""
    from payrail.bootstrap import build_runtime
    from payrail.domain.errors import PayrailError

    configure("warning")
    settings = settings_from_env()
    check_database_file(settings, create=False)

    async def main() -> T:
        rt = build_runtime(settings)
        try:
            problem = await schema_problem(rt)
            if problem is not None:
                err.print(f"[red]error:[/red] {problem}")
                raise typer.Exit(2)
            return await action(rt)
        finally:
            await rt.aclose()

    try:
        with database_errors(settings):
            return asyncio.run(main())
    except PayrailError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


# ---------------------------------------------------------------- payouts


def _payout_rows(views: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [v["id"], v["projectId"], v["gamertag"], v["amount"], v["fee"], v["status"], v["createdAt"]]
        for v in views
    ]


PAYOUT_HEADERS = ("id", "project", "gamertag", "amount", "fee", "status", "created")


@payouts_app.command("get")
def payouts_get(payout_id: str) -> None:
    """One payout as JSON (the object of GET /api/v1/payouts/{id})."""
    from payrail.services import payouts

    async def action(rt: Any) -> dict[str, Any]:
        return payouts.view(await payouts.get_payout(rt, payout_id))

    print_json(run(action))


@payouts_app.command("list")
def payouts_list(
    project: str | None = typer.Option(None, help="only this project's payouts"),
    status: str | None = typer.Option(None, help="pending | completed | expired | error"),
    limit: int = typer.Option(20, min=1, max=100, help="newest first, at most this many"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List payouts, newest first."""
    from payrail.domain.payouts import parse_status
    from payrail.services import payouts

    async def action(rt: Any) -> list[dict[str, Any]]:
        wanted = parse_status(status) if status else None
        rows, _ = await payouts.list_payouts(rt, project, wanted, limit)
        return [payouts.view(r) for r in rows]

    views = run(action)
    if as_json:
        print_json(views)
        return
    print_table(PAYOUT_HEADERS, _payout_rows(views))
    err.print(plural(len(views), "payout"))


@payouts_app.command("history")
def payouts_history(
    payout_id: str,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Every state change of a payout: from, to, cause, time (the audit trail)."""
    from payrail.services import payouts

    async def action(rt: Any) -> list[dict[str, Any]]:
        await payouts.get_payout(rt, payout_id)  # an unknown id says so instead of printing []
        return await payouts.history(rt, payout_id)

    events = run(action)
    if as_json:
        print_json(events)
        return
    rows = [[e.get("at"), e.get("fromStatus"), e.get("toStatus"), e.get("cause")] for e in events]
    print_table(("at", "from", "to", "cause"), rows)
    err.print(plural(len(events), "event"))


# ---------------------------------------------------------------- projects


@projects_app.command("create")
def projects_create(
    project_id: str | None = typer.Option(
        None, "--id", help="3-64 of [A-Za-z0-9_-]; default generated"
    ),
    name: str | None = typer.Option(None, help="a display name"),
) -> None:
    """Create a project. Prints its API key and webhook secret: they are shown once."""
    from payrail.services import projects

    async def action(rt: Any) -> dict[str, Any]:
        wanted_id, wanted_name = projects.parse_new_project({"id": project_id, "name": name})
        new = await projects.create_project(rt, wanted_id, wanted_name)
        return {
            "project": projects.project_view(new.row),
            "apiKey": new.api_key,
            "webhookSecret": new.webhook_secret,
        }

    print_json(run(action))
    err.print("Store the API key and webhook secret now: they are shown once.")


@projects_app.command("approver-key")
def projects_approver_key(
    project_id: str,
    label: str | None = typer.Option(None, help="who holds it (named in what it decides)"),
) -> None:
    """Create a project key with the approver role: it approves or rejects the project's held
    payouts and nothing else. Printed once."""
    from payrail.services import project_keys

    async def action(rt: Any) -> dict[str, Any]:
        checked = project_keys.parse_approver_key({"role": "approver", "label": label})
        made = await project_keys.create_approver_key(rt, project_id, checked, "cli")
        return {
            "projectId": project_id,
            "role": project_keys.ROLE_APPROVER,
            "keyId": made.key.key_id,
            "label": made.key.label,
            "apiKey": made.api_key,
        }

    print_json(run(action))
    err.print("Store the approver key now: it is shown once.")


@projects_app.command("fund")
def projects_fund(
    project_id: str,
    amount: int = typer.Argument(..., help="sats to add"),
    idempotency_key: str | None = typer.Option(None, help="a retry with the same key adds nothing"),
) -> None:
    """Add sats to a project's balance (never creates a project)."""
    from payrail.services import projects

    async def action(rt: Any) -> dict[str, Any]:
        checked = projects.parse_fund_amount({"amount": amount})
        return await projects.fund(rt, project_id, checked, idempotency_key)

    print_json(run(action))


@projects_app.command("balance")
def projects_balance(project_id: str) -> None:
    """A project's available and reserved sats."""
    from payrail.services import projects

    async def action(rt: Any) -> dict[str, Any]:
        await projects.get_project(rt, project_id)
        return await projects.balance(rt, project_id)

    print_json(run(action))
