"""What a session's event streams (``server.http.sse``) read in memory: a wake-up after every
commit, the committed text of the reply they follow, the committed queue, and who reads.

Durable events come from the store (``session_events``); streamed reply text has no
events, so a stream reads it from the shared document. The document holds changes not yet
stored while a write waits for its commit, so a stream reads the live document only when
no write is under way, and otherwise what the room recorded here at its last commit
(``committed``, called under the writer's lock right after each commit or, on a read
replica, after each applied tail). A stream therefore never shows text that a failed
commit takes back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from parley.session.entries import EntryKind
from parley.session.errors import NotFound
from parley.session.events import StoredEvent
from parley.session.lifecycle import ReplyStatus
from parley.session.schema import SessionDocument

# Replies whose committed text is kept here between commits (a session runs one at a time;
# a few more cover streams still finishing the one before).
KEPT_REPLIES = 4


@dataclass(frozen=True, slots=True)
class ReplyText:
    """A reply's text as committed, and whether more may still be appended."""

    text: str
    streaming: bool


def reply_text(doc: SessionDocument, reply_id: str) -> ReplyText | None:
    """The reply's text in ``doc`` (None: no such reply there yet)."""
    try:
        entry = doc.entry(reply_id)
    except NotFound:
        return None
    if entry.kind is not EntryKind.REPLY:
        return None
    return ReplyText(entry.content, entry.status == ReplyStatus.STREAMING.value)


def _queue_of(doc: SessionDocument) -> list[dict[str, Any]]:
    return [{"prompt_id": i.id, "seq": i.seq, "author": i.author} for i in doc.queued()]


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class StreamFeed:
    """One per room. Streams wait on ``wait``; the room calls ``committed`` and ``changed``."""

    def __init__(self) -> None:
        self.generation = 0
        # The number of the session's newest stored event, when the room knows it (it
        # committed that event itself, and nothing else was told since): streams that sent
        # it skip the store when a commit wakes them (reply text commits carry none).
        self.head: int | None = None
        self._changed = asyncio.Event()
        self._texts: dict[str, ReplyText | None] = {}
        self._queue: list[dict[str, Any]] = []
        # Open streams by reader (a user id, or ``!admin``): the per-node caps, and a room
        # with readers is not unloaded as idle.
        self.readers: Counter[str] = Counter()
        # Why the room's streams end (its code and message), once it was unloaded or given
        # up: a reader resumes with its last id on the room loaded next.
        self.ended: tuple[str, str] | None = None
        # The one read of the store that streams woken by the same change share.
        self._read: tuple[tuple[int, int], asyncio.Task[list[StoredEvent]]] | None = None

    def committed(self, doc: SessionDocument, events: Sequence[int] | None) -> None:
        """``doc`` is committed state now (call under the room's lock, after a commit),
        with ``events`` (the numbers of those the commit stored; None: unknown)."""
        if events is None:
            self.head = None
        elif events:
            self.head = max(events)
        if self.readers:  # nobody reads: no cost on the writer's path
            for reply_id in self._texts:
                self._texts[reply_id] = reply_text(doc, reply_id)
            self._queue = _queue_of(doc)
        self._wake()

    def appended(self, doc: SessionDocument) -> None:
        """Reply text was appended and committed (``writer.appending``: nothing else
        changes in an append): only the replies still streaming can have moved, and the
        queue has not. Costs the writer the appended replies' text, not every kept one's."""
        if self.readers:
            for reply_id, text in self._texts.items():
                if text is not None and text.streaming:
                    self._texts[reply_id] = reply_text(doc, reply_id)
        self._wake()

    def changed(self) -> None:
        """Something changed that streams must look at (a membership change, events stored
        beside the room, the room given up): wake them; they read the store again."""
        self.head = None
        self._wake()

    def end(self, code: str, message: str) -> None:
        """The room is gone (unloaded, given up): its streams end with ``code``."""
        if self.ended is None:
            self.ended = (code, message)
        self.changed()

    def _wake(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, generation: int, timeout_s: float) -> bool:
        """Wait for a change after ``generation``; False when ``timeout_s`` passed first."""
        if self.generation != generation:
            return True
        changed = self._changed
        try:
            async with asyncio.timeout(timeout_s):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    async def events_after(
        self,
        after: int,
        generation: int,
        read: Callable[[int], Awaitable[list[StoredEvent]]],
    ) -> list[StoredEvent]:
        """``read(after)``, shared by the streams that ask for the same ``after`` once woken
        by the same change (``generation``): a commit wakes every stream of the session,
        and they mostly stand at the same event. The read starts after that change was
        committed, so it holds everything the change stored."""
        key = (generation, after)
        if self._read is None or self._read[0] != key:
            task = asyncio.ensure_future(read(after))
            task.add_done_callback(_retrieved)  # a failure nobody waits for any more
            self._read = (key, task)
        # One stream's going away never cancels the others' read.
        return await asyncio.shield(self._read[1])

    def queue(self, doc: SessionDocument, *, writing: bool) -> list[dict[str, Any]]:
        """The waiting prompts in planned order, as committed (see ``reply``)."""
        if not writing:
            self._queue = _queue_of(doc)
        return self._queue

    def reply(self, doc: SessionDocument, reply_id: str, *, writing: bool) -> ReplyText | None:
        """The reply's committed text: read from ``doc`` when no write is under way
        (``writing`` False), else as of the last commit (None: not known yet; the next
        commit wakes the streams)."""
        if not writing:
            now = reply_text(doc, reply_id)
            if now is not None and now.streaming:
                self._keep(reply_id, now)
            return now
        if reply_id not in self._texts:
            self._keep(reply_id, None)
        return self._texts[reply_id]

    def _keep(self, reply_id: str, text: ReplyText | None) -> None:
        self._texts.pop(reply_id, None)
        self._texts[reply_id] = text
        while len(self._texts) > KEPT_REPLIES:
            del self._texts[next(iter(self._texts))]
