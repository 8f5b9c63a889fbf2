"""A room unloaded leaves nothing behind: its documents are freed with it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator
from typing import Any

from parley.server.runtime.thread_docs import LiveThreadDoc
from parley.server.store.memory import MemoryStore
from parley.server.store.rows import StoredDoc
from tests.server.runtime.harness import SESSION, room_with_a_client, synced_room
from tests.server.runtime.test_side_threads import answered, ask, open_thread


async def test_rooms_loaded_and_unloaded_again_and_again_free_their_documents() -> None:
    documents: list[weakref.ref[Any]] = []
    async with room_with_a_client(MemoryStore()) as (session, registry):
        for n in range(5):
            if n:  # loaded again, a client synced, as the first time
                session.room = await synced_room(registry)
            acked = await session.prompt("alice", f"prompt {n}")
            await session.settled(acked["prompt_id"])
            assert session.room.doc.entries()[-1].content == "ok"
            documents.append(weakref.ref(session.room.writer.document.doc.doc))
            await registry.unload(SESSION)
        del session
    alive = documents
    for _ in range(50):  # a model call's stream, dropped, is closed by a task of its own
        gc.collect()
        alive = [ref for ref in documents if ref() is not None]
        if not alive:
            break
        await asyncio.sleep(0)
    assert alive == []


async def test_a_document_read_again_in_a_loaded_room_frees_the_one_it_replaced() -> None:
    async with room_with_a_client(MemoryStore()) as (session, _):
        acked = await session.prompt("alice", "hello")
        await session.settled(acked["prompt_id"])
        writer = session.room.writer.document
        replaced = weakref.ref(writer.doc.doc)
        await writer.load()  # as after a refused write: the store read again
        assert writer.doc.entries()[-1].content == "ok"
        for _ in range(50):
            gc.collect()
            if replaced() is None:
                break
            await asyncio.sleep(0)
        assert replaced() is None  # not held until the room itself goes


def test_a_side_thread_document_is_freed_once_dropped() -> None:
    live = LiveThreadDoc("t1", StoredDoc(None, [], 0), lambda *_: None, 100)
    gone, doc_gone = weakref.ref(live), weakref.ref(live.document.doc)
    del live
    gc.collect()
    assert gone() is None and doc_gone() is None


async def test_a_room_the_reaper_unloads_is_freed_before_its_next_pass() -> None:
    async with room_with_a_client(MemoryStore(), room_idle_unload_s=0) as (session, registry):
        acked = await session.prompt("alice", "hello")
        await session.settled(acked["prompt_id"])
        session.room.connections.clear()  # its client left
        document = weakref.ref(session.room.writer.document.doc.doc)
        del session
        registry.clock.advance(1)  # type: ignore[attr-defined]  # idle for a second
        registry.start_reaper()
        for _ in range(1000):
            if registry.loaded(SESSION) is None:
                break
            await asyncio.sleep(0.01)
        assert registry.loaded(SESSION) is None
        for _ in range(50):  # a model call's stream, dropped, is closed by a task of its own
            gc.collect()
            if document() is None:
                break
            await asyncio.sleep(0)
        assert document() is None


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector's automatic passes off, as good as the server's thresholds
    (``GC_THRESHOLDS``: a full pass only after some 400 M net allocations)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_rooms_the_reaper_unloads_are_freed_without_a_full_collection_of_their_own() -> None:
    # Review RN-5: a room was in reference cycles (its parts pointed back at it), so only
    # a full collection freed it, and the server's thresholds make one all but never come:
    # every cold load of a 20,000-entry session kept its ~150 MB for good.
    async with room_with_a_client(MemoryStore(), room_idle_unload_s=0) as (session, registry):
        with collector_paused():
            session.room.connections.clear()  # its client left
            room, document = weakref.ref(session.room), weakref.ref(session.room.writer.doc)
            del session
            registry.clock.advance(1)  # type: ignore[attr-defined]  # idle for a second
            registry.start_reaper()
            for _ in range(1000):
                if room() is None and document() is None:
                    break
                await asyncio.sleep(0.01)
            assert registry.loaded(SESSION) is None
            assert room() is None and document() is None


async def test_a_room_unloaded_is_freed_by_reference_counting_alone() -> None:
    # Review RN-5, again: a room's parts pointed back at it (a part's ``room``, the
    # room's methods as their callbacks, the runner's in the room), so an unloaded room
    # waited for a full collection, which walks every loaded room (0.2 s at 20,000
    # entries, the loop held for every session). Unloaded with the collector off, the
    # room, its writer, its document, its runner and its side-thread's fold are freed.
    async with room_with_a_client(MemoryStore()) as (session, registry):
        with collector_paused():
            for n in range(20):
                await session.message("alice", f"message {n}")
            acked = await session.prompt("alice", "hello")
            await session.settled(acked["prompt_id"])
            thread_id = await open_thread(session, "alice")
            await ask(session, "alice", thread_id, "and in private?")
            await answered(session, thread_id)
            runner = registry._rooms[SESSION][1]
            [thread_scope] = session.room.context._thread_builder._folds.values()
            parts = {
                "room": weakref.ref(session.room),
                "runner": weakref.ref(runner),
                "writer": weakref.ref(session.room.writer.document),
                "document": weakref.ref(session.room.writer.doc),
                "pycrdt document": weakref.ref(session.room.writer.document.doc.doc),
                "side-thread fold": weakref.ref(thread_scope.fold),
            }
            del session, runner, thread_scope
            await registry.unload(SESSION)
            for _ in range(100):  # a task the unload ended runs its last step
                alive = [name for name, part in parts.items() if part() is not None]
                if not alive:
                    break
                await asyncio.sleep(0)
            assert alive == []
