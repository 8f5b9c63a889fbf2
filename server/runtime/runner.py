"""The run loop of one session: take the next prompt, stream the model's reply, settle it.

One loop per loaded session, so sessions run in parallel while each runs one call at a time.
The provider is read by a separate task into a bounded buffer; the writer appends whatever
has arrived while its last batch was stored and sent in one update (``session.pacing``),
so a slow model shows every token at once and a fast one costs a few commits, not one per
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from parley.authz.policy import restriction_to_json
from parley.authz.scope import ContextSeen, RunScope
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.back_references import weak_method
from parley.server.runtime.deltas import MAX_BATCH_CHARS, Deltas
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.summarise import Summariser
from parley.server.runtime.thread_runs import ThreadRuns
from parley.server.runtime.tools import Executed, ToolRunner
from parley.server.store.usage import UsageLedger
from parley.session.core.runs import (
    CUT_SHORT,
    cut_short,
    drew_on_ending,
    run_audit,
    run_audit_base,
    shown_ending,
    shown_tool_name,
    too_large,
)
from parley.session.errors import Forbidden, ProviderError, QuotaExceeded, Unavailable
from parley.session.input_budget import InputBudget
from parley.session.lifecycle import PromptStatus, ToolStepStatus
from parley.session.model import (
    ModelProvider,
    ModelRequest,
    StreamedText,
    TextDelta,
    ToolCall,
    Usage,
    storable_call,
)
from parley.session.pacing import ReplyPacer
from parley.session.reasons import Ending, ReasonCode
from parley.session.tokens import estimated_usage
from parley.session.toolloop import (
    CallModel,
    CallTool,
    LoopLimits,
    LoopOutcome,
    ModelTurn,
    ToolResult,
    tool_loop,
)

log = logging.getLogger("parley.runner")

RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class RunOutcome:
    """How a run ended: answered (no ``ending``) or not (what it used: ``ActiveRun.used``)."""

    ending: Ending | None = None

    @property
    def status(self) -> PromptStatus:
        return PromptStatus.DONE if self.ending is None else self.ending.status


@dataclass(slots=True)
class CallMade:
    """One model call as its audit record needs it: whether its request went to the
    provider (``asked``), the usage the provider reported, and whether it streamed whole."""

    asked: bool = False
    usage: Usage | None = None
    whole: bool = False


class SessionRunner:
    def __init__(self, room: SessionRoom, provider: ModelProvider, run_timeout_s: float) -> None:
        self.room = room
        self.provider = provider
        self.run_timeout_s = run_timeout_s
        self.task: asyncio.Task[None] | None = None
        self.thread_runs = ThreadRuns(self)
        self.usage = UsageLedger(room.store, room.clock)
        self.summariser = Summariser(room, provider, run_timeout_s, self.usage)
        self.tools = ToolRunner(room.settings, room.access, room.clock, room.document_search)
        self.limits = LoopLimits(
            room.settings.max_tool_steps, room.settings.max_tool_calls_per_turn
        )

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"runner:{self.room.session_id}")
        # Weakly: the room holding its runner would put the two in a reference cycle.
        self.room.side_threads.start_run = weak_method(self.thread_runs.start)
        self.room.runs.reply_author = weak_method(self.reply_author)

    def reply_author(self) -> str:
        """The reply is signed by the model that writes it: the session's, or the default."""
        return self.room.model or self.provider.name

    async def stop(self) -> None:
        self.room.runs.reply_author = None  # no run starts with a prompt any more
        self.room.side_threads.start_run = None  # nor with a side-thread prompt
        await self.summariser.stop()
        await self.thread_runs.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        begun = self.room.runs.take_begun()
        if begun is not None:  # begun with its prompt, never taken: whoever waits goes on
            self.room.runs.end(begun)

    async def _loop(self) -> None:
        failures = 0
        runs = self.room.runs
        while not self.room.closed:
            if not runs.due():
                await runs.wait_for_work()
                continue
            try:
                overflowed = await self._run()
                failures = 0
                if overflowed:
                    self.summariser.poke(overflowed)
            except Unavailable:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                log.warning("store unavailable; retrying run", extra={"delay_s": delay})
                await asyncio.sleep(delay)

    async def _run(self) -> tuple[str, ...]:
        """Run the next run; its issuers when its history did not fit (a summary may be
        due, paid by them), else none."""
        runs = self.room.runs
        active = runs.take_begun() or await runs.start(self.reply_author())
        if active is None:
            return ()  # the queue changed under us (cancel, revoked author): ask again
        try:
            return await self._answer(active)
        finally:  # whatever happens: whoever waits for the run (a cancel, a drain) goes on
            self.room.runs.end(active)

    async def _answer(self, active: ActiveRun) -> tuple[str, ...]:
        run, reply_id, scope = active.run, active.reply_id, active.scope
        # What the build reads, folded ahead in steps with the loop free between them, so
        # the build right after folds only what is new. A run whose issuers read less than
        # every member is built in a fold of its own, which nothing folded before: one
        # call folded the whole history (20,000-60,000 entries: a long block of every
        # session of the node). Stopped meanwhile, the run folds no further.
        await self.room.context.fold_ahead(
            run.ids, scope, stopped=lambda: active.stopped is not None
        )
        if active.stopped is not None:
            active.audit_base = run_audit_base(run, reply_id, scope, ContextSeen([], [], ()))
            await self.settle(active, active.stopped)
            self.room.metrics.runs.labels(status=active.stopped.status.value).inc()
            return ()
        built = self.room.context.build(run.ids, scope)
        request = built.request
        seen = self.room.context.audit_of(built)
        active.audit_base = run_audit_base(run, reply_id, scope, seen)
        await self.room.runs.widen(active, seen.restriction)
        metrics = self.room.metrics
        started = time.monotonic()
        first = self.room.doc.entry(run.ids[0])
        metrics.queue_wait.observe(max(self.room.now_ms() - first.created_at, 0) / 1000)
        log.info(
            "run started",
            extra={
                "session_id": self.room.session_id,
                "prompt_ids": ",".join(run.ids),
                "reply_id": reply_id,
            },
        )
        overflow = too_large(built.tokens, built.budget, built.fixed_parts)
        if overflow is not None:
            outcome = RunOutcome(overflow)
        else:
            budget = InputBudget(built.budget, built.tokens)
            outcome = await self.execute(active, request, budget)
            self.keep_usage(active, request)
        await self.settle(active, outcome.ending)
        elapsed = time.monotonic() - started
        metrics.model_call.observe(elapsed)
        metrics.runs.labels(status=outcome.status.value).inc()
        if active.used is not None:
            metrics.tokens.labels(direction="in").inc(active.used.input_tokens)
            metrics.tokens.labels(direction="out").inc(active.used.output_tokens)
        if self.room.doc.has_entry(reply_id):
            metrics.reply_chars.observe(len(self.room.doc.entry(reply_id).content))
        log.info(
            "run finished",
            extra={
                "session_id": self.room.session_id,
                "prompt_ids": ",".join(run.ids),
                "reply_id": reply_id,
                "status": outcome.status.value,
                "reason_code": None if outcome.ending is None else outcome.ending.code.value,
                "seconds": round(elapsed, 3),
            },
        )
        return active.run.authors if built.overflowed else ()

    async def execute(
        self, active: ActiveRun, request: ModelRequest, budget: InputBudget
    ) -> RunOutcome:
        """Answer the run: the quota check, then the tool loop, each call's input held to
        ``budget`` (the first build's tokens, the window it was built for)."""
        try:
            await self.usage.admit(self.room.session_id, request.issuers, active.quotas)
        except QuotaExceeded as exc:  # no model call without a quota check
            return RunOutcome(Ending(ReasonCode.QUOTA_EXCEEDED, exc.message, retry_at=exc.retry_at))
        except Unavailable as exc:
            return RunOutcome(Ending(ReasonCode.UNAVAILABLE, exc.message))
        if active.stopped is not None:  # cancelled while the quotas were read
            return RunOutcome(active.stopped)
        # The call runs in this task, not one of its own: a task's first step waits a turn
        # of the event loop, which on a busy server is milliseconds before the model is
        # asked. ``active.stop`` cancels this task; that cancel is taken back here.
        task = asyncio.current_task()
        active.task = task
        try:
            async with asyncio.timeout(self.run_timeout_s):
                loop = await self._drive(active, request, budget)
            return RunOutcome(loop if isinstance(loop, Ending) else loop.ending)
        except TimeoutError:
            ending = Ending(ReasonCode.TIMEOUT, f"no answer within {self.run_timeout_s:g} s")
            return RunOutcome(ending)
        except asyncio.CancelledError:
            # Not the run's stop, or someone else's cancel besides it (the room closing):
            # the runner's own task must end.
            if active.stopped is None or task is None or task.uncancel() > 0:
                raise
            return RunOutcome(active.stopped)
        except ProviderError as exc:
            log.warning("model call failed", extra={"error": exc.message, "status": exc.status})
            return RunOutcome(Ending(ReasonCode.PROVIDER_ERROR, exc.message))
        except Unavailable as exc:  # the reply's text could not be stored: not the model
            log.warning("reply not stored", extra={"error": exc.message})
            return RunOutcome(Ending(ReasonCode.STORAGE_ERROR, exc.message))
        except Exception as exc:
            log.exception("run failed")
            return RunOutcome(Ending(ReasonCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            active.task = None  # a stop from now on must not cancel the settling

    async def _drive(
        self, active: ActiveRun, request: ModelRequest, budget: InputBudget
    ) -> LoopOutcome | Ending:
        """Run the tool loop: each effect it yields is performed here, within the scope.
        Ended (``forbidden``) before a model or tool call once the issuers may no longer
        all read what the run drew on: the call would carry it on their behalf. (A grant
        change stops the run at once, ``session.core.runs.unreadable_runs``; this holds
        each step to the same rule whatever told the run of it, and for a tool result
        whose readers leave out an issuer.)"""
        offered = active.scope

        def scope_now() -> RunScope | None:
            return self._scope_now(active)

        def refuse(name: str) -> str | None:
            if offered.tool(name) is None:
                return f"tool {name!r} is not offered to this run"
            now = scope_now()
            if now is None or now.tool(name) is None:
                return f"tool {name!r} is no longer allowed to the run's issuers"
            return None

        loop = tool_loop(request, refuse, self.limits, budget)
        effect = next(loop)
        while True:
            result: ModelTurn | ToolResult | None = None
            if isinstance(effect, CallModel | CallTool):
                authors, drawn = active.run.authors, active.reply.restriction
                ending = drew_on_ending(self.room.subject, authors, drawn)
                if ending is not None:
                    loop.close()
                    return ending
            if isinstance(effect, CallModel):
                started, clock = self.room.now_ms(), time.monotonic()
                # What this call reads: its counts tell its size (``session.core.audit_view``).
                drew_on = restriction_to_json(active.reply.restriction)
                made = CallMade()
                try:
                    result = await self._stream(active, effect.request, made)
                    made.whole = True
                finally:
                    # A call cut short (a stop, a cancel, a time-out, a broken stream) is
                    # audited too, once its request went; its run's ending names why.
                    if made.asked:
                        used = made.usage
                        active.model_calls.append(
                            {
                                "step": effect.step,
                                "drew_on": drew_on,
                                "started_at": started,
                                "ms": round((time.monotonic() - clock) * 1000, 1),
                                "input_tokens": None if used is None else used.input_tokens,
                                "output_tokens": None if used is None else used.output_tokens,
                                "tool_calls": [],
                                "cut_off": None if made.whole else CUT_SHORT,
                            }
                        )
            elif isinstance(effect, CallTool):
                result = await self._call_tool(active, effect, scope_now())
            else:
                call, step_id = effect.call, uuid.uuid4().hex
                log.warning(
                    "tool call refused",
                    extra={"session_id": self.room.session_id, "tool": call.name[:100]},
                )
                readable = self._readable_by_all(active)
                name = shown_tool_name(call.name, readable)
                await active.steps.add_tool_step(
                    active,
                    step_id=step_id,
                    tool=name,
                    status="refused",
                    detail=f"arguments: {call.arguments}\nrefused: {effect.reason}",
                    restriction=(),
                )
                audited = shown_tool_name(call.name, readable and not active.steps.private)
                self._note_call(active, step_id, audited, "refused")
                reason = effect.reason.replace(repr(call.name), repr(audited))
                active.refusals.append(
                    {"reply_id": active.reply_id, "tool": audited, "reason": reason}
                )
            try:
                effect = loop.send(result)
            except StopIteration as stop:
                outcome: LoopOutcome = stop.value
                return outcome

    async def _call_tool(
        self, active: ActiveRun, effect: CallTool, now: RunScope | None
    ) -> ToolResult:
        """Run a tool call the loop judged allowed, with the issuers' rights ``now`` (None:
        they left between the judgement and the call). A call that leaves the server (a
        webhook) is stored as a ``running`` step and noted in the model call's audit
        before it goes, so a run cut short while it is out (a cancel, a time-out, a crash)
        still names it: the run's finish, or the next load after a crash, ends it."""
        # Named by the server, not by the call's own id: the model or provider chose that
        # after reading what the run read, and it may spell it out.
        call, step_id = effect.call, uuid.uuid4().hex
        name = call.name[:100]
        relayed = self.tools.leaves_the_server(call.name, self.room.webhooks())
        if now is None:
            executed = Executed("error: the run's issuers are no longer members", True)
        else:
            if relayed:
                await active.steps.add_tool_step(
                    active,
                    step_id=step_id,
                    tool=call.name,
                    status=ToolStepStatus.RUNNING,
                    detail=f"arguments: {call.arguments}",
                    restriction=(),
                )
                self._note_call(active, step_id, name, ToolStepStatus.RUNNING)
                # Judged again as of that write's commit: a grant or a custom role changed
                # meanwhile (on another node, say: read by its fence) binds the call.
                now = self._scope_now(active)
            if now is None or now.tool(call.name) is None:
                executed = Executed(
                    "error: the tool is no longer allowed to the run's issuers", True
                )
            else:
                executed = await self.tools.run(
                    self.room.session_id,
                    call.name,
                    step_id,
                    effect.arguments,
                    now,
                    self.room.webhooks(),
                )
        await active.steps.widen(active, executed.restriction)
        status = ToolStepStatus.ERROR if executed.is_error else ToolStepStatus.DONE
        await active.steps.add_tool_step(
            active,
            step_id=step_id,
            tool=call.name,
            status=status,
            detail=f"arguments: {call.arguments}\nresult: {executed.content}",
            restriction=executed.restriction,
        )
        self._note_call(active, step_id, name, status)
        return ToolResult(executed.content, executed.is_error, relayed=relayed)

    def _scope_now(self, active: ActiveRun) -> RunScope | None:
        """The run's scope as of this step: grants change while a run goes on (a role
        changed, a custom role edited), and a tool step acts with its issuers' rights now,
        not those it started with. None once none of them is a member."""
        try:
            return self.room.runs.scope_for(active.run.authors, preview=True)
        except Forbidden:
            return None

    def _readable_by_all(self, active: ActiveRun) -> bool:
        """Whether every member may read what the run drew on so far."""
        restriction = active.reply.restriction
        return not restriction or self.room.context.everyone_may_read(restriction)

    @staticmethod
    def _note_call(active: ActiveRun, step_id: str, name: str, outcome: str) -> None:
        """Note a tool call in the model call's audit record, by the id of the tool step
        it was taken as (the server's, as a webhook tool is given it); noted ``running``
        before it went, its outcome replaces that."""
        calls = active.model_calls[-1]["tool_calls"]
        noted = next((c for c in calls if c["id"] == step_id), None)
        if noted is None:
            calls.append({"id": step_id, "tool": name, "outcome": str(outcome)})
        else:
            noted["outcome"] = str(outcome)

    async def _stream(self, active: ActiveRun, request: ModelRequest, made: CallMade) -> ModelTurn:
        deltas = Deltas()
        usage: list[Usage] = []
        calls: list[ToolCall] = []
        errors: list[BaseException] = []

        # All the text the model sent: at the stream's end, what was stored and sent; cut
        # short, what it is charged for (some of it may not have been sent on).
        received: list[str] = []

        async def read() -> None:
            stream = self.provider.stream(request)
            made.asked = True  # the request goes with the stream's first step
            streamed = StreamedText()
            try:
                async for received_event in stream:
                    if isinstance(received_event, TextDelta):
                        await text_in(streamed.piece(received_event.text))
                    elif isinstance(received_event, ToolCall):
                        calls.append(storable_call(received_event))
                    elif isinstance(received_event, Usage):
                        usage.append(received_event)
            except Exception as exc:
                errors.append(exc)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            await text_in(streamed.end())
            await deltas.put(None)

        async def text_in(text: str) -> None:
            if text:
                received.append(text)
                await deltas.put(text)

        reader = asyncio.create_task(read())
        started = time.monotonic()
        pacer = ReplyPacer(self.room.settings.stream_interval_ms / 1000)
        try:
            finished = False
            first = True
            while not finished:
                # Text already queued arrived while the last batch was stored and sent.
                waiting = deltas.queued()
                chunk = await deltas.get()
                if chunk is None:
                    break
                if first:
                    self.room.metrics.first_token.observe(time.monotonic() - started)
                    first = False
                parts = [chunk]
                size, finished = deltas.take(parts, len(chunk))
                now = time.monotonic()
                full = size >= MAX_BATCH_CHARS
                hold = pacer.hold(now, waiting=waiting, full=full, ended=finished)
                if hold > 0:  # saturated: what arrives meanwhile joins, up to a full batch
                    await deltas.fill(hold, size)
                    size, finished = deltas.take(parts, size)
                    now = time.monotonic()
                pacer.sent(now)
                await active.steps.append_reply(active, "".join(parts))
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            # Counted however the call ended: cut short after it streamed (a cancel, a
            # time-out, a broken stream), the provider reported nothing, and it is estimated.
            # A call that failed before its first token cost nothing.
            if usage:
                made.usage = usage[-1]
                active.count_usage(usage[-1])
            elif received or calls:
                active.count_usage(estimated_usage(request, received, calls))
        if errors:
            raise errors[0]
        return ModelTurn("".join(received), tuple(calls), usage[-1] if usage else None)

    def keep_usage(self, active: ActiveRun, request: ModelRequest) -> None:
        """What the run's model calls used, however it ended, stored with its finish
        (``settle``)."""
        if active.used is None:
            return
        model = request.model or self.provider.name
        issuers, used = request.issuers, active.used
        active.usage = self.usage.rows(self.room.session_id, issuers, model, active.reply_id, used)

    async def settle(self, active: ActiveRun, ending: Ending | None) -> None:
        """Store how the run ended (no ``ending``: answered); keep trying while the
        database is away."""
        failures = 0
        readable = self._readable_by_all(active)
        audited = shown_ending(ending, readable and not active.steps.private)
        ending = shown_ending(ending, readable)
        while not self.room.closed:  # a closed room is recovered from the store on reload
            try:
                cut_short(active.model_calls, ending)
                audit = run_audit(active.audit_base, active.model_calls, active.refusals, audited)
                await active.steps.finish(active, ending, audit)
                return
            except Unavailable:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                await asyncio.sleep(delay)
        await self._record_usage(active)

    async def _record_usage(self, active: ActiveRun) -> None:
        """The run was not settled here (its room closed): its model calls still count
        against the quotas."""
        try:
            await self.usage.store.record_usage(active.usage)
        except Unavailable:
            log.warning(
                "usage not recorded: database unavailable", extra={"reply_id": active.reply_id}
            )
