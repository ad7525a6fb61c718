"""`python -m payrail_tools.loadtest.pgadmin URL`: drop and create the database URL names.

A separate process on purpose: the harness runs under gevent's monkeypatching, and asyncpg's
asyncio loop is best kept out of it. Refuses non-loopback hosts and maintenance databases.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from payrail_tools.loadtest.guard import TargetRefused, database_target

MAINTENANCE_DATABASES = ("postgres", "template1")
CONNECT_TIMEOUT_S = 10


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def recreate(url: str) -> None:
    target = database_target(url)
    if target.kind != "postgresql":
        raise TargetRefused(f"{url!r} is not a PostgreSQL URL")
    parts = urlsplit(url)
    last_error: Exception | None = None
    for maintenance in MAINTENANCE_DATABASES:
        admin_url = urlunsplit(("postgresql", parts.netloc, "/" + maintenance, "", ""))
        try:
            conn = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError) as exc:
            last_error = exc
            continue
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(target.name)} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {_quote_ident(target.name)}")
        finally:
            await conn.close()
        return
    raise ConnectionError(
        f"cannot reach PostgreSQL at {parts.hostname}:{parts.port or 5432} "
        f"({', '.join(MAINTENANCE_DATABASES)}): {last_error!r}"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(
            "usage: python -m payrail_tools.loadtest.pgadmin postgresql://…/NAME", file=sys.stderr
        )
        return 2
    try:
        asyncio.run(recreate(argv[0]))
    except (TargetRefused, ConnectionError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"recreated database {database_target(argv[0]).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
