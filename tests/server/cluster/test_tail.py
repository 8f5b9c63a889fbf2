"""A replica's read of the update log stays whole across a squash into a snapshot."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text
from sqlalchemy import delete, insert, update

from parley.server.cluster.tail import read_tail
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.server.store.tables import client_tokens, members, sessions
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


async def test_the_tail_says_who_may_read_as_of_its_updates() -> None:
    """A replica puts the members in force before it sends a tail's updates when the
    tail's digest of them differs from the last it put in force: each change of who may
    read (a member added, their role, grants, a revoked token, the restricted-reply
    policy, a removal) changes it, in the same snapshot as the updates; an update alone
    does not."""
    async with postgres_database(migrated=True) as url:
        engine = create_engine(url)
        try:
            store = Store(engine)
            await store.create_session("s1", "t", "queue", 0)
            seen = [(await read_tail(engine, "s1", 0, limit=10)).settings]
            ann = members.c.user_id == "ann"
            changes = [
                insert(members).values(session_id="s1", user_id="ann", role="editor", created_at=0),
                update(members).where(ann).values(role="viewer"),
                update(members).where(ann).values(denials='["read_session"]'),
                insert(client_tokens).values(id="k1", session_id="s1", user_id="ann", expires_at=9),
                update(client_tokens).values(revoked_at=1),
                update(sessions).values(restricted_replies="shared"),
                delete(members).where(ann),
            ]
            for change in changes:
                async with engine.begin() as connection:
                    await connection.execute(change)
                seen.append((await read_tail(engine, "s1", 0, limit=10)).settings)
            assert len(set(seen)) == len(seen) - 1  # all differ but the unrevoked token's
            assert seen[4] == seen[3]
            async with store.transaction() as tx:
                await tx.append_update("s1", Doc().get_update())
            tail = await read_tail(engine, "s1", 0, limit=10)
            assert tail.updates and tail.settings == seen[-1]
        finally:
            await engine.dispose()
