"""A run in flight: its scope, its reply's state, where its steps go, and the handle to
stop it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley.authz.policy import Restriction
from parley.authz.scope import RunScope
from parley.server.store.rows import UsageRow
from parley.session.core import AuditRecord, ReplyState
from parley.session.errors import Unavailable
from parley.session.model import Usage
from parley.session.queue import Run
from parley.session.quota import Quotas
from parley.session.reasons import Ending


class RunSink(Protocol):
    """Where a run's steps go: the session's (``RunSteps``: its shared document) or a
    side-thread's (``ThreadSteps``: its owner alone)."""

    # Whether what the run reads and writes is one member's alone (a side-thread's): what
    # the model chose to say, such as a provider's error quoting the input or a refused
    # tool's name, is then kept from the audit log, which other owners read.
    private: bool

    async def append_reply(self, active: ActiveRun, text: str) -> None: ...

    async def widen(self, active: ActiveRun, restriction: Restriction) -> None: ...

    async def add_tool_step(
        self,
        active: ActiveRun,
        *,
        step_id: str,
        tool: str,
        status: str,
        detail: str,
        restriction: Restriction,
    ) -> None: ...

    async def finish(
        self, active: ActiveRun, ending: Ending | None, audit: Sequence[AuditRecord] = ()
    ) -> None: ...


@dataclass(eq=False)
class ActiveRun:
    """A run in flight, and the handle to stop it. ``reply`` is what the core decided of
    its reply so far (what it inherited, whether it went private); ``text`` its full text;
    ``steps`` where its steps go."""

    run: Run
    reply: ReplyState
    scope: RunScope
    steps: RunSink
    text: list[str] = field(default_factory=list)
    task: asyncio.Task[Any] | None = None
    # For the audit log: what the run was (issuers, scope, context), each model call, refusals.
    audit_base: dict[str, Any] = field(default_factory=dict)
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    stopped: Ending | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # The session's quotas, read with the run's start (None: not read yet).
    quotas: Quotas | None = None
    # What the model calls used so far, as reported (or estimated, for a call cut short):
    # counted whatever the run's end, a cancel or a failure too.
    used: Usage | None = None
    # ``used`` as rows, stored with the run's finish, in its transaction.
    usage: Sequence[UsageRow] = ()

    @property
    def reply_id(self) -> str:
        return self.reply.reply_id

    def count_usage(self, usage: Usage) -> None:
        """Add one model call's usage to the run's."""
        used = self.used
        self.used = (
            usage
            if used is None
            else Usage(
                used.input_tokens + usage.input_tokens, used.output_tokens + usage.output_tokens
            )
        )

    def stop(self, ending: Ending) -> None:
        """Stop the model call (its stream is closed); the runner marks the reply."""
        if self.stopped is None:
            self.stopped = ending
            if self.task is not None:
                self.task.cancel()

    async def wait(self, wait_s: float = 5.0) -> None:
        try:
            async with asyncio.timeout(wait_s):
                await self.finished.wait()
        except TimeoutError:
            raise Unavailable("the run did not stop in time; try again") from None
