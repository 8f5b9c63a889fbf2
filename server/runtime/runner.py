"""The run loop of one session: take the next prompt, stream the model's reply, settle it.

One loop per loaded session, so sessions run in parallel while each runs one call at a time.
The provider is read by a separate task into a bounded buffer; the writer appends whatever
has arrived since its last commit in one update, so a fast model costs a few commits, not
one per token, while a slow one still shows every token at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from server.runtime.active_run import ActiveRun
from server.runtime.room import SessionRoom
from server.runtime.summarise import Summariser
from server.runtime.tools import ToolRunner
from server.store.usage import UsageLedger
from session.errors import ProviderError, QuotaExceeded, Unavailable
from session.lifecycle import PromptStatus
from session.model import ModelProvider, ModelRequest, TextDelta, ToolCall, Usage
from session.queue import Run
from session.reasons import Ending, ReasonCode
from session.toolloop import (
    CallModel,
    CallTool,
    LoopLimits,
    LoopOutcome,
    ModelTurn,
    ToolResult,
    tool_loop,
)

log = logging.getLogger("parley.runner")

MAX_BATCH_CHARS = 4096
DELTA_BUFFER = 1024
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class RunOutcome:
    """How a run ended: answered (no ``ending``) or not, and what it used."""

    ending: Ending | None = None
    usage: Usage | None = None

    @property
    def status(self) -> PromptStatus:
        return PromptStatus.DONE if self.ending is None else self.ending.status


class _Deltas:
    """The model's text on its way to the document: a bounded queue that tells when it
    holds a full batch, or the end of the stream (``None``)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=DELTA_BUFFER)
        self._chars = 0
        self._need = MAX_BATCH_CHARS  # queued characters that make the batch full
        self._ready = asyncio.Event()

    async def put(self, text: str | None) -> None:
        await self._queue.put(text)
        self._chars += len(text or "")
        if text is None or self._chars >= self._need:
            self._ready.set()

    async def get(self) -> str | None:
        text = await self._queue.get()
        self._chars -= len(text or "")
        return text

    def take(self, parts: list[str], size: int) -> tuple[int, bool]:
        """Move what is queued into ``parts`` (``size`` characters so far), up to
        ``MAX_BATCH_CHARS`` in all; returns the new size, and whether the stream ended."""
        while size < MAX_BATCH_CHARS:
            try:
                more = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return size, False
            if more is None:
                return size, True
            self._chars -= len(more)
            parts.append(more)
            size += len(more)
        return size, False

    async def fill(self, seconds: float, size: int) -> bool:
        """Wait up to ``seconds`` for more text for a batch of ``size`` characters; True
        if the batch filled, or the stream ended, first."""
        self._need = MAX_BATCH_CHARS - size
        self._ready.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._ready.wait()
                return True
        return False


