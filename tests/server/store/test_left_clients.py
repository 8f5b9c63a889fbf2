"""The ``left_clients`` rows on each database: the migration (``presence_0024``) creates what
the schema declares and goes down and up again; a session's rows go with it."""

from __future__ import annotations

import pytest

from parley.server.store.sessions import Store
from parley.server.store.tables import left_clients
from parley.session.errors import NotFound
from parley.session.presence import LeftClient
from tests.server.store.test_thread_log import down_and_up


async def test_the_migration_creates_the_declared_table_and_goes_down_again(
    empty_database_url: str,
) -> None:
    below, found = await down_and_up(empty_database_url, "summaries_0023")
    assert "left_clients" not in below
    assert found["left_clients"] == {c.name for c in left_clients.columns}


async def test_a_sessions_leavings_go_with_it_and_none_are_kept_for_a_deleted_one(
    store: Store,
) -> None:
    async with store.transaction() as tx:
        await tx.keep_left_clients("s1", [LeftClient(2**53 - 1, "ann", 1.0, 2**53 - 2)], 1000)
    assert await store.left_clients("s1", 1000) == [LeftClient(2**53 - 1, "ann", 1.0, 2**53 - 2)]
    await store.delete_session("s1", 2000)
    assert await store.left_clients("s1", 2000) == []
    with pytest.raises(NotFound):  # deleted meanwhile (on another node, say)
        async with store.transaction() as tx:
            await tx.keep_left_clients("s1", [LeftClient(7, "ann", 3.0, 1)], 3000)
    assert await store.left_clients("s1", 3000) == []
