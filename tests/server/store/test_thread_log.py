"""The side-thread document tables' migration (``threads_0017``): it creates what the
schema (``server.store.tables``) declares, and goes down and up again; so does
``threads_0037`` (a turn's ``retry_at``)."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from parley.server.store.db import alembic_config, create_engine
from parley.server.store.tables import (
    side_thread_turns,
    thread_doc_snapshots,
    thread_doc_updates,
)
from tests.server.store.conftest import migration_goes_down_and_up


async def test_the_migration_creates_the_declared_tables_and_goes_down_again(
    empty_database_url: str,
) -> None:
    below, found = await down_and_up(empty_database_url, "threads_0016")
    assert "thread_doc_updates" not in below
    for table in (thread_doc_updates, thread_doc_snapshots):
        assert found[table.name] == {c.name for c in table.columns}


async def down_and_up(
    database_url: str, revision: str
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Migrate to head, down to ``revision``, and up again: each table's columns at
    ``revision``, then at head."""
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.downgrade, config, revision)
    below = await _columns(database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    return below, await _columns(database_url)


async def _columns(database_url: str) -> dict[str, set[str]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:

            def read(sync: object) -> dict[str, set[str]]:
                inspector = inspect(sync)
                return {
                    name: {c["name"] for c in inspector.get_columns(name)}
                    for name in inspector.get_table_names()
                }

            return await connection.run_sync(read)
    finally:
        await engine.dispose()


async def test_the_migration_of_turns_retry_at_goes_down_and_up(empty_database_url: str) -> None:
    """``threads_0037``: ``side_thread_turns.retry_at`` (when a side-thread prompt a quota
    failed may be sent again)."""
    await migration_goes_down_and_up(
        empty_database_url, "commands_0036", side_thread_turns, "retry_at"
    )
