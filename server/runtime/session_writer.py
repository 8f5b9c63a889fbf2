"""The one writer of a loaded session: every change to it is carried out here.

An event -- a member's command, a run's step, a membership change, a restart -- is judged
by ``session.core.handle`` on the session as committed (``view``), judged again under the
write lock on the state it changes (which may have moved meanwhile), and its effects are
carried out in the order store -> commit -> broadcast -> notify: rows, document update and
semantic events in one transaction (``DocumentWriter.writing``); after the commit the
update goes to the sockets and kept text to the members who may read it; then the run in
flight is stopped or the runner woken. A refusal writes nothing: it is audited and raised.

``SessionWriter`` holds what the core decides with (the queue, the last sequence number)
and is the only code that changes it; ``DocumentWriter`` beneath it does the mechanics of
one write (capture, commit, broadcast, undo), the room (``SessionRoom``) only wires parts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from parley.authz.policy import Action, Decision, Subject, decide
from parley.server.runtime.context import SessionContext
from parley.server.runtime.run_steps import RunSteps
from parley.server.runtime.sent_commands import SentCommands
from parley.server.runtime.side_threads import SideThreads
from parley.server.runtime.sockets import SessionSockets
from parley.server.runtime.thread_docs import read_document
from parley.server.runtime.writer import DocumentWriter, Write
from parley.server.store.access_rows import PrivateItem, TokenRow
from parley.server.store.counters import SequenceMoved
from parley.server.store.effect_writes import write_effects
from parley.server.store.port import SessionStore
from parley.server.store.rows import UsageRow, claims_of
from parley.server.store.usage import usage_rows
from parley.session.core import (
    AppendText,
    BeginRun,
    CommandEvent,
    Effects,
    Event,
    MemberUpdated,
    Recovered,
    SessionView,
    ShownRun,
    TokenRevoked,
    WaitingPrompt,
    handle,
)
from parley.session.core.runs import cut_off_runs
from parley.session.core.threads import running_thread_prompts, thread_reply_id
from parley.session.lifecycle import PromptStatus
from parley.session.model import Usage
from parley.session.queue import OrderingQueue, Policy
from parley.session.reasons import ReasonCode
from parley.session.recent_acks import kept_as_ack, stored_fingerprint
from parley.session.schema import QueuedItem, SessionDocument
from parley.session.tokens import count_tokens

log = logging.getLogger("parley.room")

# Called under the lock with the write: the event to judge (what it reads in the write).
Before = Callable[[Write], Awaitable[Event]]
# Called under the lock with the write and the effects judged for it, before they are stored.
Beside = Callable[[Write, Effects], Awaitable[None]]
# The actor of the ``token`` audit records of the tokens from links a write revoked: the
# server, judging by the reader lists (as ``reply_kept_private`` records are the policy's).
READERS_ACTOR = "policy"


class _Refused(Exception):
    """The core refused an event under the writer: nothing of the write is kept."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects


