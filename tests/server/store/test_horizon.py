"""``?after=`` cursors on PostgreSQL: a reader that polls the audit log or a subscription's
deliveries by the last id it saw never passes over a row whose transaction took its id
before another's and committed after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from parley.server.store.access import AccessStore, insert_audit
from parley.server.store.outbox import list_deliveries
from parley.server.store.sessions import Store
from parley.server.store.transaction import StoreTx
from parley.server.store.webhooks import create_webhook
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
