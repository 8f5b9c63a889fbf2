"""A write transaction of the database store (``server/store/transaction.py``), on each
database: what runs once it has ended."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from parley.server.store.sessions import Store


class GivenUp(Exception):
    pass


async def test_what_waits_for_its_end_runs_once_it_ended_committed_or_not(store: Store) -> None:
    """``when_ended`` (what a cluster node's fence counts on: the lease row its write
    locked is free again): after the commit, or the rollback, once."""
    ended: list[str] = []
    async with store.transaction() as tx:
        tx.when_ended(lambda: ended.append("committed" if tx.committed else "not yet"))
        await tx.connection.execute(text("UPDATE sessions SET title = 'x' WHERE id = 's1'"))
        assert ended == []
    with pytest.raises(GivenUp):
        async with store.transaction() as given_up:
            given_up.when_ended(lambda: ended.append("rolled back"))
            raise GivenUp
    assert ended == ["committed", "rolled back"]
