"""A session's room and runner on the in-memory store, with the fake model behind the real
OpenAI provider: no app, no socket, no database.

    async with memory_session({"ann": "editor"}, FakeModel()) as s:
        await s.prompt("ann", "hi")
        await s.settled()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Array, Doc

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.providers.offline import OfflineProvider
from parley.server.providers.registry import open_models
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.rooms import RoomRegistry
from parley.server.runtime.runner import SessionRunner
from parley.server.settings import Settings
from parley.server.store.access_rows import ToolRow
from parley.server.store.memory import MemoryStore
from parley.server.store.memory_tables import MemoryTx
from parley.server.store.port import SessionStore
from parley.server.store.rows import MemberRow
from parley.session.commands import Command, MessageCommand, PromptCommand
from parley.session.errors import Unavailable
from parley.session.lifecycle import PromptStatus
from parley.session.model import ModelEvent, ModelProvider, ModelRequest
from parley.session.queue import Policy
from parley.session.yprotocol import SyncMessage, SyncType, decode_client_frame
from tests.conftest import make_settings
from tests.fake_model import FakeModel

SESSION = "s"
FINAL = {PromptStatus.DONE, PromptStatus.FAILED, PromptStatus.CANCELLED, PromptStatus.INTERRUPTED}


class RecordingOffline:
    """The offline model, keeping every request it was given."""

    name = "recording-offline"

    def __init__(self) -> None:
        self.model = OfflineProvider(token_delay_s=0)
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        async for event in self.model.stream(request):
            yield event

    def calls(self, purpose: str) -> list[ModelRequest]:
        return [r for r in self.requests if r.purpose == purpose]


class ManualClock:
    """Time that moves only when a test moves it (seconds since the epoch)."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def memory_settings(**overrides: Any) -> Settings:
    return make_settings("sqlite+aiosqlite:///:memory:", Path("/nonexistent"), **overrides)


@dataclass
class MemorySession:
    store: MemoryStore
    room: SessionRoom
    runner: SessionRunner | None
    model: FakeModel | None
    clock: ManualClock
    commands: int = 0

    async def send(self, actor: str, command: Command) -> dict[str, Any]:
        return dict(json.loads(await dispatch(self.room, actor, command)))

    def next_id(self) -> str:
        self.commands += 1
        return f"c{self.commands}"

    async def prompt(self, actor: str, text: str) -> dict[str, Any]:
        return await self.send(actor, PromptCommand(self.next_id(), text))

    async def message(self, actor: str, text: str) -> dict[str, Any]:
        return await self.send(actor, MessageCommand(self.next_id(), text))

    def status(self, prompt_id: str) -> PromptStatus:
        return PromptStatus(self.room.doc.entry(prompt_id).status)

    async def settled(self, *prompt_ids: str, timeout_s: float = 10) -> None:
        """Wait until the prompts are final and nothing runs: checked after each update
        the room broadcasts (it broadcasts only what it committed), for at most
        ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                active = self.room.active_run
                if not all(self.status(p) in FINAL for p in prompt_ids):
                    await self.watcher.changed()
                elif active is not None:
                    await active.finished.wait()
                else:
                    return

    async def summarised(self) -> None:
        """Wait for the summaries the last run started (its runner pokes the summariser
        before anything else can run, so the task is there once the run has settled)."""
        assert self.runner is not None
        task = self.runner.summariser.task
        if task is not None:
            async with asyncio.timeout(10):
                await task

    async def until(self, done: Callable[[MemorySession], bool], timeout_s: float = 10) -> None:
        """Wait until ``done(self)``, checked after each frame the room sends."""
        async with asyncio.timeout(timeout_s):
            while not done(self):
                await self.watcher.changed()

    def streaming(self) -> bool:
        """A reply is under way and has text in the document."""
        return any(
            e.kind == "reply" and e.status == "streaming" and e.content
            for e in self.room.doc.entries()
        )

    def statuses(self) -> dict[str, str]:
        """Each prompt's status, by its text."""
        return {e.content: e.status for e in self.room.doc.entries() if e.kind == "prompt"}

    @property
    def watcher(self) -> Watcher:
        return next(c for c in self.room.connections if isinstance(c, Watcher))


class DropsAtCommit(MemoryStore):
    """A store whose next write fails at its end (its connection dropped), after the
    document changed: with ``drop_next`` True its rows and update went in all the same
    (the commit was sent before the drop); then the store is unreachable until told,
    unless not ``unreachable``."""

    def __init__(self, *, unreachable: bool = True) -> None:
        super().__init__()
        self.drop_next: bool | None = None  # None: no drop; else whether it stored
        self.unreachable = unreachable  # after the drop, until told

    @contextlib.asynccontextmanager
    async def transaction(self, *args: Any, **kwargs: Any) -> AsyncIterator[MemoryTx]:
        stored = self.drop_next
        async with super().transaction(*args, **kwargs) as tx:
            yield tx
            if stored is None:
                return
            self.drop_next = None
            if self.unreachable:
                self.unavailable = "the connection dropped"
            if not stored:
                raise Unavailable("the connection dropped; nothing was stored")
        tx.committed = False  # the commit's answer never came back
        raise Unavailable("the connection dropped after the commit")


