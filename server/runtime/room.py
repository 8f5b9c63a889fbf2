"""A loaded session: its document, its queue, its sockets, and the one writer of both.

Every change to the document happens inside ``_writing()``: under the room's lock, in one
database transaction that stores the CRDT update (and the relational rows beside it), and
only after the commit is the update broadcast. If the commit fails, the in-memory document
is reloaded from the store, so nothing un-stored is ever shown to anyone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, TransactionEvent, merge_updates

from authz.policy import (
    Action,
    Decision,
    Do,
    Restriction,
    Subject,
    decide,
    everyone_may_read,
    may_read,
    restrict,
)
from authz.roles import Capability, Member, RoleTable
from authz.scope import ContextSeen, RunScope, scope_for_run, seen_in_context
from authz.tokens import ClientClaims, token_refusal
from server.http.retry_hint import retry_reason
from server.metrics import Metrics
from server.runtime.active_run import ActiveRun
from server.runtime.stream_feed import ReplyText, StreamFeed
from server.runtime.tools import tool_defs
from server.settings import Settings
from server.store.access import PrivateItem, TokenRow, ToolRow
from server.store.effect_writes import SequenceMoved, finish_prompts, write_effects
from server.store.group_commit import WriteFence
from server.store.port import SessionStore, SessionTx
from server.ws.awareness import AwarenessFanout
from server.ws.connection import Connection
from server.ws.direct_send import binary_frame
from session.closes import CloseCode
from session.commands import Limits
from session.context import BuiltContext, ContextBuilder, ContextSettings, WithheldReason
from session.core import (
    CommandEvent,
    DocumentLimits,
    Effects,
    SessionView,
    handle,
)
from session.encoded import EncodedDocument
from session.errors import Forbidden, NotFound, Unavailable
from session.events import RunStarted, SessionEvent
from session.lifecycle import PromptStatus
from session.model import Usage
from session.presence import Presence
from session.queue import OrderingQueue, PendingPrompt, Policy, QueueLimits, Run
from session.ratelimit import Budgets, Rate, Spend, TokenBucket
from session.reasons import Ending, ReasonCode
from session.schema import Entry, QueuedItem, SessionDocument
from session.summary import Summary, SummaryPlan, plan_extension
from session.yprotocol import (
    DeleteSet,
    ProtocolError,
    SyncType,
    add_deletes,
    delete_set_of,
    encode_sync,
    is_noop_update,
    normalise_delete_set,
)

log = logging.getLogger("parley.room")

# Why a run that was in flight when its room was last lost ended (see ``load``).
CUT_OFF_REASONS = {
    ReasonCode.SERVER_RESTART: "the server stopped while this prompt ran",
    ReasonCode.FAILOVER: "the node running this session stopped; another node took it over",
    ReasonCode.STORAGE_ERROR: "the database failed while this reply was written",
}
RESTRICTED_REPLY = (
    "\n[restricted: the rest of this reply draws on material not every member may read;"
    " members who may read it get it over REST]"
)
MAX_SHOWN_TOOL_CHARS = 2000


def _merged(updates: list[bytes]) -> bytes:
    """One update for what a write changed (empty if nothing)."""
    if not updates:
        return b""
    return updates[0] if len(updates) == 1 else merge_updates(*updates)


async def _settled(future: asyncio.Future[Any]) -> bool:
    """Wait until ``future`` is done, whatever happens; True if this task was cancelled
    meanwhile (the caller re-raises once it has dealt with the outcome)."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def member_rates(settings: Settings) -> dict[Spend, Rate]:
    """What one member may spend across all their sockets in a session."""
    return {
        Spend.COMMANDS: Rate(settings.user_commands_per_second, 2 * settings.commands_burst),
        Spend.DOCUMENT_BYTES: Rate(
            settings.document_write_bytes_per_s, settings.document_write_burst_bytes
        ),
        Spend.AWARENESS_BYTES: Rate(settings.awareness_bytes_per_s, settings.awareness_burst_bytes),
    }


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Write:
    tx: SessionTx
    after_commit: list[Callable[[], object]] = field(default_factory=list)
    # A changed copy of the queue: its plan goes into the document, and it replaces the
    # room's queue when (and only when) the write commits.
    queue: OrderingQueue | None = None
    # What the change means (``session.events``): stored in its transaction, numbered in
    # the session's order, so a write that rolls back leaves none.
    events: list[SessionEvent] = field(default_factory=list)
    # The text of each reply completed in this write, None when restricted: what a
    # ``reply.completed`` webhook may carry (the events themselves carry no content).
    replies: dict[str, str | None] = field(default_factory=dict)


