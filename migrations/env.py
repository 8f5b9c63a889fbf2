"""Alembic environment: runs migrations over the app's async engine (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from parley.server.store.db import create_engine
from parley.server.store.tables import metadata

config = context.config
MIGRATION_LOCK_WAIT_S = 30.0


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    # Before the server serves: waiting on another process's SQLite lock blocks nobody.
    engine = create_engine(
        config.get_main_option("sqlalchemy.url") or "", sqlite_busy_timeout_s=MIGRATION_LOCK_WAIT_S
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
            await connection.commit()
    finally:
        # Also after a migration failed: its pooled connection closed here, not collected
        # later in whatever runs next (a warning there, FX77's refused downgrade).
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_online())
