"""Side-thread runs: each answers one prompt of a private side-thread, beside the session's
queue, on its own task (the core bounds how many run at once).

A run reads the session up to the thread's anchor and the thread's turns, in its owner's
scope as of now; its steps go to the thread alone (``ThreadSteps``: the owner's sockets and
the thread's document); it is settled, with its audit, through the core. The model call
itself is the session runner's (``SessionRunner.execute`` and ``settle``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from parley.authz.scope import RunScope
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.back_references import BackReference
from parley.session.core import ReplyState
from parley.session.core.effects import BeginThreadRun
from parley.session.core.runs import run_audit_base, too_large
from parley.session.errors import Forbidden
from parley.session.input_budget import InputBudget
from parley.session.queue import PendingPrompt, Run
from parley.session.reasons import Ending, ReasonCode

if TYPE_CHECKING:
    from parley.server.runtime.runner import SessionRunner
    from parley.server.runtime.side_threads import ThreadSteps


class ThreadRuns:
    """The side-thread runs of one session's runner, each on its own task."""

    runner: BackReference[SessionRunner] = BackReference()  # the runner holds this part

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, begin: BeginThreadRun) -> None:
        """Start the run of a prompt just stored. It is in flight (``SideThreads.active``)
        from here, not from its task's first step: a drain begun in between saw no run,
        the unload cancelled it, and the next start failed it ``server_restart``."""
        runner, room = self.runner, self.runner.room
        threads = room.side_threads
        thread = threads.threads.get(begin.thread_id)
        if thread is None:  # deleted before its run began
            return
        prompt = PendingPrompt(begin.prompt_id, thread.anchor_seq, begin.owner)
        reply = ReplyState(begin.reply_id)
        steps = threads.steps(begin, author=runner.reply_author())
        refused: Forbidden | None = None
        try:
            scope = room.runs.scope_for([begin.owner])
        except Forbidden as exc:  # the owner lost the right to prompt since
            scope, refused = RunScope((), ()), exc
        active = ActiveRun(Run((prompt,)), reply, scope, steps)
        active.audit_base = {  # the run's audit until its build says what it drew on
            "prompt_ids": [prompt.id],
            "reply_id": reply.reply_id,
            "issuers": [{"user_id": begin.owner}],
            "thread_id": thread.id,
        }
        threads.active[thread.id] = active
        name = f"thread:{room.session_id}:{begin.thread_id}"
        task = asyncio.create_task(self.run(active, steps, refused), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """Cancel the runs in flight (one cut off here is marked when the session is
        loaded next)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, active: ActiveRun, steps: ThreadSteps, refused: Forbidden | None) -> None:
        """Answer a side-thread prompt (see the module's docstring), its run begun by
        ``start`` (``refused``: why its owner may no longer prompt)."""
        runner, room = self.runner, self.runner.room
        threads = room.side_threads
        thread_id = steps.begin.thread_id
        prompt, scope = active.run.prompts[0], active.scope
        try:
            thread = threads.threads.get(thread_id)
            if thread is None:  # deleted before its run began: nothing left to answer
                return
            if refused is not None:
                await runner.settle(active, Ending(ReasonCode.FORBIDDEN, refused.message))
                return
            await steps.started(active)
            # The thread's first build folds the history up to its anchor: ahead, in steps,
            # with the loop free between them, so the build folds only the new turns. A
            # run stopped meanwhile (its thread deleted or closed) folds no further: an
            # editor opening, asking in and deleting side-threads kept every fold going.
            # Its owner pays what was folded anew as a preview's build (review RN-2:
            # rotating over more threads than the folds kept, every prompt refolded).
            folded = await room.context.fold_ahead(
                (prompt.id,), scope, thread, stopped=lambda: active.stopped is not None
            )
            room.charge_build(prompt.author, folded)
            if active.stopped is not None:
                await runner.settle(active, active.stopped)
                return
            built = room.context.build((prompt.id,), scope, thread)
            request = built.request
            seen = room.context.audit_of(built, thread)
            base = run_audit_base(active.run, active.reply_id, scope, seen)
            active.audit_base = {**base, "thread_id": thread.id}
            await steps.widen(active, seen.restriction)
            ending = too_large(built.tokens, built.budget, built.fixed_parts)
            if ending is None:
                budget = InputBudget(built.budget, built.tokens)
                outcome = await runner.execute(active, request, budget)
                runner.keep_usage(active, request)
                ending = outcome.ending
            await runner.settle(active, ending)
        finally:
            if threads.active.get(thread_id) is active:
                del threads.active[thread_id]
            active.finished.set()
