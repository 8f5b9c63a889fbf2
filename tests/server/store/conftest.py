"""The SQL store on each database, migrated, with two sessions ``s1`` and ``s2``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from parley.server.store.db import create_engine
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
