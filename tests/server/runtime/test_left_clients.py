"""The writer of the client ids that left (``LeftClientWriter``), on the memory store:
coalesced per client, bounded, tried again while the database refuses, flushed at close."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from parley.server.runtime.left_clients import LeftClientWriter
from parley.server.store.memory import MemoryStore
from parley.session.presence import LeftClient


def writer(store: MemoryStore, delay_s: float = 0.01, max_waiting: int = 100) -> LeftClientWriter:
    return LeftClientWriter(
        store, lambda: 100.0, delay_s=delay_s, retry_s=0.01, max_waiting=max_waiting
    )


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def stored(store: MemoryStore, session_id: str) -> list[LeftClient]:
    return await store.left_clients(session_id, 100_000)


async def test_what_left_is_written_soon_the_latest_leaving_of_each_client() -> None:
    store = MemoryStore()
    await store.create_session("s", "t", "queue", 0)
    left = writer(store)
    left.add("s", [LeftClient(1, "ann", 10.0, 2), LeftClient(2, "ann", 10.0, 1)])
    left.add("s", [LeftClient(1, "bob", 11.0, 5)])  # before the write: replaces ann's
    assert sorted(left.unwritten("s"), key=lambda i: i.client_id) == [
        LeftClient(1, "bob", 11.0, 5), LeftClient(2, "ann", 10.0, 1),
    ]  # fmt: skip
    assert left.unwritten("other") == []
    deadline = time.monotonic() + 10
    while len(await stored(store, "s")) < 2:
        assert time.monotonic() < deadline, "not written in time"
        await asyncio.sleep(0.01)
    assert await stored(store, "s") == [
        LeftClient(1, "bob", 11.0, 5), LeftClient(2, "ann", 10.0, 1),
    ]  # fmt: skip
    await until(lambda: left.unwritten("s") == [])
    await left.close(5)


async def test_at_most_so_many_wait_and_close_writes_them() -> None:
    store = MemoryStore()
    await store.create_session("s", "t", "queue", 0)
    left = writer(store, delay_s=3600, max_waiting=2)  # nothing written before the close
    left.add("s", [LeftClient(n, "ann", 10.0 + n, 1) for n in range(3)])
    assert [i.client_id for i in left.unwritten("s")] == [1, 2]  # the oldest dropped
    await left.close(5)
    assert [i.client_id for i in await stored(store, "s")] == [2, 1]


async def test_a_refusing_database_is_tried_again_and_nothing_newer_is_undone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await store.create_session("s", "t", "queue", 0)
    store.unavailable = "down"
    left = writer(store)
    with caplog.at_level(logging.WARNING, "parley.presence"):
        left.add("s", [LeftClient(1, "ann", 10.0, 2), LeftClient(2, "ann", 10.0, 1)])
        await until(lambda: "database refused" in caplog.text)
        left.add("s", [LeftClient(1, "bob", 12.0, 4)])  # left again meanwhile
        assert sorted(i.client_id for i in left.unwritten("s")) == [1, 2]
        store.unavailable = None
        await until(lambda: left.unwritten("s") == [])
    assert await stored(store, "s") == [
        LeftClient(1, "bob", 12.0, 4),
        LeftClient(2, "ann", 10.0, 1),
    ]
    await left.close(5)


async def test_a_session_deleted_meanwhile_keeps_nothing_and_holds_nobody_up() -> None:
    store = MemoryStore()
    await store.create_session("s", "t", "queue", 0)
    left = writer(store)
    left.add("gone", [LeftClient(1, "ann", 10.0, 2)])
    left.add("s", [LeftClient(2, "ann", 10.0, 1)])
    await until(lambda: left.unwritten("s") == [] and left.unwritten("gone") == [])
    assert await stored(store, "s") == [LeftClient(2, "ann", 10.0, 1)]
    await left.close(5)
