"""``?after=`` cursors on PostgreSQL: a reader that polls the audit log or a subscription's
deliveries by the last id it saw never passes over a row whose transaction took its id
before another's and committed after it; one that reads on from the last row's place
(``?cursor=``) neither skips nor repeats a row once that row is pruned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import update

from parley.server.store.access import AccessStore, insert_audit
from parley.server.store.horizon import Place
from parley.server.store.outbox import list_deliveries, prune
from parley.server.store.sessions import Store
from parley.server.store.tables import webhook_deliveries
from parley.server.store.transaction import StoreTx
from parley.server.store.webhooks import DELIVERED, create_webhook
from parley.session.events import MemberJoined

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

Write = Callable[[StoreTx, str], Awaitable[None]]


@asynccontextmanager
async def _open_write(store: Store, write: Write) -> AsyncIterator[None]:
    """A transaction that has written ``write(tx, "slow")`` and commits when the block ends."""
    wrote, done = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with store.transaction() as tx:
            await write(tx, "slow")
            wrote.set()
            await done.wait()

    task = asyncio.create_task(run())
    await wrote.wait()
    try:
        yield
    finally:
        done.set()
        await task


async def _seen_across(
    store: Store, write: Write, read: Callable[[int], Awaitable[list[tuple[int, str]]]]
) -> list[str]:
    """``slow`` takes its id first and commits last; ``fast`` commits meanwhile, and a
    reader polls between the two commits and after them."""
    cursor = 0
    seen: list[str] = []

    async def poll() -> None:
        nonlocal cursor
        while page := await read(cursor):
            seen.extend(name for _, name in page)
            cursor = page[-1][0]

    async with _open_write(store, write):
        async with store.transaction() as tx:
            await write(tx, "fast")
        await poll()
    # Both committed: they show once every transaction older than them has ended (other
    # tests' on this server too), a moment at most.
    for _ in range(200):
        await poll()
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.05)
    return seen


async def test_the_audit_log_after_a_cursor_misses_no_record_committed_late(store: Store) -> None:
    async def write(tx: StoreTx, name: str) -> None:
        await insert_audit(tx.connection, "s1", 1, "k", name, {})

    async def read(after: int) -> list[tuple[int, str]]:
        rows = await AccessStore(store).list_audit("s1", limit=10, after=after, kinds=["k"])
        return [(r.id, r.actor) for r in rows]

    seen = await _seen_across(store, write, read)
    assert sorted(seen) == ["fast", "slow"], seen  # each once


async def test_deliveries_after_a_cursor_miss_none_committed_late(store: Store) -> None:
    async with store.transaction() as tx:
        hook = await create_webhook(tx.connection, "http://x/", ["member.added"], None, "k", 0)

    async def write(tx: StoreTx, name: str) -> None:
        session_id = "s1" if name == "slow" else "s2"
        await tx.append_events(session_id, 1, [MemberJoined(name, "viewer", (), (), "admin")])

    async def read(after: int) -> list[tuple[int, str]]:
        async with store.read() as connection:
            found = await list_deliveries(connection, hook.id, after, 10)
        return [(int(row.id), row.session_id) for row, _ in found]

    seen = await _seen_across(store, write, read)
    assert sorted(seen) == ["s1", "s2"], seen  # each once


async def test_a_place_reads_on_exactly_after_its_delivery_is_pruned(store: Store) -> None:
    """Three transactions take their ids (xids) in one order and write their deliveries
    in the other: by (xid, id) the deliveries are A, R, S, by id S, R, A. A reader that
    listed A and R reads on from R's place once R is delivered and pruned: S, and not A
    again (from R's id alone, the id order would list A twice and never S)."""
    await store.create_session("s3", "t", "queue", 0)
    async with store.transaction() as tx:
        hook = await create_webhook(tx.connection, "http://x/", ["member.added"], None, "k", 0)

    async def deliver(tx: StoreTx, session_id: str) -> None:
        await tx.append_events(session_id, 1, [MemberJoined(session_id, "viewer", (), (), "a")])

    async with store.transaction() as t1:
        await insert_audit(t1.connection, "s1", 1, "k", "first", {})  # t1's xid
        async with store.transaction() as t2:
            await insert_audit(t2.connection, "s2", 1, "k", "second", {})
            async with store.transaction() as t3:
                await insert_audit(t3.connection, "s3", 1, "k", "third", {})
                await deliver(t3, "s3")  # S: the first id, the last xid
            await deliver(t2, "s2")  # R
        await deliver(t1, "s1")  # A: the last id, the first xid

    async def page(start: Place | int, limit: int) -> list[tuple[str, Place]]:
        async with store.read() as connection:
            found = await list_deliveries(connection, hook.id, start, limit)
        return [(row.session_id, Place(int(row.xid), int(row.id))) for row, _ in found]

    # Listed once every transaction older than them has ended (other tests' on this
    # server too), a moment at most.
    for _ in range(200):
        if len(first := await page(0, 2)) == 2:
            break
        await asyncio.sleep(0.05)
    assert [name for name, _ in first] == ["s1", "s2"], first
    (_, a), (_, r) = first
    assert a.xid < r.xid and a.id > r.id  # the two orders differ
    async with store.transaction() as tx:
        done = update(webhook_deliveries).where(webhook_deliveries.c.id == r.id)
        await tx.connection.execute(done.values(status=DELIVERED))
        assert await prune(tx.connection, 2**62) == 1
    assert [name for name, _ in await page(r, 10)] == ["s3"]
