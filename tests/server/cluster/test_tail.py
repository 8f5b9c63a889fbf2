"""A replica's read of the update log stays whole across a squash into a snapshot."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text

from parley.server.cluster.tail import read_tail
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from tests.conftest import postgres_database

pytestmark = pytest.mark.postgres


async def test_a_replica_behind_a_squash_gets_the_snapshot_then_the_tail() -> None:
    async with postgres_database(migrated=True) as url:
        engine = create_engine(url)
        try:
            store = Store(engine)
            await store.create_session("s1", "t", "queue", 0)
            source: Doc = Doc()
            text = source.get("t", type=Text)
            updates: list[int] = []

            async def write(chunk: str) -> None:
                before = source.get_state()
                text.insert(len(text), chunk)
                async with store.transaction() as tx:
                    updates.append(await tx.append_update("s1", source.get_update(before)))

            replica: Doc = Doc()
            for word in ("one ", "two "):
                await write(word)
            seen = await read_tail(engine, "s1", 0, limit=10)
            assert seen.snapshot is None and len(seen.updates) == 2
            for update in seen.updates:
                replica.apply_update(update)
            after = seen.last_id
            await write("three ")
            await write("four ")
            async with store.transaction() as tx:  # the running node squashes the log
                await tx.write_snapshot("s1", source.get_update(), updates[-1], 0)
            await write("five")
            tail = await read_tail(engine, "s1", after, limit=10)
            assert tail.snapshot is not None and len(tail.updates) == 1 and tail.complete
            replica.apply_update(tail.snapshot)
            for update in tail.updates:
                replica.apply_update(update)
            assert str(replica.get("t", type=Text)) == "one two three four five"
            assert tail.last_id == updates[-1]
            empty = await read_tail(engine, "s1", tail.last_id, limit=10)
            assert empty.snapshot is None and empty.updates == [] and empty.complete

            paged = await read_tail(engine, "s1", 0, limit=1)  # a long tail comes in pages
            assert paged.snapshot is not None and not paged.complete
        finally:
            await engine.dispose()
