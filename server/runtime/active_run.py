"""The run in flight: its scope, what its reply inherited, and the handle to stop it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from authz.policy import Restriction
from authz.scope import RunScope
from session.errors import Unavailable
from session.queue import Run
from session.reasons import Ending


@dataclass(eq=False)
class ActiveRun:
    """The run in flight, and the handle to stop it. ``restriction`` is what its reply
    inherits from what it drew on; ``private``: the reply no longer streams into the doc."""

    run: Run
    reply_id: str
    scope: RunScope | None = None
    restriction: Restriction = ()
    private: bool = False
    text: list[str] = field(default_factory=list)
    task: asyncio.Task[Any] | None = None
    # For the audit log: what the run was (issuers, scope, context), each model call, refusals.
    audit_base: dict[str, Any] = field(default_factory=dict)
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    stopped: Ending | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

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
