"""Summary calls: condense the turns that no longer fit, in the background of a session.

One task per session at a time, started after a run. Each call is a separate model call
with its own log line and metric (the audit trail of what was sent where); a failure is
logged and leaves the session as it was: runs go on with the turns that fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from parley.server.runtime.room import SessionRoom
from parley.session.errors import ParleyError
from parley.session.model import ModelProvider, TextDelta, Usage
from parley.session.summary import SummaryPlan, extended, summary_request

log = logging.getLogger("parley.summaries")


class Summariser:
    def __init__(self, room: SessionRoom, provider: ModelProvider, timeout_s: float) -> None:
        self.room = room
        self.provider = provider
        self.timeout_s = timeout_s
        self.task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Start summarising unless a call is under way (the task plans, and ends at once
        when there is not yet enough to summarise)."""
        if self.room.closed or (self.task is not None and not self.task.done()):
            return
        self.task = asyncio.create_task(self._run(), name=f"summaries:{self.room.session_id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        for _ in range(self.room.settings.summary_calls_per_run):
            plan = self.room.context.summary_plan()
            if plan is None or self.room.closed:
                return
            try:
                await self._summarise(plan)
            except (ParleyError, OSError, TimeoutError) as exc:
                self.room.metrics.summaries.labels(status="failed").inc()
                log.warning(
                    "summary call failed",
                    extra={"session_id": self.room.session_id, "error": str(exc)},
                )
                return

    async def _summarise(self, plan: SummaryPlan) -> None:
        room = self.room
        model = room.model or room.settings.model_spec(room.model).name
        request = summary_request(
            room.session_id, plan, room.settings.summary_max_output_tokens, model
        )
        started = time.monotonic()
        parts: list[str] = []
        usage: Usage | None = None
        stream = self.provider.stream(request)
        try:
            async with asyncio.timeout(self.timeout_s):
                async for event in stream:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                    elif isinstance(event, Usage):
                        usage = event
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        text = "".join(parts).strip()
        if not text:
            raise ParleyError("the model returned an empty summary")
        summary = extended(plan, f"sum-{uuid.uuid4().hex[:16]}", text)
        await room.context.add_summary(summary, plan.new_ids, model, usage)
        room.metrics.summaries.labels(status="done").inc()
        log.info(
            "summary call",
            extra={
                "session_id": room.session_id,
                "summary_id": summary.id,
                "model": model,
                "from_seq": summary.from_seq,
                "to_seq": summary.to_seq,
                "entries": len(plan.new_ids),
                "input_tokens": None if usage is None else usage.input_tokens,
                "output_tokens": None if usage is None else usage.output_tokens,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
