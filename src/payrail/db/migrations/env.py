"""Alembic environment: runs migrations over the async engine payrail itself uses."""

from __future__ import annotations

import asyncio

from alembic import context

from payrail.db.engine import make_engine
from payrail.db.tables import metadata

config = context.config


def _do_run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"), pool_size=1)
    try:
        async with engine.begin() as conn:  # the writer (SQLite readers are read-only)
            await conn.run_sync(_do_run)
    finally:
        await engine.dispose()


asyncio.run(_run_async())