class HeldAtCommit(MemoryStore):
    """A store whose next write (``hold_next``), its document changed, waits at its commit
    (``holding`` is set) until ``release`` is set, and then fails: nothing was stored."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_next = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def transaction(self, *args: Any, **kwargs: Any) -> AsyncIterator[MemoryTx]:
        held, self.hold_next = self.hold_next, False
        async with super().transaction(*args, **kwargs) as tx:
            yield tx
            if held:
                self.holding.set()
                await self.release.wait()
                raise Unavailable("the connection dropped; nothing was stored")


def transcript_of(updates: Iterable[bytes]) -> list[dict[str, Any]]:
    """The transcript of a document built from nothing by ``updates``, as plain data."""
    doc = Doc()
    transcript = doc.get("transcript", type=Array)
    for update in updates:
        doc.apply_update(update)
    return list(transcript.to_py() or [])


async def stored_transcript(store: SessionStore, session_id: str = SESSION) -> list[dict[str, Any]]:
    """The transcript as the store would load it: its snapshot, then the updates after."""
    stored = await store.load_doc(session_id)
    return transcript_of(([stored.snapshot] if stored.snapshot else []) + stored.updates)


class Watcher:
    """A listener in the room's sockets: it keeps what the room sends and wakes whoever
    waits for the next frame (``changed``)."""

    direct = None  # no writer beneath: a broadcast hands it each frame through ``send``

    def __init__(self, user_id: str = "watcher") -> None:
        self.user_id = user_id
        self.claims = None
        self.frames: list[bytes | str] = []
        self.closed: tuple[int, str] | None = None
        self._event = asyncio.Event()

    def send(self, message: bytes | str, frame: bytes | None = None) -> bool:
        self.frames.append(message)
        self._event.set()
        return True

    def send_json(self, text: str) -> bool:
        return self.send(text)

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (int(code), reason)
        self._event.set()

    async def changed(self) -> None:
        await self._event.wait()
        self._event.clear()

    def transcript(self) -> list[dict[str, Any]]:
        """The transcript a client would hold after the document updates sent here (from
        an empty document: a watcher added to the room of a new session)."""
        messages = [decode_client_frame(f) for f in self.frames if isinstance(f, bytes)]
        return transcript_of(
            m.payload
            for m in messages
            if isinstance(m, SyncMessage) and m.sync_type is not SyncType.STEP1
        )


async def add_members(
    store: MemoryStore, members: dict[str, str | Member], session_id: str = SESSION
) -> None:
    """``members``: user id to role, or to the whole ``Member`` (with grants or denials)."""
    for user_id, role in members.items():
        member = Member(user_id, role) if isinstance(role, str) else role
        await store.change_member(session_id, user_id, member, 0, lambda *_: Decision(True, "t"))


async def store_before_the_rules(
    store: MemoryStore, user_id: str, role: str, session_id: str = SESSION
) -> None:
    """A member stored under a user id the server refuses now (``server``, ``aIice``
    beside ``alice``): data written before the rule, which the server must still serve."""
    async with store.transaction() as tx:
        tx.session(session_id).members[user_id] = MemberRow(session_id, user_id, role, 0)


@contextlib.asynccontextmanager
async def memory_session(
    members: dict[str, str | Member],
    model: FakeModel | ModelProvider | None = None,
    *,
    policy: Policy = Policy.QUEUE,
    clock: ManualClock | None = None,
    store: MemoryStore | None = None,
    tools: Sequence[ToolRow] = (),
    unvalidated: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[MemorySession]:
    """A loaded room of session ``s`` with ``members`` (user: role); with a ``model``, its
    runner runs (the model is the only one configured)."""
    clock = clock or ManualClock()
    store = store or MemoryStore()
    settings = memory_settings(**overrides)
    if unvalidated:  # values past a setting's bounds, which a test may need
        settings = settings.model_copy(update=unvalidated)
    if await store.get_session(SESSION) is None:
        await store.create_session(SESSION, "t", policy.value, 0)
        await add_members(store, members)
    if isinstance(model, FakeModel):
        settings = model.configure(settings)
    room = SessionRoom(
        SESSION, store=store, settings=settings, clock=clock, webhooks=lambda: list(tools)
    )
    await room.load("t", policy)
    room.connections.add(Watcher())  # type: ignore[arg-type]  # what it sends is all it needs
    async with contextlib.AsyncExitStack() as stack:
        runner = None
        if model is not None:
            provider: ModelProvider = model  # type: ignore[assignment]
            if isinstance(model, FakeModel):
                provider = await stack.enter_async_context(open_models(settings, model.transport))
            runner = SessionRunner(room, provider, settings.run_timeout_s)
            runner.start()
            stack.push_async_callback(runner.stop)
        fake = model if isinstance(model, FakeModel) else None
        yield MemorySession(store, room, runner, fake, clock)


@contextlib.asynccontextmanager
async def room_with_a_client(
    store: MemoryStore, **overrides: Any
) -> AsyncIterator[tuple[MemorySession, RoomRegistry]]:
    """Session ``s`` with editor ``alice``, its room loaded through a registry, answered
    "ok" by the fake model, and a client that synced (the room keeps a committed copy)."""
    model = FakeModel(lambda sent: ["ok"])
    settings = model.configure(memory_settings(**overrides))
    await store.create_session(SESSION, "t", Policy.QUEUE.value, 0)
    await add_members(store, {"alice": "editor"})
    async with contextlib.AsyncExitStack() as stack:
        provider = await stack.enter_async_context(open_models(settings, model.transport))
        registry = RoomRegistry(store, settings, provider, ManualClock())
        stack.push_async_callback(registry.close)
        # No local holds the room: a test may unload it and see it freed.
        yield (
            MemorySession(store, await synced_room(registry), None, model, ManualClock()),
            registry,
        )


async def synced_room(registry: RoomRegistry) -> SessionRoom:
    """Session ``s``'s room, loaded through ``registry``, with a client that synced."""
    room = await registry.get(SESSION)
    room.connections.add(Watcher())  # type: ignore[arg-type]
    await room.writer.document.sync_answer(b"\x00")  # the client's sync step 1
    return room
