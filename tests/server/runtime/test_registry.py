"""The rooms of a process (``RoomRegistry``) on the in-memory store: each session has its
own runner, so sessions run in parallel while each runs one call at a time."""

from __future__ import annotations

import asyncio
import contextlib

from parley.server.providers.registry import open_models
from parley.server.runtime.rooms import RoomRegistry
from parley.server.store.memory import MemoryStore
from parley.session.commands import PromptCommand
from parley.session.queue import Policy
from tests.fake_model import FakeModel
from tests.server.runtime.harness import (
    ManualClock,
    MemorySession,
    Watcher,
    add_members,
    memory_settings,
)

SESSIONS = 3


async def test_sessions_run_in_parallel() -> None:
    """Every model call waits until all the sessions' calls have started: sessions run one
    after another would never get past the first, and the time-out fails the test."""
    started = 0
    all_started = asyncio.Event()

    async def arrive() -> None:
        nonlocal started
        started += 1
        if started == SESSIONS:
            all_started.set()
        await all_started.wait()

    model = FakeModel(lambda sent: [arrive, "answered"])
    settings = model.configure(memory_settings())
    store = MemoryStore()
    clock = ManualClock()
    async with contextlib.AsyncExitStack() as stack:
        provider = await stack.enter_async_context(open_models(settings, model.transport))
        registry = RoomRegistry(store, settings, provider, clock)
        stack.push_async_callback(registry.close)
        sessions = []
        for n in range(SESSIONS):
            await store.create_session(f"s{n}", "t", Policy.QUEUE.value, 0)
            await add_members(store, {"alice": "editor"}, f"s{n}")
            room = await registry.get(f"s{n}")
            room.connections.add(Watcher())  # type: ignore[arg-type]
            sessions.append(MemorySession(store, room, None, model, clock))
        acks = [await s.send("alice", PromptCommand("p", "in parallel")) for s in sessions]
        for s, ack in zip(sessions, acks, strict=True):
            await s.settled(ack["prompt_id"])
            prompt, reply = s.room.doc.entries()
            assert (prompt.status, reply.status, reply.content) == ("done", "done", "answered")
        assert started == SESSIONS