class SessionRunner:
    def __init__(self, room: SessionRoom, provider: ModelProvider, run_timeout_s: float) -> None:
        self.room = room
        self.provider = provider
        self.run_timeout_s = run_timeout_s
        self.task: asyncio.Task[None] | None = None
        self.summariser = Summariser(room, provider, run_timeout_s)
        self.usage = UsageLedger(room.store, room.clock)
        self.tools = ToolRunner(room.settings, room.access)
        self.limits = LoopLimits(
            room.settings.max_tool_steps, room.settings.max_tool_calls_per_turn
        )

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"runner:{self.room.session_id}")

    async def stop(self) -> None:
        await self.summariser.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _loop(self) -> None:
        failures = 0
        while not self.room.closed:
            run = None if self.room.draining else self.room.queue.next()
            if run is None:
                self.room.wakeup.clear()
                if self.room.draining or self.room.queue.next() is None:
                    await self.room.wakeup.wait()
                continue
            try:
                overflowed = await self._run(run)
                failures = 0
                if overflowed:
                    self.summariser.poke()
            except Unavailable:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                log.warning("store unavailable; retrying run", extra={"delay_s": delay})
                await asyncio.sleep(delay)

    async def _run(self, run: Run) -> bool:
        """Run ``run``; True when its history did not fit (a summary may be due)."""
        # The reply is signed by the model that writes it: the session's, or the default.
        started_run = await self.room.start_run(run, self.room.model or self.provider.name)
        if started_run is None:
            return False  # the queue changed under us (cancel, revoked author): ask again
        reply_id, scope = started_run
        built = self.room.context_for(run.ids, scope)
        request = replace(built.request, tools=scope.tool_specs)
        active = ActiveRun(run, reply_id, scope=scope)
        seen = self.room.context_audit(built)
        active.audit_base = {
            "prompt_ids": list(run.ids),
            "reply_id": reply_id,
            "issuers": [{"user_id": s.user_id, "role": s.role} for s in scope.issuers],
            "capabilities": sorted(scope.capabilities),
            "tools_offered": [t.spec.name for t in scope.tools],
            "context_included": seen.included,
            "context_withheld": seen.withheld,
        }
        self.room.active_run = active
        await self.room.widen(active, seen.restriction)
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
        try:
            if built.tokens > built.budget:
                # Pins, facts and the prompts alone overflow the window: no call can fit.
                outcome = RunOutcome(
                    Ending(
                        ReasonCode.TOO_LARGE,
                        f"the prompt with the pinned messages and facts needs "
                        f"{built.tokens} tokens; the window leaves {built.budget}",
                    )
                )
            else:
                outcome = await self._execute(active, request)
                if outcome.usage is not None:
                    await self._record_usage(request, reply_id, outcome.usage)
            await self._settle(active, outcome)
        finally:
            self.room.active_run = None
            active.finished.set()
        elapsed = time.monotonic() - started
        metrics.model_call.observe(elapsed)
        metrics.runs.labels(status=outcome.status.value).inc()
        if outcome.usage is not None:
            metrics.tokens.labels(direction="in").inc(outcome.usage.input_tokens)
            metrics.tokens.labels(direction="out").inc(outcome.usage.output_tokens)
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
        return built.overflowed

    async def _execute(self, active: ActiveRun, request: ModelRequest) -> RunOutcome:
        try:
            await self.usage.admit(self.room.session_id, request.issuers)
        except QuotaExceeded as exc:  # no model call without a quota check
            return RunOutcome(Ending(ReasonCode.QUOTA_EXCEEDED, exc.message))
        except Unavailable as exc:
            return RunOutcome(Ending(ReasonCode.UNAVAILABLE, exc.message))
        if active.stopped is not None:  # cancelled while the quotas were read
            return RunOutcome(active.stopped)
        task = asyncio.create_task(self._drive(active, request))
        active.task = task
        try:
            async with asyncio.timeout(self.run_timeout_s):
                loop = await task
            return RunOutcome(usage=Usage(loop.input_tokens, loop.output_tokens))
        except TimeoutError:
            ending = Ending(ReasonCode.TIMEOUT, f"no answer within {self.run_timeout_s:g} s")
            return RunOutcome(ending)
        except asyncio.CancelledError:
            if active.stopped is None:
                active.task.cancel()
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

    async def _drive(self, active: ActiveRun, request: ModelRequest) -> LoopOutcome:
        """Run the tool loop: each effect it yields is performed here, within the scope."""
        scope = active.scope
        assert scope is not None
        webhooks = self.room.webhooks()

        def refuse(name: str) -> str | None:
            return None if scope.tool(name) else f"tool {name!r} is not offered to this run"

        loop = tool_loop(request, refuse, self.limits)
        effect = next(loop)
        while True:
            result: ModelTurn | ToolResult | None = None
            if isinstance(effect, CallModel):
                started, clock = self.room.now_ms(), time.monotonic()
                result = await self._stream(active, effect.request)
                active.model_calls.append(
                    {
                        "step": effect.step,
                        "started_at": started,
                        "ms": round((time.monotonic() - clock) * 1000, 1),
                        "input_tokens": None if result.usage is None else result.usage.input_tokens,
                        "output_tokens": (
                            None if result.usage is None else result.usage.output_tokens
                        ),
                        "tool_calls": [],
                    }
                )
            elif isinstance(effect, CallTool):
                call = effect.call
                executed = await self.tools.run(
                    self.room.session_id, call.name, call.id, effect.arguments, scope, webhooks
                )
                await self.room.widen(active, executed.restriction)
                status = "error" if executed.is_error else "done"
                detail = f"arguments: {call.arguments}\nresult: {executed.content}"
                await self.room.add_tool_step(
                    active,
                    tool=call.name,
                    status=status,
                    detail=detail,
                    restriction=executed.restriction,
                )
                self._note_call(active, call, status)
                result = ToolResult(executed.content, executed.is_error)
            else:
                call = effect.call
                log.warning(
                    "tool call refused",
                    extra={"session_id": self.room.session_id, "tool": call.name[:100]},
                )
                await self.room.add_tool_step(
                    active,
                    tool=call.name[:64],
                    status="refused",
                    detail=f"arguments: {call.arguments}\nrefused: {effect.reason}",
                    restriction=(),
                )
                self._note_call(active, call, "refused")
                active.refusals.append(
                    {"reply_id": active.reply_id, "tool": call.name[:100], "reason": effect.reason}
                )
            try:
                effect = loop.send(result)
            except StopIteration as stop:
                outcome: LoopOutcome = stop.value
                return outcome

    @staticmethod
    def _note_call(active: ActiveRun, call: ToolCall, outcome: str) -> None:
        active.model_calls[-1]["tool_calls"].append(
            {"id": call.id[:100], "tool": call.name[:100], "outcome": outcome}
        )

    async def _stream(self, active: ActiveRun, request: ModelRequest) -> ModelTurn:
        deltas = _Deltas()
        usage: list[Usage] = []
        calls: list[ToolCall] = []
        text: list[str] = []
        errors: list[BaseException] = []

        async def read() -> None:
            stream = self.provider.stream(request)
            try:
                async for event in stream:
                    if isinstance(event, TextDelta) and event.text:
                        await deltas.put(event.text)
                    elif isinstance(event, ToolCall):
                        calls.append(event)
                    elif isinstance(event, Usage):
                        usage.append(event)
            except Exception as exc:
                errors.append(exc)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            await deltas.put(None)

        reader = asyncio.create_task(read())
        started = time.monotonic()
        interval = self.room.settings.stream_interval_ms / 1000
        sent = -interval
        try:
            finished = False
            first = True
            while not finished:
                chunk = await deltas.get()
                if chunk is None:
                    break
                if first:
                    self.room.metrics.first_token.observe(time.monotonic() - started)
                    first = False
                parts = [chunk]
                size, finished = deltas.take(parts, len(chunk))
                # Batches go out at most once per interval, on a grid (so a late wake-up
                # does not push every later batch back); what arrives meanwhile joins. A
                # batch that is full, or the stream's last, goes at once.
                now = time.monotonic()
                due = sent + interval
                sent = now
                if due > now and not finished and size < MAX_BATCH_CHARS:
                    if not await deltas.fill(due - now, size):
                        sent = due
                    size, finished = deltas.take(parts, size)
                text += parts
                await self.room.append_reply(active, "".join(parts))
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if errors:
            raise errors[0]
        return ModelTurn("".join(text), tuple(calls), usage[-1] if usage else None)

    @staticmethod
    def _audit_records(
        active: ActiveRun, ending: Ending | None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """One record per model call, one per refused tool call, one for a run that ended
        unanswered (with its ``reason_code``)."""
        actor = active.audit_base["issuers"][0]["user_id"]
        records = [
            ("model_call", actor, {**active.audit_base, **call}) for call in active.model_calls
        ]
        records += [("tool_refused", actor, refusal) for refusal in active.refusals]
        if ending is not None:
            ended = {
                "prompt_ids": list(active.run.ids),
                "reply_id": active.reply_id,
                "reason_code": ending.code.value,
                "reason": ending.reason,
            }
            records.append(("run_ended", actor, ended))
        return records

    async def _record_usage(self, request: ModelRequest, reply_id: str, usage: Usage) -> None:
        try:
            await self.usage.record(
                self.room.session_id,
                request.issuers,
                request.model or self.provider.name,
                reply_id,
                usage,
            )
        except Unavailable:
            log.warning("usage not recorded: database unavailable", extra={"reply_id": reply_id})

    async def _settle(self, active: ActiveRun, outcome: RunOutcome) -> None:
        """Store the run's outcome; keep trying while the database is away."""
        failures = 0
        while not self.room.closed:  # a closed room is recovered from the store on reload
            try:
                await self.room.finish_run(
                    active.run,
                    outcome.ending,
                    active=active,
                    audit=self._audit_records(active, outcome.ending),
                )
                return
            except Unavailable:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                await asyncio.sleep(delay)
