"""Summary calls: condense the turns that no longer fit, in the background of a session.

One task per session at a time, started after a run whose history no longer fit. Each call
is a separate model call with its own log line and metric (the audit trail of what was sent
where); a failure is logged and leaves the session as it was: runs go on with the turns
that fit.

A summary call is paid as the run that set it off was: its tokens are shared by that run's
issuers (``UsageLedger.rows``) and count against their quotas and the session's, and it is
not made when a quota of theirs is reached (the same check as before a run's call). A call
cut short is charged what it used, estimated as a run's is (``estimated_usage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence

from parley.server.runtime.room import SessionRoom
from parley.server.store.usage import UsageLedger
from parley.session.errors import ParleyError, QuotaExceeded, Unavailable
from parley.session.model import ModelProvider, StreamedText, TextDelta, Usage
from parley.session.summary import SummaryPlan, extended, summary_request
from parley.session.tokens import estimated_usage

log = logging.getLogger("parley.summaries")


class Summariser:
    def __init__(
        self, room: SessionRoom, provider: ModelProvider, timeout_s: float, usage: UsageLedger
    ) -> None:
        self.room = room
        self.provider = provider
        self.timeout_s = timeout_s
        self.usage = usage
        self.task: asyncio.Task[None] | None = None

    def poke(self, issuers: Sequence[str]) -> None:
        """Start summarising for the run of ``issuers`` (who pay for it) unless a call is
        under way (the task plans, and ends at once when there is not yet enough to
        summarise)."""
        if self.room.closed or (self.task is not None and not self.task.done()):
            return
        self.task = asyncio.create_task(
            self._run(tuple(issuers)), name=f"summaries:{self.room.session_id}"
        )

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, issuers: tuple[str, ...]) -> None:
        for _ in range(self.room.settings.summary_calls_per_run):
            # The plan's build reads the members' fold, folded ahead in steps first: a
            # restriction changed on an old entry rolls it back there (20,000 entries
            # folded again in one call held the loop 0.5 s).
            await self.room.context.fold_ahead((), stopped=lambda: self.room.closed)
            if self.room.closed:
                return
            plan = self.room.context.summary_plan()
            if plan is None:
                return
            try:
                await self.usage.admit(self.room.session_id, issuers, self.room.quotas)
            except (QuotaExceeded, Unavailable) as exc:  # no model call without a quota check
                log.info(
                    "summary call not made",
                    extra={"session_id": self.room.session_id, "reason": exc.message},
                )
                return
            try:
                await self._summarise(plan, issuers)
            except (ParleyError, OSError, TimeoutError) as exc:
                self.room.metrics.summaries.labels(status="failed").inc()
                log.warning(
                    "summary call failed",
                    extra={"session_id": self.room.session_id, "error": str(exc)},
                )
                return

    async def _summarise(self, plan: SummaryPlan, issuers: Sequence[str]) -> None:
        room = self.room
        model = room.model or room.settings.model_spec(room.model).name
        request = summary_request(room.session_id, plan, model)
        summary_id = f"sum-{uuid.uuid4().hex[:16]}"
        started = time.monotonic()
        parts: list[str] = []
        usage: Usage | None = None
        stream = self.provider.stream(request)
        streamed = StreamedText()
        try:
            async with asyncio.timeout(self.timeout_s):
                async for received_event in stream:
                    if isinstance(received_event, TextDelta):
                        parts.append(streamed.piece(received_event.text))
                    elif isinstance(received_event, Usage):
                        usage = received_event
                parts.append(streamed.end())
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            # Counted however the call ended, as a run's is: cut short after it streamed,
            # the provider reported nothing and it is estimated; a call that failed
            # before its first token cost nothing.
            if usage is None and parts:
                usage = estimated_usage(request, parts, [])
            if usage is not None:
                await self._record_usage(issuers, model, summary_id, usage)
        # Held to what the call may write, whatever the model wrote (``extended``).
        summary = extended(plan, summary_id, "".join(parts).strip())
        if not summary.text:
            raise ParleyError("the model returned an empty summary")
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

    async def _record_usage(
        self, issuers: Sequence[str], model: str, summary_id: str, usage: Usage
    ) -> None:
        """Store what a summary call used, its issuers' shares, under the summary's id."""
        rows = self.usage.rows(self.room.session_id, issuers, model, summary_id, usage)
        try:
            await self.usage.store.record_usage(rows)
        except Unavailable:
            log.warning(
                "summary usage not recorded: database unavailable",
                extra={"session_id": self.room.session_id, "summary_id": summary_id},
            )
