"""The database goes away under a streaming reply, on the in-memory store: the room gives
up and tells its sockets to come back (1013), and when the session loads again the run it
cut off ends with the code ``storage_error``, in the document and in the store. (The same
outage on PostgreSQL, over sockets: ``tests/server/test_storage_faults.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from parley.server.providers.registry import open_models
from parley.server.runtime.commands import dispatch
from parley.server.runtime.rooms import RoomRegistry
from parley.server.store.memory import MemoryStore
from parley.session.closes import CloseCode
from parley.session.commands import MessageCommand, PromptCommand
from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from tests.fake_model import FakeModel
from tests.server.runtime.harness import (
    SESSION,
    DropsAtCommit,
    HeldAtCommit,
    ManualClock,
    MemorySession,
    Watcher,
    add_members,
    memory_settings,
    room_with_a_client,
)


async def test_a_database_outage_under_a_streaming_reply_is_a_storage_error() -> None:
    resume = asyncio.Event()
    model = FakeModel(lambda sent: ["once upon ", resume, "a time"])
    settings = model.configure(memory_settings())
    store, clock = MemoryStore(), ManualClock()
    await store.create_session(SESSION, "t", Policy.QUEUE.value, 0)
    await add_members(store, {"alice": "editor"})
    async with contextlib.AsyncExitStack() as stack:
        provider = await stack.enter_async_context(open_models(settings, model.transport))
        registry = RoomRegistry(store, settings, provider, clock)
        stack.push_async_callback(registry.close)

        async def session() -> MemorySession:
            room = await registry.get(SESSION)
            room.connections.add(Watcher())  # type: ignore[arg-type]
            return MemorySession(store, room, None, model, clock)

        s = await session()
        ack = await s.prompt("alice", "tell me a story")
        prompt_id = ack["prompt_id"]
        await s.until(MemorySession.streaming)
        store.unavailable = "the database went away"
        resume.set()  # the next piece of the reply cannot be stored
        await s.until(lambda s: s.watcher.closed is not None)
        assert s.watcher.closed is not None and s.watcher.closed[0] == CloseCode.TRY_AGAIN
        assert s.room.closed

        store.unavailable = None
        s = await session()  # loaded again: the cut-off run is marked
        prompt = s.room.doc.entry(prompt_id)
        assert (prompt.status, prompt.reason_code) == ("failed", "storage_error")
        assert prompt.reply_id is not None
        reply = s.room.doc.entry(prompt.reply_id)
        assert (reply.status, reply.reason_code) == ("interrupted", "storage_error")
        (stored,) = await store.entries_with_status(SESSION, [PromptStatus.FAILED.value])
        assert stored.id == prompt_id
        # Nothing was lost: a new prompt is answered.
        again = await s.send("alice", PromptCommand("c2", "still there?"))
        await s.settled(again["prompt_id"])
        assert s.status(again["prompt_id"]) is PromptStatus.DONE


async def test_a_command_refused_by_an_outage_after_the_document_changed_keeps_the_sockets() -> (
    None
):
    """The write's connection dropped after the document took the prompt (on PostgreSQL
    an acked command is one statement, sent after the change), and the store cannot be
    read to undo it: the member is answered ``unavailable``, nobody else is disconnected,
    the document is what was committed, and once the store is back the next command
    takes the number the refused one did not."""
    store = DropsAtCommit()
    async with room_with_a_client(store) as (s, _):
        first = await s.message("alice", "one")
        store.drop_next = False
        refused = await s.message("alice", "two")
        assert refused["type"] == "error" and refused["code"] == "unavailable", refused
        assert s.watcher.closed is None and not s.room.closed
        assert [e.content for e in s.room.doc.entries()] == ["one"]
        assert not any(b"two" in bytes(f) for f in s.watcher.frames if isinstance(f, bytes))
        # While the store is away, a write is refused before it changes anything.
        again = await s.message("alice", "three")
        assert again["code"] == "unavailable" and s.watcher.closed is None
        store.unavailable = None
        back = await s.message("alice", "four")
        assert back["type"] == "ack" and back["seq"] == first["seq"] + 1, back
        assert [e.content for e in s.room.doc.entries()] == ["one", "four"]
        stored = await store.entry_by_command(SESSION, "alice", "c4")
        assert stored is not None and stored.seq == back["seq"]
        assert await store.entry_by_command(SESSION, "alice", "c2") is None


async def test_a_failed_write_of_a_long_session_that_stored_nothing_keeps_the_room() -> None:
    """Review RQ-1: after a write that failed and stored nothing, the store read back was
    judged as a client's update would be, and a document holding 2,000 'u' or 'v' bytes
    (a value that might nest too deep to read) was judged to hold more than was committed:
    the room was given up and every socket told to come back, though nothing differed."""
    store = DropsAtCommit(unreachable=False)
    async with room_with_a_client(store) as (s, _):
        long = await s.message("alice", "uv" * 1500)
        assert long["type"] == "ack", long
        store.drop_next = False
        refused = await s.message("alice", "two")
        assert refused["code"] == "unavailable", refused
        assert s.watcher.closed is None and not s.room.closed
        assert [e.content for e in s.room.doc.entries()] == ["uv" * 1500]
        back = await s.message("alice", "three")
        assert back["type"] == "ack" and back["seq"] == long["seq"] + 1, back


@pytest.mark.parametrize("unreachable", [True, False])
async def test_a_write_thought_failed_that_was_stored_gives_the_room_up(unreachable: bool) -> None:
    """The same drop after the commit went through: the member was told ``unavailable``
    but the store holds the message. Once the store can be read (at once, or at the next
    write while it cannot), the document read back holds what the sockets were never
    sent: the room is given up so they resync (1013); loaded again, the session holds the
    message once, a resend gets its first ack, and numbers go on after it."""
    store = DropsAtCommit(unreachable=unreachable)
    async with room_with_a_client(store) as (s, registry):
        await s.message("alice", "one")
        store.drop_next = True
        refused = await s.message("alice", "two")
        assert refused["code"] == "unavailable", refused
        if unreachable:
            assert s.watcher.closed is None  # nothing to read back yet: kept as committed
            store.unavailable = None
            told = await s.message("alice", "three")
            assert told["code"] == "unavailable", told
            # Review RA-2: it said "... was stored; reconnect to resync; nothing was stored".
            assert told["message"] == (
                "an earlier write reported as failed was stored after all; reconnect to "
                "resync; this write was not stored"
            ), told
        await s.until(lambda s: s.watcher.closed is not None)
        assert s.watcher.closed is not None and s.watcher.closed[0] == CloseCode.TRY_AGAIN
        room = await registry.get(SESSION)
        assert room is not s.room
        assert [e.content for e in room.doc.entries()] == ["one", "two"]
        resent = dict(json.loads(await dispatch(room, "alice", MessageCommand("c2", "two"))))
        assert resent["type"] == "ack" and resent["seq"] == 2, resent
        ack = dict(json.loads(await dispatch(room, "alice", MessageCommand("c4", "four"))))
        assert ack["seq"] == 3, ack


async def test_a_write_thought_failed_that_was_stored_is_found_without_another_write() -> None:
    """Nobody writes after the outage: the room reads the store back by itself once it
    answers, finds the message its sockets were never sent, and is given up (1013)."""
    store = DropsAtCommit()
    async with room_with_a_client(store) as (s, registry):
        await s.message("alice", "one")
        store.drop_next = True
        refused = await s.message("alice", "two")
        assert refused["code"] == "unavailable", refused
        store.unavailable = None
        await s.until(lambda s: s.watcher.closed is not None)
        assert s.watcher.closed is not None and s.watcher.closed[0] == CloseCode.TRY_AGAIN
        room = await registry.get(SESSION)
        assert [e.content for e in room.doc.entries()] == ["one", "two"]


async def test_a_rest_read_answers_what_is_stored_not_a_write_under_way() -> None:
    """Review RA-4: a REST read answered the document as a write had changed it before its
    commit (a reply's text, a prompt's status), so another node asked after it could
    answer older, and a write whose commit then failed had been shown. A read of the
    document (``RoomRegistry.committed``) answers what is stored: the live document once
    the write under way settled, else (held up) a copy of the committed one."""
    store = HeldAtCommit()
    async with room_with_a_client(store) as (s, registry):

        async def read() -> list[str]:
            _, doc = await registry.committed(SESSION)
            return [e.content for e in doc.entries()]

        await s.message("alice", "one")
        store.hold_next = True
        refused = asyncio.ensure_future(s.message("alice", "two"))
        await store.holding.wait()
        assert [e.content for e in s.room.doc.entries()] == ["one", "two"]  # not stored
        assert await read() == ["one"]  # the write held up: the committed copy
        reading = asyncio.ensure_future(read())
        for _ in range(20):  # every chance to answer while the write waits
            await asyncio.sleep(0)
        store.release.set()
        assert (await refused)["code"] == "unavailable"
        assert await reading == ["one"]
        assert await read() == ["one"]
        stored = await s.message("alice", "three")
        assert stored["type"] == "ack"
        assert await read() == ["one", "three"]
