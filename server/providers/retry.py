"""Retry a model call that failed before it said anything.

Once an event has been passed on, a failure is final: the reply already shows text, and a
second call would answer again from the start. Before that, a retryable ``ProviderError``
(429, 5xx, time-out, dropped connection) is tried again after an exponential back-off with
full jitter, or after the upstream's ``Retry-After`` when it gave one (capped).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from parley.session.backoff import doubling_s
from parley.session.errors import ProviderError
from parley.session.model import ModelEvent, ModelProvider, ModelRequest

log = logging.getLogger("parley.providers")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 30.0

    def delay_s(self, attempt: int, error: ProviderError, draw: Callable[[], float]) -> float:
        """How long to wait after failed attempt number ``attempt`` (1-based)."""
        if error.retry_after_s is not None:
            return min(error.retry_after_s, self.max_retry_after_s)
        return doubling_s(self.base_delay_s, self.max_delay_s, attempt) * draw()


class RetryingProvider:
    """Wraps a provider; its ``name`` is the wrapped one's."""

    def __init__(
        self,
        inner: ModelProvider,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy
        self._sleep = sleep
        self._draw = draw

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        attempt = 0
        while True:
            attempt += 1
            events = self.inner.stream(request)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                return
            except ProviderError as error:
                await close_events(events)
                if not error.retryable or attempt >= self.policy.max_attempts:
                    raise
                delay = self.policy.delay_s(attempt, error, self._draw)
                log.warning(
                    "model call failed before its first token; retrying",
                    extra={
                        "provider": self.name,
                        "attempt": attempt,
                        "status": error.status,
                        "delay_s": round(delay, 3),
                        "error": error.message,
                    },
                )
                await self._sleep(delay)
                continue
            except BaseException:
                await close_events(events)
                raise
            try:
                yield first
                async for event in events:
                    yield event
            finally:
                await close_events(events)
            return


async def close_events(events: AsyncIterator[ModelEvent]) -> None:
    """Close a provider's stream (and so its upstream call), if it can be closed."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
