"""Retries happen before the first event only, with back-off, jitter and Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.providers.retry import RetryingProvider, RetryPolicy
from session.errors import ProviderError
from session.model import Finish, ModelEvent, ModelRequest, TextDelta

REQUEST = ModelRequest("s", ("alice",), "", (), ())


class Scripted:
    """Each call plays the next script: events, then an error or the end."""

    name = "scripted"

    def __init__(self, *scripts: list[ModelEvent | ProviderError]) -> None:
        self.scripts = list(scripts)
        self.calls = 0
        self.closed = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        script = self.scripts[self.calls]
        self.calls += 1
        try:
            for item in script:
                if isinstance(item, ProviderError):
                    raise item
                yield item
        finally:
            self.closed += 1


async def run(
    inner: Scripted, policy: RetryPolicy, draw: float = 0.5
) -> tuple[list[ModelEvent], list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    provider = RetryingProvider(inner, policy, sleep=sleep, draw=lambda: draw)
    return [e async for e in provider.stream(REQUEST)], slept


def busy(retry_after: float | None = None) -> ProviderError:
    return ProviderError("busy", retryable=True, status=503, retry_after_s=retry_after)


async def test_backs_off_exponentially_with_jitter_until_an_event_comes() -> None:
    inner = Scripted([busy()], [busy()], [TextDelta("hi"), Finish()])
    events, slept = await run(inner, RetryPolicy(max_attempts=3, base_delay_s=1.0), draw=0.5)
    assert events == [TextDelta("hi"), Finish()]
    assert slept == [0.5, 1.0]  # half of 1 s, then half of 2 s
    assert inner.calls == 3 and inner.closed == 3


async def test_retry_after_is_honoured_and_capped() -> None:
    inner = Scripted([busy(2.0)], [busy(600.0)], [Finish()])
    _, slept = await run(inner, RetryPolicy(max_attempts=3, max_retry_after_s=30.0))
    assert slept == [2.0, 30.0]


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    inner = Scripted([busy()], [busy()], [ProviderError("still busy", retryable=True)])
    with pytest.raises(ProviderError, match="still busy"):
        await run(inner, RetryPolicy(max_attempts=3))
    assert inner.calls == 3


async def test_a_final_error_is_not_retried() -> None:
    inner = Scripted([ProviderError("bad request", status=400)], [Finish()])
    with pytest.raises(ProviderError, match="bad request"):
        await run(inner, RetryPolicy(max_attempts=3))
    assert inner.calls == 1


async def test_no_retry_once_an_event_was_passed_on() -> None:
    inner = Scripted([TextDelta("half"), busy()], [TextDelta("again"), Finish()])
    seen: list[ModelEvent] = []
    provider = RetryingProvider(inner, RetryPolicy(max_attempts=5))
    with pytest.raises(ProviderError, match="busy"):
        async for event in provider.stream(REQUEST):
            seen.append(event)
    assert seen == [TextDelta("half")] and inner.calls == 1


async def test_closing_the_wrapper_closes_the_inner_stream() -> None:
    inner = Scripted([TextDelta("a"), TextDelta("b"), Finish()])
    stream = RetryingProvider(inner, RetryPolicy()).stream(REQUEST)
    assert await anext(stream) == TextDelta("a")
    await stream.aclose()  # type: ignore[attr-defined]
    assert inner.closed == 1