class _Refused(Exception):
    """The core refused a command under the writer: nothing of the write is kept."""


class SessionRoom:
    def __init__(
        self,
        session_id: str,
        *,
        store: SessionStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        roles: Callable[[], RoleTable] = RoleTable,
        webhooks: Callable[[], list[ToolRow]] = list,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.roles = roles
        self.webhooks = webhooks
        # Full text behind the placeholders of the shared document, with its readers.
        self.private: dict[str, PrivateItem] = {}
        self.restricted_replies = "private"
        self.access = store.access
        self.draining = False
        self.session_id = session_id
        self.store = store
        self.settings = settings
        self.clock = clock
        self.limits = Limits(
            max_text_chars=settings.max_prompt_chars, max_frame_chars=settings.max_ws_message_bytes
        )
        self.queue = OrderingQueue(
            QueueLimits(
                settings.max_pending_per_user,
                settings.max_pending_per_session,
                settings.max_prompts_per_run,
            )
        )
        self.members: dict[str, Member] = {}
        # Revoked client tokens not expired yet, by id (the check of every socket and call).
        self.revoked_tokens: dict[str, TokenRow] = {}
        self.connections: set[Connection] = set()
        # What the event streams of this session read in memory (``server.http.sse``).
        self.feed = StreamFeed()
        self.doc = SessionDocument(Doc())
        self.presence = Presence(settings.max_awareness_state_bytes)
        self.awareness = AwarenessFanout(
            self.presence, self.broadcast, settings.awareness_flush_ms / 1000
        )
        self.refused_writes = 0
        self.last_seq = 0  # the highest sequence number stored (``load``)
        self.active_run: ActiveRun | None = None
        self.model: str | None = None  # the session's model; None: the server's default
        self.budgets = Budgets(member_rates(settings))
        self.wakeup = asyncio.Event()
        self.closed = False
        self.failed: str | None = None  # why the room was given up (``fail``)
        self._closing: asyncio.Task[None] | None = None
        # What a run found in flight on the next load was cut off by: a restart unless the
        # room was given up for another cause (``fail``) or taken over from another node.
        self.cut_off = ReasonCode.SERVER_RESTART
        self.last_active = clock()
        self._lock = asyncio.Lock()
        self._captured: list[bytes] | None = None
        self._since_snapshot = 0
        # Kept current by the room's own commits (``_committed``), so judging a client
        # frame never re-reads the whole document.
        self._deletes: DeleteSet | None = None
        self._encoded: EncodedDocument | None = None
        self._subscription: Any = None
        self._builder = ContextBuilder(self.context_settings())
        self.summaries: list[Summary] = []
        self.fence: WriteFence | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- loading --------------------------------------------------------------------------

    async def load(self, title: str, policy: Policy, restricted_replies: str = "private") -> None:
        """Restore the document from its update log and the queue from the entries table."""
        await self._load_doc()
        row = await self.store.get_session(self.session_id)
        self.last_seq = 0 if row is None else row.last_seq
        self.summaries = await self.store.load_summaries(self.session_id)
        self.restricted_replies = restricted_replies
        self.private = {i.entry_id: i for i in await self.access.private_items(self.session_id)}
        await self.refresh_membership()
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
            rotation=[item.author for item in self.doc.queued()],  # the plan clients saw
        )
        cut_off = tuple(
            PendingPrompt(row.id, row.seq, row.author)
            for row in waiting
            if row.status == PromptStatus.RUNNING.value
        )
        if cut_off:
            # The process died mid-reply: never re-run (it would answer twice), mark it.
            await self.finish_run(Run(cut_off), Ending(self.cut_off, CUT_OFF_REASONS[self.cut_off]))

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
        self._encoded = None

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
            for frame in frames:
                self._committed(frame)
            if frames:
                self.feed.committed(self.doc, None)  # the events are the runner's to count
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
            self._require_usable()
            captured = self._capturing()
            try:
                async with self.store.transaction() as tx:
                    if self.fence is not None:
                        await self.fence.check(tx)
                    write = _Write(tx)
                    yield write
                    if write.queue is not None:
                        self.doc.set_queue(self._planned(write.queue))
                    update = _merged(captured)
                    if update:
                        update_id = await tx.append_update(self.session_id, update)
                        await self._published(tx, update_id)
                    # Last: on PostgreSQL the event counter's row stays locked to the commit.
                    numbers = await tx.append_events(
                        self.session_id, self.now_ms(), write.events, write.replies
                    )
            except BaseException:
                await self._forget(captured)
                raise
            self._captured = None
            if write.queue is not None:
                self.queue = write.queue
            for callback in write.after_commit:
                callback()
            self._broadcast_update(update)
            self.feed.committed(self.doc, numbers)
        self.last_active = self.clock()

    @asynccontextmanager
    async def _appending(self) -> AsyncIterator[None]:
        """A change that is a document update and nothing else (streamed reply text): the
        promise of ``_writing`` (stored before it is broadcast), kept through the group
        commit, which stores it with other sessions' updates in one transaction."""
        async with self._lock:
            self._require_usable()
            captured = self._capturing()
            cancelled = False
            try:
                yield
                self._captured = None
                update = _merged(captured)
                stored = None
                if update:
                    stored = self.store.group.submit(self.session_id, update, self.fence)
                    # The round commits or fails whatever happens to this task: wait for it
                    # even if cancelled, so the document, the store and the sockets agree.
                    cancelled = await _settled(stored)
                    update_id = stored.result()
            except BaseException:
                await self._forget(captured)
                if cancelled:
                    raise asyncio.CancelledError from None
                raise
            self._broadcast_update(update)
            if update:
                self.feed.committed(self.doc, ())
            if stored is not None:
                if self._snapshot_due():
                    await self._snapshot_after(update_id)
                if cancelled:
                    raise asyncio.CancelledError
        self.last_active = self.clock()

    def _require_usable(self) -> None:
        """A failed room's document may hold a change that was never stored: a write
        made on it would depend on that change. The reloaded room takes writes."""
        if self.failed is not None:
            raise Unavailable(f"{self.failed}; nothing was stored")

    def _capturing(self) -> list[bytes]:
        """Start collecting the document's updates for the write under way."""
        captured: list[bytes] = []
        self._captured = captured
        return captured

    async def _forget(self, captured: list[bytes]) -> None:
        """A write failed: if it changed the document, reload the document from the store,
        so nobody sees what was never stored."""
        self._captured = None
        if captured:
            try:
                await self._load_doc()
            except Exception:
                self.fail(
                    "the database is unavailable; reconnect to resync",
                    retry_after_s=self.settings.db_retry_after_s,
                )

    def _broadcast_update(self, update: bytes) -> None:
        if update:
            self._committed(update)
            self.broadcast(encode_sync(SyncType.UPDATE, update))

    def _committed(self, update: bytes) -> None:
        """Keep what judges and answers client frames current with a committed update: a
        cost linear in the update, never in the document."""
        if self._deletes is not None:
            try:
                add_deletes(self._deletes, delete_set_of(update, self.doc.doc.get_state()))
            except ProtocolError:  # structs still pending (a replica): read it all again
                self._deletes = None
        if self._encoded is not None:
            self._encoded.committed(update)

    async def _published(self, tx: SessionTx, update_id: int) -> None:
        """An update was stored in ``tx``: tell the fence, and squash the log into a
        snapshot every ``snapshot_every_updates``."""
        if self.fence is not None:
            await self.fence.published(tx, update_id)
        if self._snapshot_due():
            await self._write_snapshot(tx, update_id)

    def _snapshot_due(self) -> bool:
        """Count a stored update; True when the log is due to be squashed."""
        self._since_snapshot += 1
        return self._since_snapshot >= self.settings.snapshot_every_updates

    async def _write_snapshot(self, tx: SessionTx, update_id: int) -> None:
        await tx.write_snapshot(
            self.session_id, self.doc.doc.get_update(), update_id, self.now_ms()
        )
        self._since_snapshot = 0

    async def _snapshot_after(self, update_id: int) -> None:
        """Squash the log after a group-committed update (already stored and sent, so a
        failure here only leaves the log longer: the next write tries again)."""
        try:
            async with self.store.transaction() as tx:
                if self.fence is not None:
                    await self.fence.check(tx)
                await self._write_snapshot(tx, update_id)
        except Exception:
            log.warning("snapshot failed", exc_info=True, extra={"session_id": self.session_id})

    def broadcast(self, message: bytes) -> None:
        frame = binary_frame(message)  # framed once for every socket
        for connection in list(self.connections):
            connection.send(message, frame)

    def user_bucket(self, user_id: str) -> TokenBucket:
        """One command budget per user across all their sockets in this session."""
        return self.budgets.bucket(user_id, Spend.COMMANDS, self.clock())

    def subject(self, user_id: str) -> Subject | None:
        """The member as of now (role table and grants read live), or None."""
        member = self.members.get(user_id)
        return None if member is None else Subject.of(member, self.roles())

    async def check(self, user_id: str, action: Action, what: str) -> Decision:
        """Decide ``action`` for ``user_id`` now; a refusal is audited and raised."""
        decision = decide(self.subject(user_id), action)
        if not decision.allowed:
            await self.audit("refused", user_id, {"action": what, "reason": decision.reason})
            decision.require()
        return decision

    async def audit(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Append an audit record now (outside any document change)."""
        await self.access.audit(self.session_id, self.now_ms(), kind, actor, data)

    # -- queue transitions (each one write; the queue is swapped in on commit) -------------

    def _staged_queue(self, write: _Write) -> OrderingQueue:
        """The copy of the queue that ``write`` changes (see ``_Write.queue``)."""
        if write.queue is None:
            write.queue = self.queue.clone()
        return write.queue

    async def _finish(
        self, write: _Write, prompt_ids: Sequence[str], ending: Ending | None
    ) -> None:
        ended = await finish_prompts(write.tx, self.doc, prompt_ids, ending, self.now_ms())
        write.events.extend(ended)

    def _planned(self, queue: OrderingQueue) -> list[QueuedItem]:
        return [QueuedItem(p.id, p.seq, p.author) for p in queue.pending()]

    async def execute(self, event: CommandEvent) -> Effects:
        """Carry out what ``event`` does (``session.core.rules``): judged at the door, and
        judged again under the writer on the state it changes (which may have moved while
        this waited), then stored, committed and broadcast; after the commit the run in
        flight is stopped or the runner woken. A refusal is audited and raised."""
        effects = handle(self.view(), event)
        if effects.error is None and effects.writes:
            try:
                async with self._writing() as write:
                    effects = handle(self.view(), event)
                    if effects.error is not None:
                        raise _Refused
                    write.events.extend(
                        await write_effects(
                            write.tx, self.doc, self.session_id, effects, event.now_ms, event.actor
                        )
                    )
                    write.queue = effects.queue
                    if effects.entry is not None:
                        seq = effects.entry.seq
                        write.after_commit.append(lambda: setattr(self, "last_seq", seq))
            except _Refused:
                pass
            except SequenceMoved as exc:
                self.last_seq = exc.last_seq
                raise
        if effects.error is not None:
            for record in effects.audit:
                await self.audit(record.kind, record.actor, dict(record.data))
            raise effects.error
        active = self.active_run
        if effects.stop is not None and active is not None:
            active.stop(effects.stop.ending)
            if effects.stop.wait:
                await active.wait()
        if effects.wake_runner:
            self.wakeup.set()
        return effects

    def view(self) -> SessionView:
        """The session as committed, as the core reads it."""
        active = self.active_run
        return SessionView(
            doc=self.doc,
            queue=self.queue,
            subject=self.subject,
            running=None if active is None else active.run,
            last_seq=self.last_seq,
            limits=DocumentLimits(self.settings.max_pins, self.settings.max_facts),
            accepting_prompts=not self.draining,
        )

    async def stop_prompts_of(self, user_id: str, ending: Ending) -> None:
        """Fail the user's waiting prompts and stop a running reply that answers one of
        theirs (membership removed or token revoked), without waiting for the run to end.
        Nothing to do on a node that does not run the session: its queue is empty and
        nothing runs there."""
        waiting = [p.id for p in self.queue.pending() if p.author == user_id]
        if waiting:
            async with self._writing() as write:
                queue = self._staged_queue(write)
                waiting = [p for p in waiting if queue.is_pending(p)]
                for prompt_id in waiting:
                    queue.remove(prompt_id)
                await self._finish(write, waiting, ending)
        active = self.active_run
        if active is not None and any(p.author == user_id for p in active.run.prompts):
            active.stop(ending)  # the runner settles it

    async def start_run(self, run: Run, reply_author: str) -> tuple[str, RunScope] | None:
        """Mark a run's prompts running and open their reply; None if the run may not start.

        The run's scope is computed here, from its issuers' grants at this moment. A prompt
        whose author may no longer prompt fails with ``forbidden`` instead (nothing reaches
        the model), and the caller asks the queue again.
        """
        reply_id = new_id()
        async with self._writing() as write:
            if self.queue.next() != run:
                return None
            queue = self._staged_queue(write)
            revoked = [p for p in run.prompts if not self._may_run(p.author)]
            if revoked:
                forbidden = Ending(
                    ReasonCode.FORBIDDEN, "the author may no longer prompt in this session"
                )
                for prompt in revoked:
                    queue.remove(prompt.id)
                    await self._audit_in(
                        write, "refused", prompt.author, {"action": "run", "prompt_id": prompt.id}
                    )
                await self._finish(write, [p.id for p in revoked], forbidden)
                return None
            scope = self.scope_for([p.author for p in run.prompts])
            queue.start(run)
            now = self.now_ms()
            for prompt in run.prompts:
                await write.tx.set_entry_status(
                    prompt.id, PromptStatus.RUNNING, reply_id=reply_id, started_at=now
                )
            self.doc.start_reply(
                prompt_ids=run.ids, reply_id=reply_id, author=reply_author, created_at=now
            )
            issuers = tuple(s.user_id for s in scope.issuers)
            write.events.append(RunStarted(reply_id, run.ids, issuers))
        return reply_id, scope

    def _may_run(self, user_id: str) -> bool:
        try:
            scope_for_run([(user_id, self.subject(user_id))], ())
        except Forbidden:
            return False
        return True

    def scope_for(self, user_ids: Sequence[str], *, preview: bool = False) -> RunScope:
        """The scope a run for ``user_ids`` would have now (``Forbidden`` if one of them may
        not prompt, unless ``preview``: then the scope of what they may read and use)."""
        issuers = [(u, self.subject(u)) for u in dict.fromkeys(user_ids)]
        if preview:
            subjects = tuple(s for _, s in issuers if s is not None)
            if not subjects:
                raise Forbidden("not a member of this session")
            return RunScope(subjects, ()).with_tools(tool_defs(self.webhooks()))
        return scope_for_run(issuers, tool_defs(self.webhooks()))

    def context_audit(self, built: BuiltContext) -> ContextSeen:
        return seen_in_context(built, {i: item.restriction for i, item in self.private.items()})

    def restriction_of(self, entry_id: str) -> Restriction:
        item = self.private.get(entry_id)
        return () if item is None else item.restriction

    def everyone_may_read(self, restriction: Restriction) -> bool:
        """True when every member who may read the session may read this too."""
        roles = self.roles()
        return everyone_may_read((Subject.of(m, roles) for m in self.members.values()), restriction)

    def context_settings(self) -> ContextSettings:
        spec = self.settings.model_spec(self.model)
        return ContextSettings(
            window_tokens=spec.context_window_tokens,
            reserve_output_tokens=spec.reserved_output_tokens,
            near_duplicate_threshold=self.settings.near_duplicate_threshold,
            min_block_lines=self.settings.min_block_lines,
        )

    def context_for(self, prompt_ids: Sequence[str], scope: RunScope | None = None) -> BuiltContext:
        """What a model call answering ``prompt_ids`` is given (none: the history alone),
        within ``scope``: what its issuers may not read is withheld, what they may read of
        the server-side text replaces its placeholder. No scope: what every member may read
        (the scope summaries are made in).

        The room keeps a builder, with one fold per set of readable private items, so each
        build folds only what changed since the last."""
        restrictions = {i: item.restriction for i, item in self.private.items()}
        texts = {i: item.text for i, item in self.private.items()}
        withheld: WithheldReason
        if scope is None:
            shared = {i: t for i, t in texts.items() if self.everyone_may_read(restrictions[i])}

            def not_shared(entry: Entry) -> str | None:
                if entry.id in restrictions and entry.id not in shared:
                    return "not every member may read it"
                return None

            withheld, readable, scope_key = not_shared, shared, "members"
        else:
            withheld, readable = scope.read_filter(restrictions, texts)
            scope_key = "readable:" + ",".join(sorted(readable))
        spec = self.settings.model_spec(self.model)
        settings = self.context_settings()
        if self._builder.settings != settings:
            self._builder = ContextBuilder(settings)
        started = time.perf_counter()
        built = self._builder.build(
            session_id=self.session_id,
            entries=self.doc.entries(),
            prompt_ids=prompt_ids,
            facts=self.doc.facts_with_authors(),
            pins=self.doc.pinned(),
            max_output_tokens=spec.reserved_output_tokens,
            withheld=withheld,
            private_text=readable,
            scope_key=scope_key,
            summaries=self.summaries,
            # A model taken out of the configuration fails the call (the registry says so)
            # rather than sending the session's text to another vendor.
            model=self.model or spec.name,
        )
        self.metrics.context_build.observe(time.perf_counter() - started)
        return built

    def summary_plan(self) -> SummaryPlan | None:
        """The turns to summarise next, from what every member may read; None: nothing yet.

        It extends the newest summary that is still made only of what every member may
        read (the one a history-alone build in that scope uses); when membership changed so
        that none is, a new chain starts."""
        if not self.settings.summaries:
            return None
        built = self.context_for(())
        return plan_extension(
            built.dropped,
            built.summary,
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

    async def append_reply(self, active: ActiveRun, text: str) -> None:
        """Stream reply text: into the shared document, or, once the reply draws on what
        not every member may read (policy ``private``), only into the server-side copy."""
        active.text.append(text)
        if active.private:
            return
        async with self._appending():
            self.doc.append_reply_text(active.reply_id, text)

    async def widen(self, active: ActiveRun, restriction: Restriction) -> None:
        """The run drew on something with ``restriction``: its reply inherits it; under
        ``private`` the rest of the reply leaves the shared document if not every member
        may read it."""
        active.restriction = restrict(active.restriction, restriction)
        if active.private or self.restricted_replies != "private":
            return
        if not self.everyone_may_read(active.restriction):
            active.private = True
            async with self._appending():
                self.doc.append_reply_text(active.reply_id, RESTRICTED_REPLY)

    async def add_tool_step(
        self, active: ActiveRun, *, tool: str, status: str, detail: str, restriction: Restriction
    ) -> str:
        """Store a tool step (full detail server-side) and show it in the document: in full
        when every member may read it, else as who ran which tool."""
        assert active.scope is not None
        entry_id = new_id()
        actor = ", ".join(s.user_id for s in active.scope.issuers)
        restriction = restrict(active.restriction, restriction)
        shown = f"{actor} ran {tool}: {status}"
        if self.everyone_may_read(restriction):
            shown += "\n" + detail[:MAX_SHOWN_TOOL_CHARS]
        else:
            shown += "\n[details restricted]"
        async with self._writing() as write:
            item = PrivateItem(entry_id, "tool", detail, restriction)
            await write.tx.insert_private(self.session_id, item, self.now_ms())
            self.doc.add_tool_step(
                id=entry_id,
                reply_id=active.reply_id,
                author=actor,
                tool=tool,
                status=status,
                text=shown,
                created_at=self.now_ms(),
            )
            write.after_commit.append(lambda: self._keep_private(item))
        return entry_id

    def _keep_private(self, item: PrivateItem) -> None:
        """Remember a stored private item and deliver it to the sockets of members who may
        read it (those that speak JSON; stock Yjs clients read it over REST)."""
        self.private[item.entry_id] = item
        frame = json.dumps(
            {"type": "restricted", "entry_id": item.entry_id, "kind": item.kind, "text": item.text}
        )
        for connection in list(self.connections):
            if may_read(self.subject(connection.user_id), item.restriction):
                connection.send_json(frame)

    async def _keep_reply(self, write: _Write, active: ActiveRun) -> None:
        """A reply that drew on restricted material: under ``private`` its full text is kept
        server-side with the readers it inherited; under ``shared`` an owner allowed it into
        the shared document, so it stays there for everyone and the sharing is audited."""
        if self.restricted_replies != "private":
            readers = [r.to_json() for r in active.restriction]
            await self._audit_in(
                write, "reply_shared", "policy", {"reply_id": active.reply_id, "drew_on": readers}
            )
            return
        text = "".join(active.text)
        item = PrivateItem(active.reply_id, "reply", text, active.restriction)
        await write.tx.insert_private(self.session_id, item, self.now_ms())
        write.after_commit.append(lambda: self._keep_private(item))

    async def _audit_in(self, write: _Write, kind: str, actor: str, data: dict[str, Any]) -> None:
        await write.tx.insert_audit(self.session_id, self.now_ms(), kind, actor, data)

    async def finish_run(
        self,
        run: Run,
        ending: Ending | None = None,
        *,
        active: ActiveRun | None = None,
        audit: Sequence[tuple[str, str, dict[str, Any]]] = (),
    ) -> None:
        """Settle a run: answered without an ``ending``, else ended by it. A restricted
        reply's full text and the run's audit records are stored in the same transaction."""
        async with self._writing() as write:
            queue = self._staged_queue(write)
            if queue.running is not None and queue.running.ids == run.ids:
                queue.finish(run.ids)
            await self._finish(write, run.ids, ending)
            if active is not None and ending is None:
                # Read now, in the write that completes it: a restricted reply (one that
                # drew on what not everyone in the session may read) is never sent out.
                text = None if active.restriction else "".join(active.text)
                write.replies[active.reply_id] = text
            if active is not None and active.restriction:
                await self._keep_reply(write, active)
            for kind, actor, data in audit:
                await self._audit_in(write, kind, actor, data)

    # -- sync and awareness ---------------------------------------------------------------

    async def sync_answer(self, state_vector: bytes) -> list[bytes]:
        """The frames answering a sync step 1: what a client lacks, from committed state
        only. They come from the encoded copy kept beside the document, without the write
        lock; only the first request after a load may wait for a write under way (the
        live document is committed state only between writes)."""
        if self._encoded is None and self._lock.locked():
            async with self._lock:
                return self._encoded_now().answer(state_vector)
        return self._encoded_now().answer(state_vector)

    def _encoded_now(self) -> EncodedDocument:
        if self._encoded is None:
            self._encoded = EncodedDocument(self.doc.doc.get_update())
        return self._encoded

    def is_noop(self, update: bytes) -> bool:
        """True when a client update would change nothing (clients may not write); an
        update deleting too many ranges is refused (``TooLarge``) unread."""
        state = self.doc.doc.get_state()
        if self._deletes is None:
            full = self.doc.doc.get_update()
            self._deletes = normalise_delete_set(delete_set_of(full, state))
        limit = self.settings.max_delete_ranges_per_update
        return is_noop_update(update, state, self._deletes, limit)

    # -- settings and membership ----------------------------------------------------------

    async def reload_settings(self) -> None:
        """Put the session's stored settings in force here: its model, its restricted-reply
        policy, its members and revoked tokens (``refresh_membership``).
        ``NotFound`` if the session was deleted."""
        row = await self.store.get_session(self.session_id)
        if row is None:
            raise NotFound(f"no session {self.session_id!r}")
        self.model = row.model
        self.restricted_replies = row.restricted_replies
        await self.refresh_membership()
        self.feed.changed()

    async def load_kept(self) -> None:
        """A read replica (cluster mode): read the restricted text and the summaries the
        running node keeps beside the document from the store, so that a REST read of
        them answers here as it does there."""
        self.private = {i.entry_id: i for i in await self.access.private_items(self.session_id)}
        self.summaries = await self.store.load_summaries(self.session_id)

    # -- membership and client tokens ------------------------------------------------------

    async def refresh_membership(self) -> None:
        """Read the members and revoked tokens from the store and apply what changed (at
        load, and in cluster mode after changes made on another node)."""
        rows = await self.store.list_members(self.session_id)
        current = {row.user_id: row.as_member() for row in rows}
        for user_id in set(self.members) - set(current):
            await self.set_member(user_id, None)
        for user_id, member in current.items():
            if self.members.get(user_id) != member:
                await self.set_member(user_id, member)
        revoked = await self.access.revoked_tokens(self.session_id, int(self.clock()))
        for token in revoked.values():
            await self.revoke_token(token)

    async def set_member(self, user_id: str, member: Member | None) -> None:
        """Apply a stored membership change: sockets that may no longer read the session
        close; a member removed (or removed and added back: a new epoch) loses their
        tokens, sockets and prompts."""
        before = self.members.get(user_id)
        if member is None:
            self.members.pop(user_id, None)
        else:
            self.members[user_id] = member
        self.refresh_sockets()
        if before is not None and (member is None or member.token_epoch != before.token_epoch):
            removed = Ending(ReasonCode.MEMBER_REMOVED, f"{user_id} was removed from the session")
            await self._stop_prompts(user_id, removed)

    async def revoke_token(self, token: TokenRow) -> None:
        """Apply a revoked token: its sockets close, its user's prompts stop."""
        now = self.clock()
        self.revoked_tokens = {k: t for k, t in self.revoked_tokens.items() if t.expires_at > now}
        if token.id in self.revoked_tokens or token.expires_at <= now:
            return
        self.revoked_tokens[token.id] = token
        self.refresh_sockets()
        revoked = Ending(ReasonCode.TOKEN_REVOKED, f"a client token of {token.user_id} was revoked")
        await self._stop_prompts(token.user_id, revoked)

    async def _stop_prompts(self, user_id: str, ending: Ending) -> None:
        try:
            await self.stop_prompts_of(user_id, ending)
        except Exception:
            # The change is stored either way; a removed member's prompt left waiting
            # still fails when it comes up (``start_run``).
            log.warning("could not stop a member's prompts", exc_info=True)

    def token_refusal(self, claims: ClientClaims) -> str | None:
        """Why a verified token may not be used now (None: it may, or its user is no
        member, which the membership check answers)."""
        member = self.members.get(claims.user_id)
        if member is None:
            return None
        return token_refusal(claims, member.token_epoch, self.revoked_tokens)

    def refresh_sockets(self) -> None:
        """Close the sockets of users removed (4403), of revoked tokens (4401), and of
        members who may no longer read the session (4403); wake the event streams, which
        check their reader again."""
        self.feed.changed()
        for connection in list(self.connections):
            user_id = connection.user_id
            if user_id not in self.members:
                connection.close(CloseCode.FORBIDDEN, "removed: you are no longer a member")
                continue
            refusal = None if connection.claims is None else self.token_refusal(connection.claims)
            if refusal is not None:
                connection.close(CloseCode.UNAUTHENTICATED, refusal)
            elif not decide(self.subject(user_id), Do(Capability.READ_SESSION)).allowed:
                connection.close(CloseCode.FORBIDDEN, "membership revoked")

    def fail(
        self,
        reason: str,
        cause: ReasonCode = ReasonCode.STORAGE_ERROR,
        retry_after_s: float | None = None,
    ) -> None:
        """Give the room up (its memory may hold an un-stored change): no write is made
        here any more, the next use reloads it from the store (a run it had in flight is
        marked with ``cause`` then), and its sockets are closed with 1013 so clients
        reconnect (``retry_after_s``: a hint, in the reason, to wait that long first) --
        once the writes waiting here now have answered their commands (``unavailable``),
        so those answers go out first."""
        self.closed = True
        self.failed = reason
        self.cut_off = cause
        self.wakeup.set()
        self.feed.end("unavailable", f"{reason}; resume with the last id")
        if retry_after_s is not None:
            reason = retry_reason(reason, retry_after_s)
        self._closing = asyncio.get_running_loop().create_task(self._close_after_writes(reason))

    async def _close_after_writes(self, reason: str) -> None:
        async with self._lock:  # behind every write that waits for it now
            for connection in list(self.connections):
                connection.close(CloseCode.TRY_AGAIN, reason)

    def is_idle(self) -> bool:
        return (
            not self.connections
            and not self.feed.readers
            and len(self.queue) == 0
            and self.active_run is None
        )

    def committed_reply(self, reply_id: str) -> ReplyText | None:
        """A reply's text as committed (None: not in the committed document yet)."""
        return self.feed.reply(self.doc, reply_id, writing=self._lock.locked())

    def committed_queue(self) -> list[dict[str, Any]]:
        """The waiting prompts in planned order, as committed."""
        return self.feed.queue(self.doc, writing=self._lock.locked())
