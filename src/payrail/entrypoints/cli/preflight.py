"""What the commands check before they start anything, so an operator's mistake is one clear
line and exit 2, never a traceback, and never something left behind on disk:

- the database: a SQLite file a command only reads must exist (opening it would create an
  empty file); a SQLite file `migrate`/`serve` create needs its folder to exist (a mistyped
  path is not turned into folders), except the default `var/` of `make run`; a database that
  cannot be reached (PostgreSQL down, wrong host) is said once, with the URL and what to check;
- the port `serve` listens on: in use is said before any migration, banner or worker, with
  the variable to change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer
from sqlalchemy.engine import make_url

from payrail.config import DEFAULT_DATABASE_URL, Settings
from payrail.db.availability import is_database_unavailable

EXIT_CANNOT_RUN = 2  # as `reconcile`'s "no verdict": the command did not get to do its work


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(EXIT_CANNOT_RUN)


def shown_url(url: str) -> str:
    """The database URL as it may be printed: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: print it as given, it has no password to hide
        return url


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None: not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return database if database and database != ":memory:" else None


def check_database_file(settings: Settings, *, create: bool) -> None:
    """SQLite only: `create` (migrate, serve) needs the file's folder; otherwise the file."""
    path = sqlite_path(settings.database_url)
    if path is None:
        return
    if not create:
        if not os.path.exists(path):
            fail(
                f"no database file {path} (PAYRAIL_DATABASE_URL={settings.database_url}): "
                "check the path, or create it with `payrail migrate` first."
            )
        return
    folder = os.path.dirname(path)
    if not folder or os.path.isdir(folder):
        return
    if settings.database_url == DEFAULT_DATABASE_URL:
        os.makedirs(folder, exist_ok=True)  # `make run` in a fresh clone: var/ is ours
        return
    fail(
        f"the folder {folder} of the database file {path} does not exist: create it, or fix "
        "PAYRAIL_DATABASE_URL (payrail makes no folders for a path it was given)."
    )


@contextlib.contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """An unreachable database becomes one line and exit 2 (the URL, what to check)."""
    try:
        yield
    except Exception as exc:
        if not is_database_unavailable(exc) or not _about_the_database(settings, exc):
            raise
        reason = _root_cause(exc)
        fail(
            f"cannot reach the database {shown_url(settings.database_url)} ({reason}). "
            "Check that the database server is running and accepts connections there, "
            "or set PAYRAIL_DATABASE_URL."
        )


def _about_the_database(settings: Settings, exc: BaseException) -> bool:
    """A refused connection is the database's only if it was to the database: SQLite has no
    server, and a PostgreSQL error naming another address (the Stripe simulator, a node) is
    another service's."""
    if settings.database_url.startswith("sqlite"):
        return False
    port = make_url(settings.database_url).port or 5432
    addresses = re.findall(r"\('[^']*', (\d+)\)", _root_cause(exc))
    return not addresses or str(port) in addresses


def _root_cause(exc: BaseException) -> str:
    seen = exc
    for _ in range(8):
        nxt = seen.__cause__ or seen.__context__ or getattr(seen, "orig", None)
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()[0] if str(seen).strip() else ""
    return f"{type(seen).__name__}: {text}" if text else type(seen).__name__


def check_port_free(host: str, port: int) -> None:
    """Refuse before anything starts when host:port is taken (another `make run`?)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not in use
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(
                    f"port {port} on {host} is already in use (another payrail server?). "
                    f"Stop it, or choose another port: PAYRAIL_PORT={port + 1} make run"
                )
            if exc.errno == errno.EADDRNOTAVAIL:
                fail(f"cannot listen on {host}: no such address here; check PAYRAIL_HOST.")
            raise
