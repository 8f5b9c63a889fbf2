"""The room's side of a run: each step judged by the session core and carried out
through the room's one writer.

The runner (``server.runtime.runner``) drives the model and the tools; every change a run
makes to the session goes through here: ``start`` (which prompts the run answers, under the
scheduling policy and within the context window; authors who may no longer prompt fail
``forbidden``), streamed text
(``append_reply``), what the run drew on (``widen``), tool steps and ``finish`` with an
ending (``session.reasons``). ``active`` is the run in flight.

A prompt that finds the runner idle starts its run in the transaction that stores it
(``begin_with``): one commit and one broadcast, not two, and the runner takes the run
already begun (``take_begun``) instead of waiting for the writer again. On a loaded
server the second transaction waited its turn behind other sessions' writes, and was most
of the time between a prompt's ack and its model call.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from parley.authz.policy import Restriction
from parley.authz.scope import RunScope, scope_for_run
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.back_references import BackReference
from parley.server.runtime.tools import tool_defs
from parley.server.runtime.writer import Write
from parley.server.store.group_commit import MembersMoved
from parley.session.core import (
    AuditRecord,
    ContextDrawn,
    Effects,
    Event,
    ReplyState,
    RunFinished,
    RunStart,
    SessionView,
    TextAppended,
    ToolStepTaken,
    handle,
)
from parley.session.core.runs import too_large
from parley.session.errors import Forbidden
from parley.session.queue import PendingPrompt
from parley.session.quota import Quotas, day_of
from parley.session.reasons import Ending
from parley.session.run_fit import Overflow, fit_run

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom

# How many times streamed text is judged before it is stored: each time but the last the
# members changed again on another node as it was.
MAX_JUDGED = 8


class RunSteps:
    room: BackReference[SessionRoom] = BackReference()  # the room holds this part
    private = False  # the session's runs: every member's (``RunSink``)

    def __init__(self, room: SessionRoom) -> None:
        self.room = room
        self.active: ActiveRun | None = None
        # A run started with the prompt that asked for it (``begin_with``), not yet taken
        # by the runner (``take_begun``).
        self.begun: ActiveRun | None = None
        # Who signs the replies; set by the session's runner (none: nothing runs here).
        self.reply_author: Callable[[], str] | None = None
        self._idle = False  # the runner waits for work
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """A run may be due (a prompt arrived, the policy changed), or the room closed."""
        self._wakeup.set()

    @property
    def idle(self) -> bool:
        """The runner waits for work: a prompt may start its run with it."""
        return self._idle

    def due(self) -> bool:
        """A run is begun, or the queue plans one (and the room is not draining)."""
        if self.begun is not None:
            return True
        return not self.room.draining and self.room.queue.next() is not None

    async def wait_for_work(self) -> None:
        """Return once a run may be due (a prompt arrived, the policy changed, the room
        closed); at once when one is."""
        self._wakeup.clear()
        if not self.due():
            self._idle = True
            try:
                await self._wakeup.wait()
            finally:
                self._idle = False

    def take_begun(self) -> ActiveRun | None:
        """The run a prompt started in its own transaction, for the runner to answer."""
        begun, self.begun = self.begun, None
        return begun

    async def begin_with(self, write: Write, view: SessionView, now_ms: int) -> Effects | None:
        """Start the run the queue plans next in ``write``, the transaction storing the
        prompt that asked for it (``view``: the session with that prompt in it), if the
        runner waits idle for one; the runner takes it once the write committed. None
        (nothing written) when the runner is busy or absent, or the run would not simply
        start (a prompt to fail, a refusal): the runner's own ``start`` sees to those."""
        reply_author = self.reply_author
        # (A run begun and not yet taken is in flight too: ``active`` covers it.)
        if reply_author is None or not self._idle or self.active is not None:
            return None
        planned = view.queue.next()
        if planned is not None and len(planned.prompts) > 1:
            return None  # how they fit together is judged on them committed (``start``)
        event = RunStart(now_ms, uuid.uuid4().hex, reply_author())
        event, limits = await self._with_quotas(write, event, view)
        effects = handle(view, event)
        if effects.error is not None or effects.begin is None:
            return None
        try:
            scope = self.scope_for(effects.begin.run.authors)
        except Forbidden:
            return None
        active = self._active(effects, event, scope, limits)
        write.after_commit.append(partial(self._begin, active))
        return effects

    def _begin(self, active: ActiveRun) -> None:
        """A run started with its prompt committed: in flight, for the runner to take."""
        self.active = self.begun = active

    def scope_for(self, user_ids: Sequence[str], *, preview: bool = False) -> RunScope:
        """The scope a run for ``user_ids`` would have now (``Forbidden`` if one of them may
        not prompt, unless ``preview``: then the scope of what they may read and use)."""
        issuers = [(u, self.room.subject(u)) for u in dict.fromkeys(user_ids)]
        if preview:
            subjects = tuple(s for _, s in issuers if s is not None)
            if not subjects:
                raise Forbidden("not a member of this session")
            return RunScope(subjects, ()).with_tools(tool_defs(self.room.webhooks()))
        return scope_for_run(issuers, tool_defs(self.room.webhooks()))

    async def start(self, reply_author: str) -> ActiveRun | None:
        """Start the run the queue plans next, with its scope from its issuers' grants at
        this moment, signed by ``reply_author``; None if none may start (nothing waits, or
        the prompts of authors who may no longer prompt failed: ask again)."""
        room = self.room
        await self._fold_planned()
        event = RunStart(room.now_ms(), uuid.uuid4().hex, reply_author)
        scope: RunScope | None = None
        limits: Quotas | None = None

        async def with_quotas(write: Write) -> Event:
            nonlocal limits
            view = room.writer.view()
            judged, limits = await self._with_quotas(write, event, view)
            return self._with_fit(judged, view)

        async def beside(write: Write, effects: Effects) -> None:
            nonlocal scope
            if effects.begin is not None:
                # Here, under the writer: the issuers' grants as the run starts.
                scope = self.scope_for(effects.begin.run.authors)

        effects = await room.writer.carry_out(
            event, event.now_ms, before=with_quotas, beside=beside
        )
        if effects.error is not None:
            raise effects.error
        if effects.begin is None or scope is None:
            return None
        self.active = self._active(effects, event, scope, limits)
        return self.active

    async def _with_quotas(
        self, write: Write, event: RunStart, view: SessionView
    ) -> tuple[RunStart, Quotas | None]:
        """``event`` with what the core judges a run's start by: the session's quotas as in
        force in the room (``SessionRoom.quotas``; the check before the model call takes
        them from here, no read of its own) and, for a run answering several members, what
        each used today, read in ``write``."""
        planned = view.queue.next()
        if planned is None:
            return event, None
        room = self.room
        limits = room.quotas
        if limits is None:  # (not loaded: read here)
            limits = await write.tx.quotas(room.session_id)
        if len(planned.authors) > 1 and limits.user_tokens_per_day is not None:
            # Whose prompts fail at their own quota is the core's to decide.
            used = await write.tx.tokens_used(room.session_id, day_of(room.clock()))
            return replace(event, quotas=limits, used_by=used), limits
        return event, limits

    async def _fold_planned(self) -> None:
        """Fold ahead, in steps, what the measure of a coalesced run's prompts together
        reads (``_with_fit``), before its start takes the writer: issuers who read what
        not every member may are built in a fold of their own, which nothing folded
        before, and that build folded the whole history in one call, under the writer."""
        planned = self.room.writer.view().queue.next()
        if planned is None or len(planned.prompts) < 2:
            return  # a run of one prompt is measured by its own build (the runner's)
        try:
            scope = self.scope_for([p.author for p in planned.prompts])
        except Forbidden:  # refused at the start, unmeasured
            return
        await self.room.context.fold_ahead(tuple(p.id for p in planned.prompts), scope)

    def _with_fit(self, event: RunStart, view: SessionView) -> RunStart:
        """``event`` with how the prompts planned fit the window together when the run
        plans several (``session.run_fit``): each measure is a build of the run's input for
        those prompts in their issuers' scope, as the runner's own build judges a run."""
        planned = view.queue.next()
        if planned is None or len(planned.prompts) < 2:
            return event

        def judge(prompts: Sequence[PendingPrompt]) -> Overflow | None:
            try:
                scope = self.scope_for([p.author for p in prompts])
            except Forbidden:  # refused by the core before any fit counts
                return None
            built = self.room.context.build(tuple(p.id for p in prompts), scope)
            ending = too_large(built.tokens, built.budget, built.fixed_parts)
            return None if ending is None else Overflow(ending, built.fixed_tokens > built.budget)

        return replace(event, fit=fit_run(planned.prompts, judge))

    def _active(
        self, effects: Effects, event: RunStart, scope: RunScope, limits: Quotas | None
    ) -> ActiveRun:
        assert effects.begin is not None
        active = ActiveRun(effects.begin.run, ReplyState(event.reply_id), scope, self)
        active.quotas = limits
        return active

    def end(self, active: ActiveRun) -> None:
        """The runner settled ``active`` (or gave it up): whoever waits for it may go on."""
        if self.active is active:
            self.active = None
        if self.begun is active:
            self.begun = None
        active.finished.set()

    async def append_reply(self, active: ActiveRun, text: str) -> None:
        """Stream reply text: into the shared document, or, once the reply draws on what
        not every member may read and the policy does not share (``SessionView.shares``),
        only into the server-side copy."""
        active.text.append(text)
        await self._append(active, partial(TextAppended, text=text))

    async def widen(self, active: ActiveRun, restriction: Restriction) -> None:
        """The run drew on something with ``restriction``: its reply inherits it."""
        await self._append(active, partial(ContextDrawn, restriction=restriction))

    async def _append(self, active: ActiveRun, step: Callable[[ReplyState], Event]) -> None:
        """Carry out ``step`` of the reply as decided so far; what it streams goes through
        the group commit, judged before it. Refused there because the members changed
        meanwhile (``MembersMoved``: on another node, not in force here), it is judged
        again by them as stored."""
        for attempt in range(MAX_JUDGED):
            before = active.reply
            effects = handle(self.room.writer.view(), step(before))
            if effects.reply is not None:
                active.reply = effects.reply  # what it drew on counts while it is stored
            if effects.append is None:
                return
            try:
                await self.room.writer.append(effects.append)
                return
            except MembersMoved:
                active.reply = before
                if attempt + 1 == MAX_JUDGED:
                    raise

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
        """Store a tool step (its full detail server-side) and show it in the document,
        as the entry ``step_id``."""
        issuers = tuple(s.user_id for s in active.scope.issuers)
        now = self.room.now_ms()
        step = ToolStepTaken(active.reply, issuers, tool, status, detail, restriction, now, step_id)
        await self.room.writer.step(step, now)

    async def finish(
        self, active: ActiveRun, ending: Ending | None, audit: Sequence[AuditRecord] = ()
    ) -> None:
        """Settle a run: answered without an ``ending``, else ended by it; a restricted
        reply's full text, the run's audit records and its usage are stored with it."""
        now = self.room.now_ms()
        text = "".join(active.text)
        await self.room.writer.step(
            RunFinished(active.run, ending, now, active.reply, text, tuple(audit)),
            now,
            usage=active.usage,
        )
