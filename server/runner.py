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
from dataclasses import dataclass

from server.room import ActiveRun, SessionRoom
from server.summarise import Summariser
from server.usage import UsageLedger
from session.errors import ProviderError, QuotaExceeded, Unavailable
from session.lifecycle import PromptStatus, ReplyStatus
from session.model import ModelProvider, ModelRequest, TextDelta, Usage
from session.queue import Run

log = logging.getLogger("parley.runner")

MAX_BATCH_CHARS = 4096
DELTA_BUFFER = 1024
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class RunOutcome:
    status: PromptStatus
    reason: str | None = None
    reply_status: ReplyStatus | None = None
    usage: Usage | None = None


class SessionRunner:
    def __init__(self, room: SessionRoom, provider: ModelProvider, run_timeout_s: float) -> None:
        self.room = room
        self.provider = provider
        self.run_timeout_s = run_timeout_s
        self.task: asyncio.Task[None] | None = None
        self.summariser = Summariser(room, provider, run_timeout_s)
        self.usage = UsageLedger(room.store, room.clock)

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
        reply_id = await self.room.start_run(run, self.room.model or self.provider.name)
        if reply_id is None:
            return False  # the queue changed under us (cancel, revoked author): ask again
        built = self.room.context_for(run.ids)
        active = ActiveRun(run, reply_id)
        self.room.active_run = active
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
                    PromptStatus.FAILED,
                    f"too_large: the prompt with the pinned messages and facts needs "
                    f"{built.tokens} tokens; the window leaves {built.budget}",
                )
            else:
                outcome = await self._execute(active, built.request)
                if outcome.usage is not None:
                    await self._record_usage(built.request, reply_id, outcome.usage)
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
                "reason": outcome.reason,
                "seconds": round(elapsed, 3),
            },
        )
        return built.overflowed

    async def _execute(self, active: ActiveRun, request: ModelRequest) -> RunOutcome:
        try:
            await self.usage.admit(self.room.session_id, request.issuers)
        except (QuotaExceeded, Unavailable) as exc:  # no model call without a quota check
            return RunOutcome(PromptStatus.FAILED, f"{exc.code.value}: {exc.message}")
        if active.stopped is not None:  # cancelled while the quotas were read
            status, reason, reply_status = active.stopped
            return RunOutcome(status, reason, reply_status)
        active.task = asyncio.create_task(self._stream(active, request))
        try:
            async with asyncio.timeout(self.run_timeout_s):
                usage = await active.task
            return RunOutcome(PromptStatus.DONE, usage=usage)
        except TimeoutError:
            return RunOutcome(
                PromptStatus.FAILED, f"timeout: no answer within {self.run_timeout_s:g} s"
            )
        except asyncio.CancelledError:
            if active.stopped is None:
                active.task.cancel()
                raise
            status, reason, reply_status = active.stopped
            return RunOutcome(status, reason, reply_status)
        except ProviderError as exc:
            log.warning("model call failed", extra={"error": exc.message, "status": exc.status})
            return RunOutcome(PromptStatus.FAILED, f"{exc.code.value}: {exc.message}")
        except Exception as exc:
            log.exception("model call failed")
            return RunOutcome(PromptStatus.FAILED, f"provider error: {type(exc).__name__}: {exc}")

    async def _stream(self, active: ActiveRun, request: ModelRequest) -> Usage | None:
        deltas: asyncio.Queue[str | None] = asyncio.Queue(maxsize=DELTA_BUFFER)
        usage: list[Usage] = []
        errors: list[BaseException] = []

        async def read() -> None:
            stream = self.provider.stream(request)
            try:
                async for event in stream:
                    if isinstance(event, TextDelta) and event.text:
                        await deltas.put(event.text)
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
                size = len(chunk)
                while size < MAX_BATCH_CHARS:
                    try:
                        more = deltas.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if more is None:
                        finished = True
                        break
                    parts.append(more)
                    size += len(more)
                await self.room.append_reply(active.reply_id, "".join(parts))
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if errors:
            raise errors[0]
        return usage[-1] if usage else None

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
                    outcome.status,
                    outcome.reason,
                    reply_status=outcome.reply_status,
                )
                return
            except Unavailable:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                await asyncio.sleep(delay)
