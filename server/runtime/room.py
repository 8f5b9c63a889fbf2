"""A loaded session: the thin shell that carries out what the session core decides.

Every event -- a member's command, a run's step, a membership change, a restart -- is
judged by ``session.core.handle`` on the session as committed (``view``), and its effects
are carried out by the room's one writer (``server.runtime.writer``) in the order store ->
commit -> broadcast -> notify: rows, document update and semantic events in one
transaction; after the commit the update goes to the sockets, kept text to the members who
may read it, and the run in flight is stopped or the runner woken. The room holds what the
core reads: the queue, the members (``Membership``), the context (``SessionContext``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from parley.authz.policy import Action, Decision, Subject, decide
from parley.authz.roles import RoleTable
from parley.server.http.retry_hint import retry_reason
from parley.server.metrics import Metrics
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.context import SessionContext
from parley.server.runtime.membership import Membership, member_rates
from parley.server.runtime.room_view import session_view
from parley.server.runtime.run_steps import RunSteps
from parley.server.runtime.side_threads import SideThreads
from parley.server.runtime.sockets import SessionSockets
from parley.server.runtime.stream_feed import ReplyText, StreamFeed
from parley.server.runtime.writer import DocumentWriter, Write
from parley.server.settings import Settings
from parley.server.store.access_rows import PrivateItem, ToolRow
from parley.server.store.counters import SequenceMoved
from parley.server.store.effect_writes import write_effects
from parley.server.store.group_commit import WriteFence
from parley.server.store.port import SessionStore
from parley.server.store.rows import UsageRow
from parley.server.ws.awareness import AwarenessFanout
from parley.server.ws.connection import Connection
from parley.session.closes import CloseCode
from parley.session.commands import Limits
from parley.session.core import (
    CommandEvent,
    Effects,
    Event,
    MemberUpdated,
    Recovered,
    SessionView,
    TokenRevoked,
    WaitingPrompt,
    handle,
)
from parley.session.errors import NotFound
from parley.session.lifecycle import PromptStatus
from parley.session.presence import Presence
from parley.session.queue import OrderingQueue, Policy, QueueLimits
from parley.session.ratelimit import Budgets, Spend, TokenBucket
from parley.session.reasons import ReasonCode
from parley.session.schema import QueuedItem, SessionDocument

log = logging.getLogger("parley.room")


def new_id() -> str:
    return uuid.uuid4().hex


class _Refused(Exception):
    """The core refused an event under the writer: nothing of the write is kept."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects


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
        model: str | None = None,
        cut_off: ReasonCode = ReasonCode.SERVER_RESTART,
        publish_presence: Callable[[bytes], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.webhooks = webhooks
        self.access = store.access
        self.model = model  # the session's model; None: the server's default
        self.restricted_replies = "private"
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
        self.last_seq = 0  # the highest sequence number stored (``load``)
        self.sockets = SessionSockets(self.subject)
        # What the event streams of this session read in memory (``server.http.sse``).
        self.feed = StreamFeed()
        self.membership = Membership(
            session_id,
            store,
            roles,
            clock,
            self.sockets.everyone,
            self.feed.changed,
            self._stop_prompts,
        )
        lost = partial(self.fail, retry_after_s=settings.db_retry_after_s)
        self.writer = DocumentWriter(
            session_id, store, settings, clock, self.broadcast, lost, self.feed
        )
        self.context = SessionContext(
            session_id,
            store=store,
            settings=settings,
            metrics=self.metrics,
            clock=clock,
            doc=lambda: self.writer.doc,
            model=lambda: self.model,
            subjects=self.membership.subjects,
        )
        self.presence = Presence(settings.max_awareness_state_bytes)
        self.awareness = AwarenessFanout(
            self.presence, self.broadcast, settings.awareness_flush_ms / 1000
        )
        self.awareness.publish = publish_presence
        self.budgets = Budgets(member_rates(settings))
        self.runs = RunSteps(self)
        self.side_threads = SideThreads(self)
        self.draining = False
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        # What a run found in flight on the next load was cut off by: a restart unless the
        # room was given up for another cause (``fail``) or taken over from another node.
        self.cut_off = cut_off

    @property
    def doc(self) -> SessionDocument:
        return self.writer.doc

    @property
    def active_run(self) -> ActiveRun | None:
        return self.runs.active

    @property
    def last_active(self) -> float:
        return self.writer.last_active

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- loading and settings -------------------------------------------------------------

    async def load(self, title: str, policy: Policy, restricted_replies: str = "private") -> None:
        """Restore the document from its update log and the queue from the entries table;
        a run that was in flight is cut off (``session.core`` event ``Recovered``)."""
        await self.writer.load()
        row = await self.store.get_session(self.session_id)
        self.last_seq = 0 if row is None else row.last_seq
        self.restricted_replies = restricted_replies
        await self.context.load()
        await self.side_threads.load()
        await self.membership.refresh()
        if "session_id" not in self.doc.meta:
            async with self.writer.writing():
                self.doc.init_meta(self.session_id, title, policy.value)
        rows = await self.store.entries_with_status(
            self.session_id, [PromptStatus.QUEUED.value, PromptStatus.RUNNING.value]
        )
        waiting = tuple(WaitingPrompt(r.id, r.seq, r.author, r.status) for r in rows)
        recovered = Recovered(waiting, policy, self.cut_off, self.now_ms())
        effects = handle(self.view(), recovered)
        assert effects.queue is not None
        self.queue = effects.queue
        if effects.finish or effects.thread_settle:
            # The process died mid-reply: never re-run it (twice), mark it.
            await self.step(recovered, recovered.now_ms)

    async def reload_settings(self) -> None:
        """Put the session's stored settings in force here: its model, its restricted-reply
        policy, its members and revoked tokens. ``NotFound`` if the session was deleted."""
        row = await self.store.get_session(self.session_id)
        if row is None:
            raise NotFound(f"no session {self.session_id!r}")
        self.use_settings(row.model, row.restricted_replies)
        await self.membership.refresh()
        self.feed.changed()

    def use_settings(self, model: str | None, restricted_replies: str) -> None:
        self.model = model
        self.restricted_replies = restricted_replies

    def fence_with(self, fence: WriteFence) -> None:
        """Cluster mode: every write checks first that this node may still write."""
        self.writer.fence = fence

    def taken_over(self) -> None:
        """Loaded after another node ran the session: a run found in flight was cut off by
        the failover (unless this room was given up for another cause)."""
        if self.cut_off is ReasonCode.SERVER_RESTART:
            self.cut_off = ReasonCode.FAILOVER

    # -- the core's events, carried out --------------------------------------------------

    def view(self) -> SessionView:
        """The session as committed, as the core reads it."""
        return session_view(self)

    async def execute(self, event: CommandEvent) -> Effects:
        """Carry out a member's command (see ``step``)."""
        return await self.step(event, event.now_ms)

    async def step(self, event: Event, now_ms: int, *, usage: Sequence[UsageRow] = ()) -> Effects:
        """Carry out what ``event`` does: judged at the door, and judged again under the
        writer on the state it changes (which may have moved while this waited), then
        stored, committed and broadcast; after the commit the run in flight is stopped or
        the runner woken. A refusal is audited and raised. ``usage``: a run's model calls,
        stored in the same transaction (its finish)."""
        effects = handle(self.view(), event, with_events=False)  # the writer judges again
        if effects.error is None and effects.writes:
            try:
                effects = await self.carry_out(event, now_ms, usage)
            except SequenceMoved as exc:
                self.last_seq = await self._stored_last_seq(exc.last_seq)
                raise
        if effects.error is not None:
            for record in effects.audit:
                await self.audit(record.kind, record.actor, dict(record.data))
            raise effects.error
        await self.notify(effects)
        return effects

    async def _stored_last_seq(self, told: int | None) -> int:
        """The highest sequence number the store holds: ``told``, as the failed write read
        it, or read again (the write found its number taken)."""
        if told is None:
            row = await self.store.get_session(self.session_id)
            return self.last_seq if row is None else row.last_seq
        return told

    async def carry_out(self, event: Event, now_ms: int, usage: Sequence[UsageRow] = ()) -> Effects:
        """Judge ``event`` under the writer and store what it does (and ``usage``); a
        refusal (returned) writes nothing."""
        try:
            async with self.writer.writing() as write:
                effects = handle(self.view(), event)
                if effects.error is not None:
                    raise _Refused(effects)
                await self.record(write, effects, now_ms)
                await write.tx.insert_usage(usage)
        except _Refused as refused:
            return refused.effects
        return effects

    async def record(self, write: Write, effects: Effects, now_ms: int) -> None:
        """Write ``effects`` in ``write``; what follows the commit is queued on it."""
        await write_effects(write.tx, self.doc, self.session_id, effects, now_ms)
        write.events.extend(effects.events)
        write.replies.update(effects.replies)
        for kept in effects.keep:
            item = PrivateItem(kept.entry_id, kept.kind, kept.text, kept.restriction)
            write.after_commit.append(partial(self._keep_private, item))
        if effects.entry is not None:
            write.after_commit.append(partial(setattr, self, "last_seq", effects.entry.seq))
        if effects.thread is not None or effects.thread_turns or effects.thread_settle:
            await self.side_threads.write(write, effects)
            write.after_commit.append(partial(self.side_threads.committed, effects))
        if effects.queue is not None:  # its plan goes into the document; swapped in on commit
            self.doc.set_queue([QueuedItem(p.id, p.seq, p.author) for p in effects.queue.pending()])
            write.after_commit.append(partial(setattr, self, "queue", effects.queue))

    async def notify(self, effects: Effects) -> None:
        active = self.active_run
        if effects.stop is not None and active is not None:
            active.stop(effects.stop.ending)
            if effects.stop.wait:
                await active.wait()
        if effects.wake_runner:
            self.runs.wake()
        self.side_threads.notify(effects)

    def _keep_private(self, item: PrivateItem) -> None:
        """Remember a stored private item and deliver it to who may read it."""
        self.context.keep(item)
        self.sockets.deliver_private(item)

    # -- membership ------------------------------------------------------------------------

    async def _stop_prompts(self, event: MemberUpdated | TokenRevoked) -> None:
        """A member lost the right to their prompts (``Membership``): the core says which
        stop (none where the session is not run: nothing waits or runs there)."""
        try:
            await self.step(event, event.now_ms)
        except Exception:
            # The change is stored either way; a removed member's prompt left waiting
            # still fails when it comes up (``RunSteps.start``).
            log.warning("could not stop a member's prompts", exc_info=True)

    # -- checks and audit --------------------------------------------------------------------

    def subject(self, user_id: str) -> Subject | None:
        """The member as of now (role table and grants read live), or None."""
        return self.membership.subject(user_id)

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

    def user_bucket(self, user_id: str) -> TokenBucket:
        """One command budget per user across all their sockets in this session."""
        return self.budgets.bucket(user_id, Spend.COMMANDS, self.clock())

    # -- sockets and the room's life -------------------------------------------------------

    @property
    def connections(self) -> set[Connection]:
        return self.sockets.connections

    def broadcast(self, message: bytes) -> None:
        self.sockets.broadcast(message)

    def drain(self) -> None:
        """The server shuts down: no new run starts here; the event streams end and the
        sockets close (1001)."""
        self.draining = True
        self.feed.changed()
        self.sockets.close_all(CloseCode.GOING_AWAY, "server shutting down")

    def close(self, *, deleted: bool = False, reason: str = "") -> None:
        """Unloaded: the runner stops at its next turn; the event streams end (their
        readers resume with their last id on the room loaded next, unless ``deleted``)."""
        self.closed = True
        if deleted:
            self.feed.end("not_found", "the session was deleted")
        else:
            self.feed.end("unavailable", f"{reason or 'session unloaded'}; resume with the last id")

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
        self.writer.failed = reason
        self.cut_off = cause
        self.runs.wake()
        self.feed.end("unavailable", f"{reason}; resume with the last id")
        if retry_after_s is not None:
            reason = retry_reason(reason, retry_after_s)
        self._closing = asyncio.get_running_loop().create_task(self._close_after_writes(reason))

    async def _close_after_writes(self, reason: str) -> None:
        async with self.writer.lock:  # behind every write that waits for it now
            self.sockets.close_all(CloseCode.TRY_AGAIN, reason)

    def is_idle(self) -> bool:
        sockets = any(True for _ in self.sockets.everyone())
        return not (sockets or self.feed.readers or len(self.queue) or self.active_run)

    def committed_reply(self, reply_id: str) -> ReplyText | None:
        """A reply's text as committed (None: not in the committed document yet)."""
        return self.feed.reply(self.doc, reply_id, writing=self.writer.lock.locked())

    def committed_queue(self) -> list[dict[str, Any]]:
        """The waiting prompts in planned order, as committed."""
        return self.feed.queue(self.doc, writing=self.writer.lock.locked())
