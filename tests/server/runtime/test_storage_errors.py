"""The database goes away under a streaming reply, on the in-memory store: the room gives
up and tells its sockets to come back (1013), and when the session loads again the run it
cut off ends with the code ``storage_error``, in the document and in the store. (The same
outage on PostgreSQL, over sockets: ``tests/server/test_storage_faults.py``.)"""

from __future__ import annotations

import asyncio
import contextlib

from parley.server.providers.registry import open_models
from parley.server.runtime.rooms import RoomRegistry
from parley.server.store.memory import MemoryStore
from parley.session.closes import CloseCode
from parley.session.commands import PromptCommand
from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from tests.fake_model import FakeModel
from tests.server.runtime.harness import (
    SESSION,
    ManualClock,
    MemorySession,
    Watcher,
    add_members,
    memory_settings,
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