class SessionWriter:
    """Session ``session_id``'s one writer: ``document`` stores, commits and broadcasts;
    ``view`` is the session as committed; ``subject`` a member as of now. After a commit,
    kept private text goes to ``context`` and ``sockets``, side-thread changes to
    ``side_threads``; then ``runs`` is stopped or woken."""

    def __init__(
        self,
        session_id: str,
        store: SessionStore,
        document: DocumentWriter,
        queue: OrderingQueue,
        *,
        view: Callable[[], SessionView],
        subject: Callable[[str], Subject | None],
        context: SessionContext,
        sockets: SessionSockets,
        runs: RunSteps,
        side_threads: SideThreads,
        revoked: Callable[[TokenRow], bool] = lambda token: False,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.document = document
        self.queue = queue
        self.last_seq = 0  # the highest sequence number stored
        self.view = view
        self.subject = subject
        self.context = context
        self.sockets = sockets
        self.runs = runs
        self.side_threads = side_threads
        self.sent = SentCommands(store, session_id)
        # Puts a token a write revoked in force as the write commits (``Membership``):
        # True if its member's prompts are to stop, which ``step`` does after the write.
        self.revoked = revoked
        self._stopping: list[TokenRevoked] = []

    @property
    def doc(self) -> SessionDocument:
        return self.document.doc

    async def load(self) -> None:
        """Read the document and the highest sequence number stored again."""
        await self.document.load()
        row = await self.store.get_session(self.session_id)
        self.last_seq = 0 if row is None else row.last_seq

    async def recover(self, title: str, policy: Policy, cut_off: ReasonCode) -> None:
        """After ``load``: a new session's document gets its meta; the queue is restored
        from the entries table, and a run that was in flight is cut off by ``cut_off``
        (``session.core`` event ``Recovered``)."""
        if "session_id" not in self.doc.meta:
            async with self.document.writing():
                self.doc.init_meta(self.session_id, title, policy.value)
        rows = await self.store.entries_with_status(
            self.session_id, [PromptStatus.QUEUED.value, PromptStatus.RUNNING.value]
        )
        waiting = tuple(
            WaitingPrompt(r.id, r.seq, r.author, r.status, claims_of(r.token_claims)) for r in rows
        )
        shown = await self._shown_runs()
        recovered = Recovered(waiting, policy, cut_off, self.document.now_ms(), shown)
        effects = handle(self.view(), recovered)
        assert effects.queue is not None
        self.queue = effects.queue
        if effects.finish or effects.thread_settle:
            # The process died mid-reply: never re-run it (twice), mark it; its model call
            # counts, once (stored with the marking).
            usage = await self._cut_off_usage(effects, recovered.now_ms)
            usage += await self._cut_off_thread_usage(shown, recovered.now_ms)
            await self.step(recovered, recovered.now_ms, usage=usage)

    async def _cut_off_usage(self, effects: Effects, now_ms: int) -> list[UsageRow]:
        """What the runs a crash cut off after they began to stream are taken to have used,
        their node having stored nothing of it (review: a call cut off by SIGKILL was never
        counted against the quotas): the request in, as their context is built again now
        (what every member may read, without the tools' definitions; a run's earlier tool
        steps are not in it), and what they streamed out, as stored. Estimated rows: the
        count the node that ran them stored, should it have, comes first. Each build's
        history is folded ahead in steps: this comes before the load folds it
        (``SessionContext.warm``), and built at once it was folded in one call (20,000-
        60,000 entries: a long block of every session of the node)."""
        view = self.view()
        rows: list[UsageRow] = []
        for finish in effects.finish:
            for reply_id, prompt_ids in cut_off_runs(view, finish.prompt_ids).items():
                if reply_id is None or not view.doc.has_entry(reply_id):
                    continue
                kept = self.context.private.get(reply_id)
                text = view.doc.entry(reply_id).content if kept is None else kept.text
                if not text:
                    continue  # cut off before its first token: not counted
                await self.context.fold_ahead(prompt_ids, holds_writer=True)
                built = self.context.build(prompt_ids)
                used = Usage(built.tokens, count_tokens(text))
                issuers = [view.doc.entry(p).author for p in prompt_ids]
                model = built.request.model or ""  # (the build names the model)
                rows += usage_rows(
                    self.session_id, issuers, model, reply_id, used, now_ms / 1000, estimated=True
                )
        return rows

    async def _shown_runs(self) -> dict[str, ShownRun]:
        """What the side-threads' stored documents show of their runs in flight, which
        a crash cut off (``Recovered.shown_runs``): one document read per such run."""
        shown = {}
        for thread, prompt in running_thread_prompts(self.side_threads.threads):
            stored = await self.store.load_thread_doc(self.session_id, thread.id)
            run = read_document(stored).shown_run(prompt.id, thread_reply_id(prompt))
            if run is not None:
                shown[prompt.id] = run
        return shown

    async def _cut_off_thread_usage(
        self, shown: Mapping[str, ShownRun], now_ms: int
    ) -> list[UsageRow]:
        """What the side-thread runs a crash cut off are taken to have used, as
        ``_cut_off_usage`` takes a session run's: the request in, as built again now in
        what every member may read, and the text out that their thread's stored document
        shows (a run it shows no text of is not counted)."""
        rows: list[UsageRow] = []
        for thread, prompt in running_thread_prompts(self.side_threads.threads):
            run = shown.get(prompt.id)
            if run is None or not run.text:
                continue
            await self.context.fold_ahead((prompt.id,), None, thread, holds_writer=True)
            built = self.context.build((prompt.id,), None, thread)
            used = Usage(built.tokens, count_tokens(run.text))
            reply_id, model = thread_reply_id(prompt), built.request.model or ""
            rows += usage_rows(
                self.session_id,
                [prompt.author],
                model,
                reply_id,
                used,
                now_ms / 1000,
                estimated=True,
            )
        return rows

    async def execute(self, event: CommandEvent) -> Effects:
        """Carry out a member's command (see ``step``)."""
        return await self.step(event, event.now_ms)

    async def step(self, event: Event, now_ms: int, *, usage: Sequence[UsageRow] = ()) -> Effects:
        """Carry out what ``event`` does: judged at the door, and judged again under the
        writer on the state it changes, then stored, committed and broadcast; after the
        commit the run in flight is stopped or the runner woken. A refusal is audited and
        raised. ``usage``: a run's model calls, stored in the same transaction (its
        finish)."""
        effects = handle(self.view(), event, with_events=False)  # the writer judges again
        if effects.error is None and effects.writes:
            try:
                effects = await self.carry_out(event, now_ms, usage)
            except SequenceMoved as exc:
                self.last_seq = await self._stored_last_seq(exc.last_seq)
                raise
            finally:
                stopping, self._stopping = self._stopping, []
                for revoked in stopping:
                    await self.stop_prompts(revoked)
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

    async def carry_out(
        self,
        event: Event,
        now_ms: int,
        usage: Sequence[UsageRow] = (),
        *,
        before: Before | None = None,
        beside: Beside | None = None,
    ) -> Effects:
        """Judge ``event`` under the writer and store what it does (and ``usage``); a
        refusal (returned) writes nothing. ``before``: the event to judge, read in the
        write (a run's start reads the quotas and the day's usage the core decides by);
        ``beside``: what else to do in the write once the event was judged (a run's start
        reads its issuers' scope there). A write that stores a prompt and wakes the runner
        starts the prompt's run too if the runner waits idle (``RunSteps.begin_with``)."""
        member = token = None
        if isinstance(event, CommandEvent):
            await self.sent.read(self.last_seq)  # before a write that may store an entry
            # Judged again at the commit, with the changes stored on another node.
            member = None if event.admin or not event.actor else event.actor
            token = event.token
        try:
            async with self.document.writing(member, token) as write:
                if before is not None:
                    event = await before(write)
                effects = handle(self.view(), event)
                if effects.error is not None:
                    raise _Refused(effects)
                if beside is not None:
                    await beside(write, effects)
                entry, started = effects.entry, None
                if effects.wake_runner and entry is not None:
                    started = await self._run_start(write, effects, now_ms)
                # A prompt whose run starts with it is inserted running: no update after.
                begin = None if started is None else started.begin
                await self._record(write, effects, now_ms, starting=begin)
                if started is not None and entry is not None:
                    await self._record(write, started, now_ms, inserted=entry.id)
                if isinstance(event, CommandEvent):
                    await self._keep_ack(write, event, effects)
                await write.tx.insert_usage(usage)
        except _Refused as refused:
            return refused.effects
        return effects

    async def _keep_ack(self, write: Write, event: CommandEvent, effects: Effects) -> None:
        """Keep the ack of a command that stores no entry (or only side-thread rows, gone
        with a deleted thread) with what it writes, so that a resend after a restart is
        answered, not carried out again (``command_acks``)."""
        command = event.command
        if effects.ack is None or not event.resendable or not kept_as_ack(command):
            return  # (the REST API's own writes have no ids of a client's to resend)
        reply = effects.ack.reply(command.id)
        fingerprint = stored_fingerprint(command)
        await write.tx.insert_command_ack(
            self.session_id, event.actor, command.id, fingerprint, reply, event.now_ms
        )
        write.after_commit.append(partial(self.sent.stored, event.actor, command.id))

    async def _run_start(self, write: Write, stored: Effects, now_ms: int) -> Effects | None:
        """The start of the run the queue plans next, judged in ``write`` on the session as
        it will be once ``stored`` (a prompt's effects) commits, if the runner waits idle;
        written with the prompt (see ``carry_out``)."""
        assert stored.entry is not None
        view = self.view()
        after = replace(
            view,
            queue=view.queue if stored.queue is None else stored.queue,
            last_seq=stored.entry.seq,
        )
        return await self.runs.begin_with(write, after, now_ms)

    async def _record(
        self,
        write: Write,
        effects: Effects,
        now_ms: int,
        *,
        starting: BeginRun | None = None,
        inserted: str | None = None,
    ) -> None:
        """Write ``effects`` in ``write``; what follows the commit is queued on it
        (``starting``, ``inserted``: see ``write_effects``)."""
        entry = effects.entry
        await write_effects(
            write.tx,
            self.doc,
            self.session_id,
            effects,
            now_ms,
            starting=starting,
            inserted=inserted,
            new_command=entry is not None and self.sent.new(entry.author, entry.command_id),
        )
        write.events.extend(effects.events)
        write.replies.update(effects.replies)
        if any(k.restriction for k in effects.keep) or any(
            t.restriction for t in effects.thread_turns
        ):
            # A reader list stored (a webhook tool's answer brings one): the tokens from
            # members' links are judged by them, as at a document's attach (review RA-2),
            # and those revoked are in force before what is kept is delivered, below.
            tokens = await write.tx.revoke_link_tokens(self.session_id, now_ms, READERS_ACTOR)
            if tokens:
                write.after_commit.append(partial(self._links_revoked, tokens, now_ms))
        fence = self.document.fence
        readers = self.subject
        if fence is not None and any(not kept.shown for kept in effects.keep):
            # Cluster mode: a member changed on another node may not be in force here yet.
            readers = await fence.readers_at_commit(write.tx)
        for kept in effects.keep:
            item = PrivateItem(kept.entry_id, kept.kind, kept.text, kept.restriction)
            deliver = None if kept.shown else readers
            write.after_commit.append(partial(self._keep_private, item, deliver))
            if fence is not None and not kept.shown:
                fence.kept_private(write.tx, kept.entry_id)  # other nodes' sockets
        if entry is not None:
            write.after_commit.append(partial(setattr, self, "last_seq", entry.seq))
            write.after_commit.append(partial(self.sent.stored, entry.author, entry.command_id))
        if effects.thread is not None or effects.thread_turns or effects.thread_settle:
            await self.side_threads.write(write, effects)
            write.after_commit.append(partial(self.side_threads.committed, effects))
        if effects.queue is not None and starting is None:
            # Its plan goes into the document; swapped in on commit. (A prompt whose run
            # starts with it leaves that to the run's effects, written next: never in the
            # queue, it adds no item to the document's queue and so no tombstone.)
            self.doc.set_queue([QueuedItem(p.id, p.seq, p.author) for p in effects.queue.pending()])
            write.after_commit.append(partial(setattr, self, "queue", effects.queue))

    def _links_revoked(self, tokens: Sequence[TokenRow], now_ms: int) -> None:
        """Tokens a write revoked, as it commits: refused from now, their sockets closed;
        their members' prompts are stopped after the write (``step``)."""
        for token in tokens:
            if self.revoked(token):
                self._stopping.append(TokenRevoked(token.user_id, now_ms))

    async def append(self, text: AppendText) -> None:
        """A run's streamed reply text (as the core said): stored through the group
        commit, then broadcast."""
        async with self.document.appending():
            self.doc.append_reply_text(text.reply_id, text.text)

    async def notify(self, effects: Effects) -> None:
        """After the commit: stop the run in flight or wake the runner, as ``effects`` say;
        a message or prompt stored is made ready for the fold (its cost paid once, as it is
        posted), on the loop's next pass: after its ack is sent and the runner woken, so
        neither waits for it (it cost a prompt's ack 0.8 ms; a build that comes first
        shapes the text itself, and this finds it kept)."""
        if effects.entry is not None:
            asyncio.get_running_loop().call_soon(self.context.prepare, effects.entry.text)
        active = self.runs.active
        if effects.stop is not None and active is not None:
            active.stop(effects.stop.ending)
            if effects.stop.wait:
                await active.wait()
        if effects.wake_runner:
            self.runs.wake()
        self.side_threads.notify(effects)

    def _keep_private(
        self, item: PrivateItem, deliver: Callable[[str], Subject | None] | None
    ) -> None:
        """Remember a stored private item, and deliver it to who may read it, judged by
        ``deliver`` (who each member is as of its commit), unless the shared document
        shows it already (None)."""
        self.context.keep(item)
        if deliver is not None:
            self.sockets.deliver_private(item, deliver)

    async def stop_prompts(self, event: MemberUpdated | TokenRevoked) -> None:
        """A member's grants changed (``Membership``): the core says which of their prompts
        and runs stop (none where the session is not run: nothing waits or runs there):
        those of one who may no longer prompt, and the runs that drew on what they may no
        longer read. Then their side-threads' documents are judged again
        (``SideThreads.rejudge``)."""
        try:
            await self.step(event, event.now_ms)
        except Exception:
            # The change is stored either way; a removed member's prompt left waiting
            # still fails when it comes up (``RunSteps.start``).
            log.warning("could not stop a member's prompts", exc_info=True)
        if isinstance(event, MemberUpdated):
            try:
                await self.side_threads.rejudge(event.user_id)
            except Exception:
                # A socket opening here judges the thread again, as it always does.
                log.warning("could not judge a member's side-threads again", exc_info=True)

    # -- checks and audit: rows written outside any document change ----------------------

    async def check(self, user_id: str, action: Action, what: str) -> Decision:
        """Decide ``action`` for ``user_id`` now; a refusal is audited and raised."""
        return await self.require(decide(self.subject(user_id), action), user_id, what)

    async def require(self, decision: Decision, user_id: str, what: str) -> Decision:
        """``decision`` on ``user_id``'s ``what``: a refusal is audited and raised."""
        if not decision.allowed:
            await self.audit("refused", user_id, {"action": what, "reason": decision.reason})
            decision.require()
        return decision

    async def audit(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Append an audit record now (outside any document change)."""
        await self.store.access.audit(self.session_id, self.document.now_ms(), kind, actor, data)
