"""A loaded session: its document, its queue, its sockets, and the one writer of both.

Every change to the document happens inside ``_writing()``: under the room's lock, in one
database transaction that stores the CRDT update (and the relational rows beside it), and
only after the commit is the update broadcast. If the commit fails, the in-memory document
is reloaded from the store, so nothing un-stored is ever shown to anyone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pycrdt import Doc, TransactionEvent, merge_updates

from authz.roles import Capability, Role, may
from server.connection import Connection
from server.metrics import Metrics
from server.settings import Settings
from server.store import EntryRow, Store, StoreTx
from session.commands import (
    Limits,
    check_fact,
)
from session.context import BuiltContext, ContextBuilder, ContextSettings, WithheldReason
from session.errors import Forbidden, NotFound, TooLarge, Unavailable
from session.lifecycle import PromptStatus, ReplyStatus
from session.model import Usage
from session.presence import Presence
from session.queue import OrderingQueue, PendingPrompt, Policy, QueueLimits, Run
from session.ratelimit import Rate, TokenBucket
from session.schema import MESSAGE_STATUS, EntryKind, QueuedItem, SessionDocument
from session.summary import Summary, SummaryPlan, plan_extension
from session.yprotocol import (
    DeleteSet,
    SyncType,
    delete_set_of,
    encode_sync,
    is_noop_update,
    normalise_delete_set,
)

log = logging.getLogger("parley.room")

CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TRY_AGAIN = 1013
RESTART_REASON = "interrupted: the server stopped while this prompt ran"


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Write:
    tx: StoreTx
    after_commit: list[Callable[[], object]] = field(default_factory=list)
    # A changed copy of the queue: its plan goes into the document, and it replaces the
    # room's queue when (and only when) the write commits.
    queue: OrderingQueue | None = None


class WriteFence(Protocol):
    """Cluster mode: may this node write the session? Checked first in every write
    transaction (raise to refuse it); told each update it stores, in the same transaction."""

    async def check(self, tx: StoreTx) -> None: ...

    async def published(self, tx: StoreTx, update_id: int) -> None: ...


class SessionRoom:
    def __init__(
        self,
        session_id: str,
        *,
        store: Store,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.draining = False
        self.session_id = session_id
        self.store = store
        self.settings = settings
        self.clock = clock
        self.limits = Limits(
            max_text_chars=settings.max_prompt_chars, max_frame_chars=settings.max_ws_message_bytes
        )
        self.queue = OrderingQueue(
            QueueLimits(settings.max_pending_per_user, settings.max_pending_per_session)
        )
        self.members: dict[str, Role] = {}
        self.connections: set[Connection] = set()
        self.doc = SessionDocument(Doc())
        self.presence = Presence(settings.max_awareness_state_bytes)
        self.refused_writes = 0
        self.active_run: ActiveRun | None = None
        self._user_buckets: dict[str, TokenBucket] = {}
        self.wakeup = asyncio.Event()
        self.closed = False
        self.last_active = clock()
        self._lock = asyncio.Lock()
        self._captured: list[bytes] | None = None
        self._since_snapshot = 0
        self._deletes: DeleteSet | None = None
        self._subscription: Any = None
        self._builder = ContextBuilder(self.context_settings())
        self.summaries: list[Summary] = []
        self.fence: WriteFence | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- loading --------------------------------------------------------------------------

    async def load(self, title: str, policy: Policy) -> None:
        """Restore the document from its update log and the queue from the entries table."""
        await self._load_doc()
        self.summaries = await self.store.load_summaries(self.session_id)
        self.members = {
            m.user_id: Role(m.role) for m in await self.store.list_members(self.session_id)
        }
        if "session_id" not in self.doc.meta:
            async with self._writing():
                self.doc.init_meta(self.session_id, title, policy.value)
        waiting = await self.store.entries_with_status(
            self.session_id, [PromptStatus.QUEUED.value, PromptStatus.RUNNING.value]
        )
        self.queue = OrderingQueue(
            self.queue.limits,
            [
                PendingPrompt(row.id, row.seq, row.author)
                for row in waiting
                if row.status == PromptStatus.QUEUED.value
            ],
            policy,
        )
        cut_off = tuple(
            PendingPrompt(row.id, row.seq, row.author)
            for row in waiting
            if row.status == PromptStatus.RUNNING.value
        )
        if cut_off:
            # The process died mid-reply: never re-run (it would answer twice), mark it.
            await self.finish_run(
                Run(cut_off),
                PromptStatus.FAILED,
                RESTART_REASON,
                reply_status=ReplyStatus.INTERRUPTED,
            )

    async def _load_doc(self) -> None:
        stored = await self.store.load_doc(self.session_id)
        doc: Doc[Any] = Doc()
        if stored.snapshot is not None:
            doc.apply_update(stored.snapshot)
        for update in stored.updates:
            doc.apply_update(update)
        if self._subscription is not None:
            self.doc.doc.unobserve(self._subscription)
        self.doc = SessionDocument(doc)
        self._subscription = doc.observe(self._capture)
        self._since_snapshot = stored.updates_since_snapshot
        self._deletes = None

    async def apply_replicated(self, snapshot: bytes | None, updates: Sequence[bytes]) -> None:
        """Cluster mode, read replica: apply what the running node committed (a snapshot it
        squashed the log into, then updates) and pass it on to this node's sockets."""
        frames: list[bytes] = []
        async with self._lock:
            self._captured = []
            try:
                if snapshot is not None:
                    before = self.doc.doc.get_state()
                    self.doc.doc.apply_update(snapshot)
                    frames.append(self.doc.doc.get_update(before))
                for update in updates:
                    self.doc.doc.apply_update(update)
                    frames.append(update)
            finally:
                self._captured = None
            self._deletes = None
        for frame in frames:
            self.broadcast(encode_sync(SyncType.UPDATE, frame))
        if frames:
            self.last_active = self.clock()

    def _capture(self, event: TransactionEvent) -> None:
        if self._captured is None:
            raise RuntimeError("the session document changed outside a write")
        self._captured.append(event.update)

    # -- the one writer -------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[_Write]:
        """Serialize a change: store its rows and CRDT update, commit, then broadcast."""
        async with self._lock:
            captured: list[bytes] = []
            self._captured = captured
            try:
                async with self.store.transaction() as tx:
                    if self.fence is not None:
                        await self.fence.check(tx)
                    write = _Write(tx)
                    yield write
                    if write.queue is not None:
                        self.doc.set_queue(self._planned(write.queue))
                    update = b""
                    if captured:
                        update = captured[0] if len(captured) == 1 else merge_updates(*captured)
                        await self._persist_update(tx, update)
            except BaseException:
                self._captured = None
                if captured:
                    # The change never reached the store: forget it, so nobody sees it.
                    try:
                        await self._load_doc()
                    except Exception:
                        self.fail("the database is unavailable; reconnect to resync")
                raise
            self._captured = None
            if write.queue is not None:
                self.queue = write.queue
            for callback in write.after_commit:
                callback()
            if update:
                self._deletes = None
                self.broadcast(encode_sync(SyncType.UPDATE, update))
        self.last_active = self.clock()

    async def _persist_update(self, tx: StoreTx, update: bytes) -> None:
        update_id = await tx.append_update(self.session_id, update)
        if self.fence is not None:
            await self.fence.published(tx, update_id)
        self._since_snapshot += 1
        if self._since_snapshot >= self.settings.snapshot_every_updates:
            await tx.write_snapshot(
                self.session_id, self.doc.doc.get_update(), update_id, self.now_ms()
            )
            self._since_snapshot = 0

    def broadcast(self, message: bytes) -> None:
        for connection in list(self.connections):
            connection.send(message)

    def user_bucket(self, user_id: str) -> TokenBucket:
        """One command budget per user across all their sockets in this session."""
        bucket = self._user_buckets.get(user_id)
        if bucket is None:
            rate = Rate(self.settings.user_commands_per_second, 2 * self.settings.commands_burst)
            bucket = self._user_buckets[user_id] = TokenBucket(rate, self.clock())
        return bucket

    def role_of(self, user_id: str) -> Role:
        role = self.members.get(user_id)
        if role is None:
            raise Forbidden("you are not a member of this session")
        return role

    # -- queue transitions (each one write; the queue is swapped in on commit) -------------

    def _staged_queue(self, write: _Write) -> OrderingQueue:
        """The copy of the queue that ``write`` changes (see ``_Write.queue``)."""
        if write.queue is None:
            write.queue = self.queue.clone()
        return write.queue

    async def _finish(
        self,
        write: _Write,
        prompt_ids: Sequence[str],
        status: PromptStatus,
        reason: str | None,
        reply_status: ReplyStatus | None = None,
    ) -> None:
        for prompt_id in prompt_ids:
            await write.tx.set_entry_status(
                prompt_id, status.value, reason=reason, finished_at=self.now_ms()
            )
        self.doc.finish_prompts(prompt_ids, status, reason, reply_status=reply_status)

    def _planned(self, queue: OrderingQueue) -> list[QueuedItem]:
        return [QueuedItem(p.id, p.seq, p.author) for p in queue.pending()]

    async def add_prompt(self, user_id: str, command_id: str, text: str) -> tuple[int, str]:
        """Admit, store and queue a prompt; returns its sequence number and id."""
        entry_id = new_id()
        if self.draining:
            raise Unavailable("the server is shutting down; send it again after reconnecting")
        async with self._writing() as write:
            queue = self._staged_queue(write)
            queue.admit(user_id)
            seq = await self.store_entry(
                write.tx,
                entry_id,
                EntryKind.PROMPT,
                user_id,
                command_id,
                text,
                PromptStatus.QUEUED.value,
            )
            self.doc.add_prompt(
                id=entry_id, seq=seq, author=user_id, text=text, created_at=self.now_ms()
            )
            pushed = queue.push(PendingPrompt(entry_id, seq, user_id))
            if pushed.superseded:
                reason = f"interrupted: superseded by a newer prompt from {user_id}"
                ids = [p.id for p in pushed.superseded]
                await self._finish(write, ids, PromptStatus.INTERRUPTED, reason)
        if pushed.interrupt_running and self.active_run is not None:
            self.active_run.stop(
                PromptStatus.INTERRUPTED, f"interrupted by a newer prompt from {user_id}"
            )
        self.wakeup.set()
        return seq, entry_id

    async def add_message(self, user_id: str, command_id: str, text: str) -> tuple[int, str]:
        entry_id = new_id()
        async with self._writing() as write:
            seq = await self.store_entry(
                write.tx, entry_id, EntryKind.MESSAGE, user_id, command_id, text, MESSAGE_STATUS
            )
            self.doc.add_message(
                id=entry_id, seq=seq, author=user_id, text=text, created_at=self.now_ms()
            )
        return seq, entry_id

    async def store_entry(
        self,
        tx: StoreTx,
        entry_id: str,
        kind: EntryKind,
        author: str,
        command_id: str,
        text: str,
        status: str,
    ) -> int:
        seq = await tx.next_seq(self.session_id)
        await tx.insert_entry(
            EntryRow(
                id=entry_id,
                session_id=self.session_id,
                seq=seq,
                kind=kind.value,
                author=author,
                command_id=command_id,
                text=text,
                status=status,
                reason=None,
                reply_id=None,
                created_at=self.now_ms(),
            )
        )
        return seq

    async def cancel_waiting(self, prompt_id: str, reason: str) -> bool:
        """Cancel a prompt that has not started; False if it is no longer waiting."""
        async with self._writing() as write:
            if not self.queue.is_pending(prompt_id):
                return False
            self._staged_queue(write).remove(prompt_id)
            await self._finish(write, [prompt_id], PromptStatus.CANCELLED, reason)
        return True

    async def set_policy(self, policy: Policy) -> None:
        async with self._writing() as write:
            self._staged_queue(write).set_policy(policy)
            await write.tx.set_policy(self.session_id, policy.value)
            self.doc.set_policy(policy.value)
        self.wakeup.set()

    async def start_run(self, run: Run, reply_author: str) -> str | None:
        """Mark a run's prompts running and open their reply; None if the run may not start.

        A prompt whose author may no longer prompt fails with ``forbidden`` instead, and the
        caller asks the queue again.
        """
        reply_id = new_id()
        async with self._writing() as write:
            if self.queue.next() != run:
                return None
            queue = self._staged_queue(write)
            revoked = [p.id for p in run.prompts if not self._may_prompt(p.author)]
            if revoked:
                reason = "forbidden: the author may no longer prompt in this session"
                for prompt_id in revoked:
                    queue.remove(prompt_id)
                await self._finish(write, revoked, PromptStatus.FAILED, reason)
                return None
            queue.start(run)
            now = self.now_ms()
            for prompt in run.prompts:
                await write.tx.set_entry_status(
                    prompt.id, PromptStatus.RUNNING.value, reply_id=reply_id, started_at=now
                )
            self.doc.start_reply(
                prompt_ids=run.ids, reply_id=reply_id, author=reply_author, created_at=now
            )
        return reply_id

    async def set_pinned(self, entry_id: str, pinned: bool) -> None:
        if not self.doc.has_entry(entry_id):
            raise NotFound(f"no entry {entry_id!r} in this session")
        async with self._writing():
            if not pinned:
                self.doc.unpin(entry_id)
            elif entry_id not in self.doc.pinned():
                if len(self.doc.pins) >= self.settings.max_pins:
                    raise TooLarge(f"at most {self.settings.max_pins} pins per session")
                self.doc.pin(entry_id)

    async def set_fact(self, key: str, value: str | None) -> None:
        check_fact(key, value)
        async with self._writing():
            adding = value is not None and key not in self.doc.facts
            if adding and len(self.doc.facts) >= self.settings.max_facts:
                raise TooLarge(f"at most {self.settings.max_facts} facts per session")
            self.doc.set_fact(key, value)

    def context_settings(self) -> ContextSettings:
        return ContextSettings(
            window_tokens=self.settings.context_window_tokens,
            reserve_output_tokens=self.settings.max_output_tokens,
            near_duplicate_threshold=self.settings.near_duplicate_threshold,
            min_block_lines=self.settings.min_block_lines,
        )

    def context_for(
        self,
        prompt_ids: Sequence[str],
        *,
        withheld: WithheldReason | None = None,
        private_text: Mapping[str, str] | None = None,
        scope_key: str = "members",
    ) -> BuiltContext:
        """What a model call answering ``prompt_ids`` is given (none: the history alone).

        The room keeps its builder, so each build folds only what changed since the last."""
        settings = self.context_settings()
        if self._builder.settings != settings:
            self._builder = ContextBuilder(settings)
        started = time.perf_counter()
        built = self._builder.build(
            session_id=self.session_id,
            entries=self.doc.entries(),
            prompt_ids=prompt_ids,
            facts=self.doc.fact_map(),
            pins=self.doc.pinned(),
            max_output_tokens=self.settings.max_output_tokens,
            withheld=withheld,
            private_text=private_text,
            scope_key=scope_key,
            summaries=self.summaries,
        )
        self.metrics.context_build.observe(time.perf_counter() - started)
        return built

    def summary_plan(self) -> SummaryPlan | None:
        """The turns to summarise next, from what every member may read; None: nothing yet.

        Every entry in the shared document is readable by every member today, so the shared
        scope is the whole history."""
        if not self.settings.summaries:
            return None
        built = self.context_for((), scope_key="summary")
        previous = self.summaries[-1] if self.summaries else None
        return plan_extension(
            built.dropped,
            previous,
            min_tokens=self.settings.summary_min_tokens,
            max_input_tokens=max(built.budget // 2, 1),
        )

    async def add_summary(
        self, summary: Summary, added: frozenset[str], model: str, usage: Usage | None
    ) -> None:
        await self.store.add_summary(
            self.session_id,
            summary,
            added=added,
            model=model,
            input_tokens=0 if usage is None else usage.input_tokens,
            output_tokens=0 if usage is None else usage.output_tokens,
            now=self.now_ms(),
        )
        self.summaries.append(summary)

    def _may_prompt(self, user_id: str) -> bool:
        role = self.members.get(user_id)
        return role is not None and may(role, Capability.PROMPT)

    async def append_reply(self, reply_id: str, text: str) -> None:
        async with self._writing():
            self.doc.append_reply_text(reply_id, text)

    async def finish_run(
        self,
        run: Run,
        status: PromptStatus,
        reason: str | None = None,
        *,
        reply_status: ReplyStatus | None = None,
    ) -> None:
        async with self._writing() as write:
            queue = self._staged_queue(write)
            if queue.running is not None and queue.running.ids == run.ids:
                queue.finish(run.ids)
            await self._finish(write, run.ids, status, reason, reply_status)

    # -- sync and awareness ---------------------------------------------------------------

    async def sync_step2_for(self, state_vector: bytes) -> bytes:
        """What a client lacks, from committed state only (taken under the write lock)."""
        async with self._lock:
            return encode_sync(SyncType.STEP2, self.doc.doc.get_update(state_vector))

    def is_noop(self, update: bytes) -> bool:
        """True when a client update would change nothing (clients may not write)."""
        state = self.doc.doc.get_state()
        if self._deletes is None:
            full = self.doc.doc.get_update()
            self._deletes = normalise_delete_set(delete_set_of(full, state))
        return is_noop_update(update, state, self._deletes)

    # -- membership -----------------------------------------------------------------------

    def set_member(self, user_id: str, role: Role | None) -> None:
        """Apply a membership change made over REST to live sockets."""
        if role is None:
            self.members.pop(user_id, None)
            for connection in list(self.connections):
                if connection.user_id == user_id:
                    connection.close(CLOSE_FORBIDDEN, "membership revoked")
            return
        self.members[user_id] = role
        for connection in self.connections:
            if connection.user_id == user_id:
                connection.role = role

    def fail(self, reason: str) -> None:
        """Give the room up (its memory may hold an un-stored change): sockets are closed
        with 1013 so clients reconnect, and the next use reloads it from the store."""
        self.closed = True
        self.wakeup.set()
        for connection in list(self.connections):
            connection.close(CLOSE_TRY_AGAIN, reason)

    def is_idle(self) -> bool:
        return not self.connections and len(self.queue) == 0 and self.active_run is None


@dataclass(eq=False)
class ActiveRun:
    """The run in flight, and the handle to stop it."""

    run: Run
    reply_id: str
    task: asyncio.Task[Usage | None] | None = None
    stopped: tuple[PromptStatus, str, ReplyStatus | None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(
        self, status: PromptStatus, reason: str, *, reply_status: ReplyStatus | None = None
    ) -> None:
        """Stop the model call (its stream is closed); the runner marks the reply."""
        if self.stopped is None:
            self.stopped = (status, reason, reply_status)
            if self.task is not None:
                self.task.cancel()

    async def wait(self, wait_s: float = 5.0) -> None:
        try:
            async with asyncio.timeout(wait_s):
                await self.finished.wait()
        except TimeoutError:
            raise Unavailable("the run did not stop in time; try again") from None
