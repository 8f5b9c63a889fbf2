"""The SQL store on each database, migrated, with two sessions ``s1`` and ``s2``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Table, inspect

from parley.server.store.db import alembic_config, create_engine
from parley.server.store.sessions import Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(create_engine(database_url))
    try:
        for name in ("s1", "s2"):
            await store.create_session(name, "t", "queue", 0)
        yield store
    finally:
        await store.close()


async def goes_down_and_up(
    store: Store, config: Config, revision: str, table: Table, column: str
) -> None:
    """Migrate down to ``revision`` (``column`` of ``table`` gone) and up to the head again
    (``table`` as the schema has it)."""
    await asyncio.to_thread(command.downgrade, config, revision)
    assert column not in await _columns(store, table.name)
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _columns(store, table.name) == {c.name for c in table.columns}


async def _columns(store: Store, table: str) -> set[str]:
    async with store.engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: {c["name"] for c in inspect(sync).get_columns(table)}
        )


async def migration_goes_down_and_up(
    database_url: str, revision: str, table: Table, column: str
) -> None:
    """On an empty database migrated to the head: ``goes_down_and_up``."""
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    store = Store(create_engine(database_url))
    try:
        await goes_down_and_up(store, config, revision, table, column)
    finally:
        await store.close()
