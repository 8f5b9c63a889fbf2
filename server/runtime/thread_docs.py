"""Side-threads' documents on the node that loads their session: stored, then sent.

Each change the server makes to a thread's document (``session.core.thread_doc``) is one
CRDT update, stored before any socket is sent it, as the session's document is: a change
of the thread's rows is stored in the room's transaction beside them (``write``), a piece
of streamed reply text through the group commit (``stream``), both under the room's
writer lock. The log is squashed into a snapshot every ``snapshot_every_updates``, and
deleted with the thread. So after a restart, or on a node that follows the session, the
document read back is the same document (same client ids, same items): a client holding
a copy just syncs.

A document is kept in memory while a socket syncs it (``open``; freed when the last one
closes, ``release``) or a run answers in its thread: at most one per open socket's thread
and one per run in flight. A change to any other thread is made on its document read from
the log in the transaction, and stored the same way. A run's streamed text and steps
are stored as they come, watched or not, so a socket opened mid-run, and the session's
recovery after a crash, read from the log what it did so far.
Clients only read: their updates are judged (``ServerWrites``), never applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from pycrdt import TransactionEvent

from parley.server.runtime.back_references import BackReference
from parley.server.runtime.thread_cuts import ThreadCuts
from parley.server.runtime.writer import DocumentWriter, Write, merged, settled
from parley.server.store.port import SessionTx
from parley.server.store.rows import StoredDoc
from parley.session.closes import CloseCode
from parley.session.core import Effects, SideThread, ThreadTurn, apply_to_threads, threads_changed
from parley.session.core.effects import DeleteThread
from parley.session.core.thread_doc import ThreadDocument, show_all
from parley.session.encoded import DEFAULT_CHUNK_BYTES, EncodedDocument
from parley.session.errors import NotFound, Unavailable
from parley.session.observers import observe_weakly
from parley.session.read_only import ServerWrites
from parley.session.yprotocol import ProtocolError, SyncType, delete_set_of, encode_sync

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom

log = logging.getLogger("parley.room")

Mutate = Callable[[ThreadDocument], None]
RELOAD = "this side-thread's document could not be stored; reconnect to resync"


def read_document(stored: StoredDoc) -> ThreadDocument:
    return ThreadDocument.read(stored.snapshot, stored.updates)


class LiveThreadDoc:
    """The document of side-thread ``thread_id`` held for its sockets (``send`` reaches
    them), and where its stored log stands (``last_update_id``, for a follower's tail)."""

    def __init__(
        self,
        thread_id: str,
        stored: StoredDoc,
        send: Callable[[str, bytes], None],
        limit: int,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.thread_id = thread_id
        self.document = read_document(stored)
        self.send = send
        self.writes = ServerWrites(limit)
        self.chunk_bytes = chunk_bytes
        # What a sync is answered from (``sync_answer``): the document encoded once, then
        # the updates published after it; None: encoded afresh at the next answer.
        self._encoded: EncodedDocument | None = None
        self._cuts = ThreadCuts()
        self.last_update_id = stored.last_update_id
        self.since_snapshot = stored.updates_since_snapshot
        self._captured: list[bytes] = []
        observe_weakly(self.document.doc, self._capture)

    def _capture(self, event: TransactionEvent) -> None:
        self._captured.append(event.update)

    def capture(self, mutate: Mutate) -> bytes:
        """Change the document; the one update that did it (empty: nothing changed)."""
        try:
            mutate(self.document)
        finally:
            captured, self._captured = self._captured, []
        return merged(captured)

    def sent(self, update: bytes) -> Callable[[int], None]:
        """What follows a streamed update's commit (``GroupCommit.submit``'s
        ``on_stored``): its id kept, the update to the thread's sockets."""

        def stored(update_id: int) -> None:
            self.last_update_id = update_id
            self.publish(update)

        return stored

    def publish(self, update: bytes) -> None:
        """A stored update: to the thread's sockets."""
        if update:
            state = self.document.doc.get_state
            self.writes.committed(update, state)
            self._copied(update, state)
            self.send(self.thread_id, encode_sync(SyncType.UPDATE, update))

    def _copied(self, update: bytes, state: Callable[[], bytes]) -> None:
        """Keep the copy sync answers come from in step with a published ``update``
        (``state`` gives the document's state vector after it). One that deletes drops the
        copy, encoded afresh at the next answer: the bytes sent before still hold what
        it deleted (text its owner was since denied), a document's encoding does not."""
        if self._encoded is None:
            return
        try:
            deletes = bool(delete_set_of(update, state()))
        except ProtocolError:  # structs still pending (a follower): encoded afresh
            deletes = True
        if deletes:
            self._encoded = None
        else:
            self._encoded.committed(update)

    def _copy(self) -> EncodedDocument:
        if self._encoded is None:
            self._encoded = EncodedDocument(self.document.doc.get_update(), self.chunk_bytes)
        return self._encoded

    def apply_replicated(self, stored: StoredDoc) -> None:
        """A follower: apply what the running node stored after ``last_update_id`` (a
        snapshot it squashed the log into, then updates) and send it on."""
        if stored.snapshot is not None:
            before = self.document.doc.get_state()
            self.document.apply(stored.snapshot)
            self._captured = []
            self.publish(self.document.doc.get_update(before))
        for update in stored.updates:
            self.document.apply(update)
            self._captured = []
            self.publish(update)
        self.last_update_id = max(self.last_update_id, stored.last_update_id)

    async def sync_answer(self, state_vector: bytes) -> list[bytes]:
        """The frames answering a client's step 1: what it lacks, in chunks of at most
        about ``chunk_bytes``, the sync step 2 last (``EncodedDocument.answer``;
        ``ProtocolError`` for a state vector that does not decode). From an encoded copy
        kept as the session's is, what it holds whole cut in a thread (``ThreadCuts``):
        the document was encoded and cut on the loop at every answer, and a long
        thread's held every socket of the node as often as its sockets synced."""
        return await self._cuts.answer(self._copy, state_vector)

    def is_noop(self, update: bytes) -> bool:
        return self.writes.is_noop(self.document.doc, update)


class _Read:
    """A read of a thread's log outside the writer lock, ``stale`` once the log changed
    after it began (registered under the lock: no write was under way then)."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


class ThreadDocs:
    """The documents of one room's side-threads: those its sockets hold, and the writes."""

    room: BackReference[SessionRoom] = BackReference()  # the room holds this part

    def __init__(self, room: SessionRoom) -> None:
        self.room = room
        self.live: dict[str, LiveThreadDoc] = {}
        self._reads: dict[str, list[_Read]] = {}  # by thread: ``open``'s, under way
        # By thread: the one read of its log under way for sockets opening (``open``).
        self._opening: dict[str, asyncio.Future[LiveThreadDoc]] = {}

    @property
    def _writer(self) -> DocumentWriter:
        """The session document's writer: its lock, fence and state hold here too."""
        return self.room.writer.document

    def _live(self, thread_id: str, stored: StoredDoc) -> LiveThreadDoc:
        settings = self.room.settings
        limit, chunk_bytes = settings.max_delete_ranges_per_update, settings.sync_chunk_bytes
        return LiveThreadDoc(thread_id, stored, self.room.sockets.send_thread, limit, chunk_bytes)

    async def open(
        self,
        thread_id: str,
        committed: Callable[[], SideThread | None],
        running: Callable[[], Sequence[ThreadTurn]],
        writes: bool,
    ) -> LiveThreadDoc:
        """The document of thread ``thread_id`` for a socket, read from its log if not
        held here. Where the session runs (``writes``) the thread as ``committed`` and the
        turns of its run in flight (``running``) are shown and stored under the writer
        lock, so they agree with the log (a thread stored before its log was kept is
        shown whole); the log is read outside it (``_read``), once for all the sockets
        opening at the same time. A follower serves the log as it is (``Unavailable``
        while there is none). ``NotFound`` if the thread was deleted meanwhile."""
        live = self.live.get(thread_id)
        if live is not None and (not writes or self._current(thread_id, committed)):
            return live
        room = self.room
        if not writes:
            stored = await room.store.load_thread_doc(room.session_id, thread_id)
            if stored.snapshot is None and not stored.updates:
                raise Unavailable("this side-thread's document is not stored yet; reconnect")
            return self.live.setdefault(thread_id, self._live(thread_id, stored))
        # One open under way per thread, its answer shared: each open queued on the writer
        # lock on its own, sockets opened and closed in a loop (their handlers wait on)
        # made a queue of hundreds that every write of the session waited behind (review).
        opening = self._opening.get(thread_id)
        if opening is None:
            opening = asyncio.ensure_future(self._open(thread_id, committed, running))
            self._opening[thread_id] = opening
            opening.add_done_callback(partial(self._opened, thread_id))
        return await asyncio.shield(opening)  # a socket that went away leaves it to others

    def _opened(self, thread_id: str, opening: asyncio.Future[LiveThreadDoc]) -> None:
        if self._opening.get(thread_id) is opening:
            del self._opening[thread_id]
        if not opening.cancelled():
            opening.exception()  # told to whoever waits; none may be left

    async def _open(
        self,
        thread_id: str,
        committed: Callable[[], SideThread | None],
        running: Callable[[], Sequence[ThreadTurn]],
    ) -> LiveThreadDoc:
        """``open`` where the session runs."""
        async with self._writer.lock:
            live = self.live.get(thread_id)
            if live is not None:  # held (for a run): shown again, judged now; no read
                if not self._current(thread_id, committed):
                    live = await self._show_now(thread_id, committed, running, live)
                    self.live[thread_id] = live
                return live
            self._writer.require_usable()
            read = _Read()
            self._reads.setdefault(thread_id, []).append(read)
        try:
            return await self._read(thread_id, read, committed, running)
        finally:
            self._unread(thread_id, read)

    async def _read(
        self,
        thread_id: str,
        read: _Read,
        committed: Callable[[], SideThread | None],
        running: Callable[[], Sequence[ThreadTurn]],
    ) -> LiveThreadDoc:
        """``open``'s read of the log, outside the writer lock: a store read held under it
        kept the session's writes waiting, and one member's sockets opened in a loop had
        them refused (review: half of another member's messages ``unavailable``). ``read``
        is marked stale by any change to the thread's log meanwhile (``_changed``): then
        the log is read again under the lock, as nothing may build on an old copy."""
        room = self.room
        stored = await room.store.load_thread_doc(room.session_id, thread_id)
        async with self._writer.lock:
            live = self.live.get(thread_id)
            if live is not None and self._current(thread_id, committed):
                return live
            if live is None and not read.stale:
                live = self._live(thread_id, stored)
            live = await self._show_now(thread_id, committed, running, live)
            self.live[thread_id] = live
            return live

    def _unread(self, thread_id: str, read: _Read) -> None:
        reads = self._reads.get(thread_id)
        if reads is not None:
            reads.remove(read)
            if not reads:
                del self._reads[thread_id]

    def _changed(self, thread_id: str) -> None:
        """The thread's log changes (under the writer lock): a copy read before is old."""
        for read in self._reads.get(thread_id, ()):
            read.stale = True

    async def rejudge(
        self,
        thread_id: str,
        committed: Callable[[], SideThread | None],
        running: Callable[[], Sequence[ThreadTurn]],
    ) -> None:
        """Where the session runs, after its owner's grants changed: the thread's document
        shown as they may read it now, stored, and sent to its sockets, so a follower that
        serves the log and a socket opening later get the placeholders, not the text."""
        fence = self._writer.fence
        if fence is not None and not fence.holds():
            return  # a follower: the node that runs the session rewrites the log
        async with self._writer.lock:
            await self._show_now(thread_id, committed, running, self.live.get(thread_id))

    async def _show_now(
        self,
        thread_id: str,
        committed: Callable[[], SideThread | None],
        running: Callable[[], Sequence[ThreadTurn]],
        live: LiveThreadDoc | None,
    ) -> LiveThreadDoc:
        """Under the writer lock: ``live`` (else read from the log) showing the thread as
        ``committed`` and the turns of its run in flight, judged for its owner now (text
        they were denied since is a placeholder, and the deleted text is not in the state
        any socket is sent from now on); the change stored, then sent. ``NotFound`` if the
        thread was deleted meanwhile."""
        room = self.room
        self._writer.require_usable()
        if live is None:  # else held for its run, or for sockets: shown as it is now
            stored = await room.store.load_thread_doc(room.session_id, thread_id)
            live = self._live(thread_id, stored)
        thread = committed()
        if thread is None:
            raise NotFound("side-thread deleted")
        shown = room.side_threads.read_by(thread, thread.owner)
        update = live.capture(lambda document: show_all(document, shown, running()))
        if update:
            try:
                async with room.store.transaction("side-thread document") as tx:
                    if self._writer.fence is not None:
                        await self._writer.fence.check(tx)
                    await self._append(tx, live, thread_id, update)
            except BaseException:
                # Not stored: a document held for a run must not keep the change
                # (later updates would build on items the log never got).
                self.live[thread_id] = live
                self._lost(live)
                raise
        # To the sockets holding it, if any; keeps what judges clients current.
        live.publish(update)
        return live

    def _current(self, thread_id: str, committed: Callable[[], SideThread | None]) -> bool:
        """A document its sockets hold is kept current by every change, so a socket
        opening joins it as it is, unless a turn in it is one its owner may no longer
        read (then it is shown again, judged now, as one read from the log is)."""
        if not self._watched(thread_id):
            return False
        thread = committed()
        return thread is None or self.room.side_threads.read_by(thread, thread.owner) == thread

    def forget(self) -> None:
        """The room was loaded again (a restart of its runner, a takeover): documents held,
        and logs being read, may be behind their logs; their sockets resync."""
        for thread_id in list(self.live):
            self._lost(self.live[thread_id])
        for thread_id in self._reads:
            self._changed(thread_id)

    def _watched(self, thread_id: str) -> bool:
        return bool(self.room.sockets.thread_connections.get(thread_id))

    def release(self, thread_id: str, *, writes: bool) -> None:
        """A socket of the thread closed: once none is left its document is read from the
        log next time. Where the session runs (``writes``) it is held until its run in
        flight, if any, is stored; a follower holds it for its sockets alone (its copy of
        the thread's rows is as old as its last socket's opening)."""
        if self._watched(thread_id):
            return
        thread = self.room.side_threads.threads.get(thread_id)
        if not writes or thread is None or not thread.running:
            self.live.pop(thread_id, None)

    async def write(self, write: Write, threads: dict[str, SideThread], effects: Effects) -> None:
        """In the room's transaction: bring the documents of the threads ``effects``
        changes to them as ``threads`` (the committed side-threads) will be, and store
        each update; sent to the sockets after the commit."""
        if isinstance(effects.thread, DeleteThread):
            self._published(write.tx)  # followers close their sockets of it
        shown = {t.id for t in effects.thread_turns} | {s.turn_id for s in effects.thread_settle}
        changed = threads_changed(effects)
        after = {i: threads[i] for i in changed if i in threads}  # those alone, not a copy of all
        apply_to_threads(after, effects)
        for thread_id in sorted(changed):
            thread = after.get(thread_id)
            if thread is not None:
                await self._write_one(write, thread, shown)

    async def _write_one(self, write: Write, thread: SideThread, shown: set[str]) -> None:
        tx, room = write.tx, self.room
        thread = room.side_threads.read_by(thread, thread.owner)  # as its owner may read it
        live = self.live.get(thread.id)
        fresh = False
        if live is None:  # nobody watches: its document as the log holds it, for this change
            stored = await tx.load_thread_doc(room.session_id, thread.id)
            live = self._live(thread.id, stored)
            fresh = stored.snapshot is None and not stored.updates

        def mutate(document: ThreadDocument) -> None:
            document.show_thread(thread)
            for turn in thread.turns:
                if fresh or turn.id in shown:
                    document.show_turn(turn)
            if not thread.running and thread.id not in room.side_threads.active:
                document.drop_unstored({t.id for t in thread.turns})

        held = live
        write.undone.append(lambda: self._lost(held))
        update = live.capture(mutate)
        if update:
            await self._append(tx, live, thread.id, update)
            write.after_commit.append(lambda: held.publish(update))
        write.after_commit.append(partial(self._hold, held, thread.running))

    def _hold(self, live: LiveThreadDoc, running: bool) -> None:
        """After a commit: a thread's document stays in memory while a socket syncs it
        or a run answers in it (its end is stored on it), and no longer."""
        if running or self._watched(live.thread_id):
            self.live.setdefault(live.thread_id, live)
        elif self.live.get(live.thread_id) is live:
            del self.live[live.thread_id]

    async def stream(self, thread_id: str, record: Callable[[], None], mutate: Mutate) -> None:
        """A step of a run in flight: ``record`` it, then show it (``mutate``), stored
        through the group commit before it is sent. Under the writer lock, so a document
        opened meanwhile shows the step once. Stored whether a socket watches or not (a
        socket on a following node reads the log; and a run a crash cuts off is audited
        and counted against the quotas from what it shows, ``SessionWriter.recover``:
        stored only where watched, one nobody watched was counted against none)."""
        room = self.room
        async with self._writer.lock:
            record()
            live = self.live.get(thread_id)
            if live is None or self._writer.failed is not None:
                return  # lost (a store failed): the reply's row holds it all in the end
            update = live.capture(mutate)
            if not update:
                return
            fence = self._writer.fence
            self._changed(thread_id)
            stored = room.store.group.submit(
                room.session_id, update, fence, thread_id=thread_id, on_stored=live.sent(update)
            )
            cancelled = await settled(stored)
            try:
                update_id = stored.result()
            except Exception:
                log.warning("a side-thread update was not stored", exc_info=True)
                self._lost(live)
            else:
                if self._due(live):
                    await self._snapshot_after(live, update_id)
            if cancelled:
                raise asyncio.CancelledError

    async def _append(
        self, tx: SessionTx, live: LiveThreadDoc, thread_id: str, update: bytes
    ) -> None:
        self._changed(thread_id)
        row = (self.room.session_id, thread_id, update)
        (update_id,) = await tx.append_thread_updates([row])
        live.last_update_id = update_id
        self._published(tx)
        if self._due(live):
            await self._snapshot(tx, live, update_id)

    def _published(self, tx: SessionTx) -> None:
        fence = self._writer.fence
        if fence is not None:
            fence.published(tx)

    def _due(self, live: LiveThreadDoc) -> bool:
        live.since_snapshot += 1
        return live.since_snapshot >= self.room.settings.snapshot_every_updates

    async def _snapshot(self, tx: SessionTx, live: LiveThreadDoc, update_id: int) -> None:
        data = live.document.doc.get_update()
        session_id, now = self.room.session_id, self.room.now_ms()
        await tx.write_thread_snapshot(session_id, live.thread_id, data, update_id, now)
        live.since_snapshot = 0

    async def _snapshot_after(self, live: LiveThreadDoc, update_id: int) -> None:
        """Squash after a group-committed update (stored and sent already: a failure only
        leaves the log longer)."""
        try:
            async with self.room.store.transaction("side-thread snapshot") as tx:
                if self._writer.fence is not None:
                    await self._writer.fence.check(tx)
                await self._snapshot(tx, live, update_id)
        except Exception:
            log.warning("side-thread snapshot failed", exc_info=True)

    def _lost(self, live: LiveThreadDoc) -> None:
        """``live`` holds a change that was not stored: drop it; its sockets resync."""
        if self.live.get(live.thread_id) is live:
            del self.live[live.thread_id]
            self.room.sockets.close_thread(live.thread_id, CloseCode.TRY_AGAIN, RELOAD)
