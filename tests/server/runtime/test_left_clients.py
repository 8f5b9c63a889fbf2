"""The writer of the client ids that left (``LeftClientWriter``), on the memory store:
coalesced per client, bounded, tried again while the database refuses, flushed at close;
and the rooms' use of it: what left is kept by a room loaded again, written or not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from parley.server.providers.registry import open_models
from parley.server.runtime.left_clients import LeftClientWriter
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.rooms import RoomRegistry
from parley.server.store.memory import MemoryStore
from parley.session.errors import Unavailable
from parley.session.presence import LeftClient
from parley.session.queue import Policy
from parley.session.yprotocol import (
    AwarenessState,
    decode_awareness_update,
    encode_awareness_update,
)
from tests.fake_model import FakeModel
from tests.server.runtime.harness import ManualClock, Watcher, add_members, memory_settings


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


class HeldThenRefused:
    """A store whose writes wait until let go (``go``), then are refused."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    @contextlib.asynccontextmanager
    async def transaction(self, what: str = "write", **_: Any) -> AsyncIterator[None]:
        self.entered.set()
        await self.go.wait()
        raise Unavailable("the database is unavailable")
        yield  # (never: a generator for the context manager)


async def test_what_a_refused_round_held_waits_again_within_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = HeldThenRefused()
    left = LeftClientWriter(
        store,  # type: ignore[arg-type]  # its transactions are all it needs
        lambda: 100.0,
        delay_s=0.01,
        retry_s=3600,
        max_waiting=2,
    )
    left.add("s", [LeftClient(1, "ann", 10.0, 1), LeftClient(2, "ann", 11.0, 1)])
    await store.entered.wait()  # the round holds 1 and 2
    left.add("s", [LeftClient(3, "ann", 12.0, 1), LeftClient(2, "bob", 13.0, 4)])
    with caplog.at_level(logging.WARNING, "parley.presence"):
        store.go.set()
        # Refused, 1 and 2 wait again behind 2's later leaving (bob's): ann's 1, the
        # oldest, goes past the bound.
        await until(lambda: "database refused" in caplog.text)
    assert left.unwritten("s") == [LeftClient(3, "ann", 12.0, 1), LeftClient(2, "bob", 13.0, 4)]
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


@contextlib.asynccontextmanager
async def registry_of(store: MemoryStore, **overrides: Any) -> AsyncIterator[RoomRegistry]:
    """Rooms of session ``s`` (members alice and mallory) on ``store``, closed after."""
    await store.create_session("s", "t", Policy.QUEUE.value, 0)
    await add_members(store, {"alice": "editor", "mallory": "editor"}, "s")
    model = FakeModel(lambda sent: ["ok"])
    settings = model.configure(memory_settings(**overrides))
    async with open_models(settings, model.transport) as provider:
        registry = RoomRegistry(store, settings, provider, ManualClock())
        try:
            yield registry
        finally:
            await registry.close()


def leave(room: SessionRoom, owner: str, client_id: int) -> None:
    """A socket of alice's shows ``client_id`` and closes."""
    shown = encode_awareness_update([AwarenessState(client_id, 3, {"name": "Al"})])
    room.presence.apply(owner, "alice", shown, now=room.clock())
    room.drop_presence(owner, room.clock())  # type: ignore[arg-type]  # any owner will do


def taken_by_mallory(room: SessionRoom, client_id: int) -> bool:
    tried = encode_awareness_update([AwarenessState(client_id, 9, {})])
    return decode_awareness_update(room.presence.apply("m", "mallory", tried)) != []


async def test_a_room_loaded_again_keeps_what_left_whether_written_yet_or_not() -> None:
    store = MemoryStore()
    async with registry_of(store, presence_write_ms=60_000) as registry:  # none written
        leave(await registry.get("s"), "socket-a", 11)
        await registry.unload("s")
        assert not taken_by_mallory(await registry.get("s"), 11)  # from the writer
    # Closed, the registry wrote it: a process on the same store keeps it from the store.
    assert [c.client_id for c in await store.left_clients("s", round(ManualClock()() * 1000))] == [
        11
    ]


async def test_an_unload_takes_its_sockets_clients_away_for_the_store() -> None:
    store = MemoryStore()
    async with registry_of(store, presence_write_ms=60_000) as registry:
        room = await registry.get("s")
        shown = encode_awareness_update([AwarenessState(12, 1, {"name": "Al"})])
        socket = Watcher("alice")
        room.connections.add(socket)  # type: ignore[arg-type]
        room.presence.apply(socket, "alice", shown, now=room.clock())
        await registry.unload("s")  # the server shuts down, say: its socket is closed
        assert [c.client_id for c in registry.left_clients.unwritten("s")] == [12]


async def test_a_room_whose_leavings_cannot_be_read_loads_without_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()

    async def refused(session_id: str, now: int) -> list[LeftClient]:
        raise Unavailable("the database is unavailable")

    async with registry_of(store) as registry:
        monkeypatch.setattr(store, "left_clients", refused)
        with caplog.at_level(logging.WARNING, "parley.room"):
            room = await registry.get("s")
        assert "could not be read" in caplog.text
        assert taken_by_mallory(room, 11)
