"""One answer for the callers who ask at once.

A probe anyone may call without a key (``/readyz`` reads the database, and tries a write
while writes fail) runs once at a time; every caller that comes while it runs takes that
run's answer. So a flood of probes holds one database connection, not the pool the
members' writes need (review RL: ``/readyz`` was the costliest route needing no key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs a probe for the first caller; the callers who come before it ends share it."""

    def __init__(self) -> None:
        self._running: asyncio.Future[T] | None = None
        self.runs = 0  # probes started, for tests and metrics

    async def run(self, probe: Callable[[], Awaitable[T]]) -> T:
        if self._running is None or self._running.done():
            self.runs += 1
            self._running = asyncio.ensure_future(probe())
            # A run whose callers all left still ends; its error is read here, not logged
            # as never retrieved.
            self._running.add_done_callback(_read_outcome)
        # A caller that leaves (its client hung up) does not cancel the others' answer.
        return await asyncio.shield(self._running)


def _read_outcome(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()
