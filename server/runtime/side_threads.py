"""A loaded session's private side-threads: their committed state, their runs in flight,
and what their owners' sockets are sent.

The session core decides every change (``session.core.threads``); the room's writer
stores it with the session's other rows (never in the shared document). After the commit,
``committed`` brings the state here up to date and tells the owner's sockets alone: JSON
frames on their session sockets, and the thread's own document (``LiveThreadDoc``) to the
sockets that sync it. ``notify`` stops the runs the core said to stop and has the runner
start the one it said to start. A run's steps go to ``ThreadSteps``: streamed text and
tool steps to the owner, the reply (with what it drew on) stored when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from parley.authz.policy import Restriction, may_read, restrict, restriction_to_json
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.back_references import BackReference
from parley.server.runtime.thread_docs import LiveThreadDoc, Mutate, ThreadDocs
from parley.server.runtime.writer import Write
from parley.session.closes import CloseCode
from parley.session.core import (
    AuditRecord,
    Effects,
    SideThread,
    ThreadRunFinished,
    ThreadTurn,
    apply_to_threads,
    threads_changed,
)
from parley.session.core.effects import (
    BeginThreadRun,
    DeleteThread,
    OpenThread,
)
from parley.session.core.runs import cut_short_status
from parley.session.core.thread_state import OPEN
from parley.session.core.threads import thread_read_by, turn_read_by
from parley.session.errors import NotFound
from parley.session.lifecycle import ReplyStatus, ToolStepStatus
from parley.session.ratelimit import answer_bytes
from parley.session.reasons import Ending

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom
    from parley.server.ws.connection import Connection

log = logging.getLogger("parley.room")

StartRun = Callable[[BeginThreadRun], None]


def turn_json(turn: ThreadTurn) -> dict[str, Any]:
    return {
        "id": turn.id,
        "index": turn.index,
        "kind": turn.kind,
        "author": turn.author,
        "text": turn.text,
        "status": turn.status,
        "reason_code": turn.reason_code,
        "retry_at": turn.retry_at,
        "summarise": turn.summarise,
        "restricted": bool(turn.restriction),
        "drew_on": restriction_to_json(turn.restriction),
        "created_at": turn.created_at,
    }


def thread_json(thread: SideThread, *, turns: bool) -> dict[str, Any]:
    shown = thread.summary()
    if turns:
        shown["turns"] = [turn_json(t) for t in thread.turns]
    return shown


class SideThreads:
    room: BackReference[SessionRoom] = BackReference()  # the room holds this part

    def __init__(self, room: SessionRoom) -> None:
        self.room = room
        self.threads: dict[str, SideThread] = {}  # as committed
        self.active: dict[str, ActiveRun] = {}  # runs in flight, by thread
        self.docs = ThreadDocs(room)  # stored with the rows; held while a socket syncs one
        # Set by the session's runner (``SessionRunner.start``): where no model runs here,
        # a side-thread prompt ends at once (``unavailable``).
        self.start_run: StartRun | None = None

    async def load(self) -> None:
        await self.read_rows()
        self.docs.forget()

    async def read_rows(self) -> None:
        """The side-threads as stored now (a follower reads them: it is told no change)."""
        stored = await self.room.store.load_threads(self.room.session_id)
        self.threads = {t.id: t for t in stored}

    async def greet(self, connection: Connection) -> None:
        """Send a socket that speaks commands the state of its member's open side-threads
        (``thread`` frames, as each change sends them), most lately active first: one
        reconnected mid-reply learns how the reply ended (review). Their bytes spend the
        member's read budget (``SessionRoom.settle_read``, as a REST read's do), and the
        greeting stops where the budget does (a reconnect
        flood would otherwise reread every thread's text each time), or before it would
        fill half the socket's backlog limit.

        Where the session runs, the committed threads in memory, sent at once (no store
        read, so no change can be sent between them and an older state); elsewhere, read
        from the store, judged by the members read with them."""
        user_id = connection.user_id
        fence = self.room.writer.document.fence
        try:
            if fence is None or fence.holds():
                mine = [t for t in self.of(user_id) if t.status == OPEN]
            else:
                await self.room.membership.refresh()
                listed = await self.room.store.load_threads(
                    self.room.session_id, user_id, texts=False
                )
                mine = [t for t in listed if t.status == OPEN]
        except Exception:  # the socket is served all the same; the next change tells it
            log.warning("side-threads not read for a new socket", exc_info=True)
            return
        mine.sort(key=_last_active, reverse=True)
        # Well inside the socket's backlog limit, which the document's sync shares: a
        # greeting past it would have the socket dropped (and greeted again) at each try.
        room_for = self.room.settings.send_buffer_max_bytes // 2
        greeted = 0
        for thread in mine:
            if fence is not None and not fence.holds():
                try:
                    loaded = await self.room.store.load_threads(
                        self.room.session_id, user_id, thread_id=thread.id
                    )
                except Exception:
                    log.warning("a side-thread not read for a new socket", exc_info=True)
                    return
                if not loaded:
                    continue  # deleted meanwhile
                thread = loaded[0]
            streamed = self._streamed(thread.id)
            # The frames are at least their texts' bytes: spent before they are made (a
            # refused greeting makes nothing), the rest once they are (as a REST read is).
            texts = [t.text for t in thread.turns] + ([streamed.text] if streamed else [])
            least = answer_bytes(texts)
            if greeted + least > room_for:  # unspent
                return
            if not self.room.spend_read(user_id, least):
                return
            shown = thread_json(self.read_by(thread, thread.owner), turns=True)
            frames = [json.dumps({"type": "thread", "thread": shown})]
            if streamed is not None:
                frames.append(json.dumps(delta_frame(thread.id, streamed)))
            greeted += answer_bytes(frames)
            if greeted > room_for:
                return
            self.room.settle_read(user_id, least, frames)
            for frame in frames:
                connection.send_json(frame)

    def _streamed(self, thread_id: str) -> StreamedReply | None:
        """The reply the thread's run in flight here has streamed so far, if its owner
        may read it now: a socket that connects mid-reply is sent it (from offset 0), so
        the deltas after it continue its text rather than leave a gap (review: an SDK's
        reply text after a reconnect lacked what was streamed while it was away)."""
        active = self.active.get(thread_id)
        if active is None or not isinstance(active.steps, ThreadSteps):
            return None
        steps = active.steps
        if not may_read(self.room.subject(steps.begin.owner), active.reply.restriction):
            return None
        return StreamedReply(steps.begin.reply_id, "".join(steps.streamed))

    def of(self, user_id: str | None) -> list[SideThread]:
        """The side-threads of ``user_id`` (None: every member's, for the admin)."""
        return [t for t in self.threads.values() if user_id is None or t.owner == user_id]

    def read_by(self, thread: SideThread, user_id: str | None) -> SideThread:
        """``thread`` as ``user_id`` may read it now (``thread_read_by``: a turn drawing on
        a source they were denied since is a placeholder); None, the admin: all of it."""
        return thread if user_id is None else thread_read_by(thread, self.room.subject(user_id))

    def drew_on(self, thread_id: str) -> Restriction:
        """What the run in flight in side-thread ``thread_id`` drew on so far (``()``: none
        runs here): the core stops it once its owner may no longer read that
        (``session.core.runs.unreadable_runs``)."""
        active = self.active.get(thread_id)
        return () if active is None else active.reply.restriction

    async def rejudge(self, user_id: str) -> None:
        """``user_id``'s grants changed (their runs that draw on what they may no longer
        read were stopped by the core): the documents of their threads that draw on it are
        rewritten now (``ThreadDocs.rejudge``), not when a socket next opens here: a
        follower serves the stored log as it is."""
        for thread in self.of(user_id):
            if self.read_by(thread, user_id) != thread or self._running(thread.id):
                with contextlib.suppress(NotFound):  # deleted meanwhile
                    await self.docs.rejudge(
                        thread.id,
                        partial(self.threads.get, thread.id),
                        partial(self._running, thread.id),
                    )

    def get(self, thread_id: str, user_id: str | None) -> SideThread:
        """Side-thread ``thread_id`` if ``user_id`` owns it (None: the admin reads any);
        ``NotFound`` otherwise, so another member's thread is never confirmed to exist."""
        thread = self.threads.get(thread_id)
        if thread is None or (user_id is not None and thread.owner != user_id):
            raise NotFound(f"no side-thread {thread_id!r} of yours in this session")
        return thread

    async def document(self, thread_id: str, user_id: str, *, writes: bool = True) -> LiveThreadDoc:
        """The document of side-thread ``thread_id`` of ``user_id`` (``NotFound`` as
        ``get``) for a socket: held here, or read from its log (``ThreadDocs.open``;
        ``writes``: this node runs the session)."""
        self.get(thread_id, user_id)
        committed = partial(self.threads.get, thread_id)
        return await self.docs.open(thread_id, committed, partial(self._running, thread_id), writes)

    def _running(self, thread_id: str) -> tuple[ThreadTurn, ...]:
        """The turns of the thread's run in flight not stored yet, if one is, as its owner
        may read them now."""
        active = self.active.get(thread_id)
        if active is not None and isinstance(active.steps, ThreadSteps):
            owner = self.room.subject(active.steps.begin.owner)
            # A run that settled is in the committed thread already (its entry here goes a
            # moment later): shown as stored, judged as stored, never twice.
            thread = self.threads.get(thread_id)
            stored = set() if thread is None else {t.id for t in thread.turns}
            return tuple(
                turn_read_by(t, owner)
                for t in active.steps.running_turns(active)
                if t.id not in stored
            )
        return ()

    async def write(self, write: Write, effects: Effects) -> None:
        """In the room's transaction: the documents of the threads ``effects`` changes (and
        the other nodes told, to tell their own sockets of the owners)."""
        await self.docs.write(write, self.threads, effects)
        fence = self.room.writer.document.fence
        if fence is None:
            return
        change = effects.thread
        gone = self.threads.get(change.thread_id) if isinstance(change, DeleteThread) else None
        if gone is not None:
            fence.thread_changed(write.tx, gone.id, gone.owner)
        for thread_id in threads_changed(effects):
            thread = self.threads.get(thread_id)
            owner = thread.owner if thread is not None else _opened_by(effects, thread_id)
            if owner is not None:
                fence.thread_changed(write.tx, thread_id, owner)

    async def tell_owner(self, thread_id: str, owner: str) -> None:
        """On a node that does not run the session: ``owner``'s side-thread changed there;
        their sockets here are sent its state as stored (or told it is gone)."""
        if not any(c.user_id == owner and c.channel for c in self.room.sockets.connections):
            return  # none of theirs here speaks JSON: nothing to read
        found = await self.room.store.load_threads(self.room.session_id, owner, thread_id=thread_id)
        if not found:
            self._send(owner, {"type": "thread_deleted", "thread_id": thread_id})
            return
        shown = thread_json(self.read_by(found[0], owner), turns=True)
        self._send(owner, {"type": "thread", "thread": shown})

    def committed(self, effects: Effects) -> None:
        """After the commit: the state here follows ``effects``; the owners are told."""
        change = effects.thread
        gone = self.threads.get(change.thread_id) if isinstance(change, DeleteThread) else None
        apply_to_threads(self.threads, effects)
        if gone is not None:
            self._send(gone.owner, {"type": "thread_deleted", "thread_id": gone.id})
            self.docs.live.pop(gone.id, None)
            self.room.context.forget_thread(gone.id)
            self.room.sockets.close_thread(gone.id, CloseCode.NOT_FOUND, "side-thread deleted")
        for thread_id in threads_changed(effects):
            thread = self.threads.get(thread_id)
            if thread is not None:
                shown = thread_json(self.read_by(thread, thread.owner), turns=True)
                self._send(thread.owner, {"type": "thread", "thread": shown})

    def notify(self, effects: Effects) -> None:
        for thread_id, ending in effects.stop_threads:
            active = self.active.get(thread_id)
            if active is not None:
                active.stop(ending)
        begin = effects.thread_run
        if begin is None:
            return
        if self.start_run is None:  # a room without its runner (a test's), or unloaded
            log.warning("no runner to run a side-thread", extra={"thread_id": begin.thread_id})
            return
        self.start_run(begin)

    def _send(self, user_id: str, frame: dict[str, Any]) -> None:
        self.room.sockets.tell(json.dumps(frame), user_id)

    def steps(self, begin: BeginThreadRun, author: str) -> ThreadSteps:
        return ThreadSteps(self, begin, author)


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class StreamedReply:
    """Text of a side-thread's reply streaming, from ``offset`` (characters before it)."""

    reply_id: str
    text: str
    offset: int = 0


def delta_frame(thread_id: str, streamed: StreamedReply) -> dict[str, Any]:
    """The ``thread_delta`` frame of ``streamed``: its ``offset`` lets a client place the
    text, and see a gap (a delta missed while it reconnected) rather than run it on."""
    return {
        "type": "thread_delta",
        "thread_id": thread_id,
        "reply_id": streamed.reply_id,
        "offset": streamed.offset,
        "text": streamed.text,
    }


class ThreadSteps:
    """Where one side-thread run's steps go (``RunSink``): its owner's sockets and its
    thread's document while it runs, its thread's rows (through the core and the room's
    writer) when it ends. ``author``: the model that writes the reply."""

    private = True

    def __init__(self, threads: SideThreads, begin: BeginThreadRun, author: str) -> None:
        self.threads = threads
        self.begin = begin
        self.author = author
        self.tool_turns: list[ThreadTurn] = []
        self.started_at = threads.room.now_ms()
        # The reply's text as sent to the owner's sockets (``thread_delta``), from which a
        # socket that connects mid-reply is greeted.
        self.streamed: list[str] = []
        self.streamed_chars = 0

    def _send(self, frame: dict[str, Any]) -> None:
        self.threads._send(self.begin.owner, {"thread_id": self.begin.thread_id, **frame})

    async def _show(self, record: Callable[[], None], change: Mutate) -> None:
        await self.threads.docs.stream(self.begin.thread_id, record, change)

    def running_turns(self, active: ActiveRun) -> tuple[ThreadTurn, ...]:
        """The run's turns not stored yet: its tool steps, then its reply so far."""
        reply = ThreadTurn(
            id=self.begin.reply_id,
            thread_id=self.begin.thread_id,
            index=0,
            kind="reply",
            author=self.author,
            text="".join(active.text),
            status=ReplyStatus.STREAMING.value,
            created_at=self.started_at,
            restriction=active.reply.restriction,
        )
        return (*self.tool_turns, reply)

    async def started(self, active: ActiveRun) -> None:
        """The run began: its reply shows in the thread's document as being written."""
        reply_id, author, at = self.begin.reply_id, self.author, self.started_at
        await self._show(_nothing, lambda document: document.start_reply(reply_id, author, at))

    async def append_reply(self, active: ActiveRun, text: str) -> None:
        sent = StreamedReply(self.begin.reply_id, text, self.streamed_chars)
        self._send(delta_frame(self.begin.thread_id, sent))
        self.streamed.append(text)
        self.streamed_chars += len(text)
        reply_id = self.begin.reply_id
        await self._show(
            partial(active.text.append, text),
            lambda document: document.append_text(reply_id, text),
        )

    async def widen(self, active: ActiveRun, restriction: Restriction) -> None:
        """The reply inherits what the run drew on (it never goes into the shared
        document, so nothing else changes)."""
        widened = restrict(active.reply.restriction, restriction)
        active.reply = replace(active.reply, restriction=widened)

    async def add_tool_step(
        self,
        active: ActiveRun,
        *,
        step_id: str,
        tool: str,
        status: str,
        detail: str,
        restriction: Restriction,
    ) -> None:
        turn = ThreadTurn(
            id=step_id,
            thread_id=self.begin.thread_id,
            index=0,  # numbered when the run's turns are stored
            kind="tool",
            author=tool,
            text=f"{tool}: {status}\n{detail}",
            status=status,
            created_at=self.threads.room.now_ms(),
            restriction=restrict(active.reply.restriction, restriction),
        )
        await self._show_tool_turn(turn)

    async def _show_tool_turn(self, turn: ThreadTurn) -> None:
        """Show a tool turn to the owner: new, or the turn of its id (taken ``running``
        before its call went) brought to it."""
        shown = turn_read_by(turn, self.threads.room.subject(self.begin.owner))
        self._send({"type": "thread_tool", "turn": turn_json(shown)})
        reply_id = self.begin.reply_id
        await self._show(
            partial(self._keep_tool_turn, turn),
            lambda document: document.show_turn(turn, before=reply_id),
        )

    def _keep_tool_turn(self, turn: ThreadTurn) -> None:
        for index, kept in enumerate(self.tool_turns):
            if kept.id == turn.id:
                self.tool_turns[index] = turn
                return
        self.tool_turns.append(turn)

    async def finish(
        self, active: ActiveRun, ending: Ending | None, audit: Sequence[AuditRecord] = ()
    ) -> None:
        room = self.threads.room
        status = cut_short_status(ending).value
        for index, turn in enumerate(self.tool_turns):  # a call still out: cut short
            if turn.status == ToolStepStatus.RUNNING:
                detail = turn.text.partition("\n")[2]
                ended = replace(turn, status=status, text=f"{turn.author}: {status}\n{detail}")
                self.tool_turns[index] = ended  # stored with the run, shown as stored
        now = room.now_ms()
        event = ThreadRunFinished(
            thread_id=self.begin.thread_id,
            prompt_id=self.begin.prompt_id,
            reply_id=self.begin.reply_id,
            author=self.author,
            text="".join(active.text),
            ending=ending,
            restriction=active.reply.restriction,
            steps=tuple(self.tool_turns),
            audit=tuple(audit),
            now_ms=now,
        )
        await room.writer.step(event, now, usage=active.usage)


def _last_active(thread: SideThread) -> int:
    return thread.turns[-1].created_at if thread.turns else thread.created_at


def _opened_by(effects: Effects, thread_id: str) -> str | None:
    """The owner of a side-thread ``effects`` opens (not committed here yet)."""
    change = effects.thread
    if isinstance(change, OpenThread) and change.thread.id == thread_id:
        return change.thread.owner
    return None
