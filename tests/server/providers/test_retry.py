"""Retries happen before the first event only, with back-off, jitter and Retry-After: the
real OpenAI provider, wrapped as the registry wraps it, calling the fake model over mock HTTP."""

from __future__ import annotations

import httpx
import pytest

from parley.server.providers.openai import OpenAIProvider
from parley.server.providers.retry import RetryingProvider, RetryPolicy
from parley.server.providers.upstream import Upstream
from parley.session.errors import ProviderError
from parley.session.model import Finish, ModelEvent, ModelRequest, TextDelta, Usage
from tests.fake_model import BASE_URL, Drop, FakeModel, Status

REQUEST = ModelRequest("s", ("alice",), "", (), ())
USAGE = Usage(input_tokens=100, output_tokens=10)


def openai(client: httpx.AsyncClient) -> OpenAIProvider:
    """The real provider, its calls going through ``client`` (to the fake model)."""
    return OpenAIProvider("fake", Upstream("model 'fake'", BASE_URL, "fake-model"), client)


async def run(
    model: FakeModel, policy: RetryPolicy, draw: float = 0.5
) -> tuple[list[ModelEvent], list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with httpx.AsyncClient(transport=model.transport) as client:
        provider = RetryingProvider(openai(client), policy, sleep=sleep, draw=lambda: draw)
        return [e async for e in provider.stream(REQUEST)], slept


def busy(retry_after: float | None = None) -> Status:
    return Status(503, "busy", retry_after_s=retry_after)


async def test_backs_off_exponentially_with_jitter_until_an_event_comes() -> None:
    model = FakeModel.answering(busy(), busy(), ["hi"])
    events, slept = await run(model, RetryPolicy(max_attempts=3, base_delay_s=1.0), draw=0.5)
    assert events == [TextDelta("hi"), USAGE, Finish()]
    assert slept == [0.5, 1.0]  # half of 1 s, then half of 2 s
    assert len(model.requests) == 3
    assert all(sent.closed_at is not None for sent in model.requests)


async def test_retry_after_is_honoured_and_capped() -> None:
    model = FakeModel.answering(busy(2.0), busy(600.0), [])
    _, slept = await run(model, RetryPolicy(max_attempts=3, max_retry_after_s=30.0))
    assert slept == [2.0, 30.0]


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    model = FakeModel.answering(busy(), busy(), Status(503, "still busy"), ["never asked"])
    with pytest.raises(ProviderError, match="still busy"):
        await run(model, RetryPolicy(max_attempts=3))
    assert len(model.requests) == 3


async def test_a_final_error_is_not_retried() -> None:
    model = FakeModel.answering(Status(400, "bad request"), [])
    with pytest.raises(ProviderError, match="bad request"):
        await run(model, RetryPolicy(max_attempts=3))
    assert len(model.requests) == 1


async def test_no_retry_once_an_event_was_passed_on() -> None:
    model = FakeModel.answering(["half", Drop()], ["again"])
    seen: list[ModelEvent] = []
    async with httpx.AsyncClient(transport=model.transport) as client:
        provider = RetryingProvider(openai(client), RetryPolicy(max_attempts=5))
        with pytest.raises(ProviderError, match="connection failed") as failed:
            async for event in provider.stream(REQUEST):
                seen.append(event)
    assert failed.value.retryable  # it would have been retried before the first event
    assert seen == [TextDelta("half")] and len(model.requests) == 1


async def test_closing_the_wrapper_closes_the_inner_stream() -> None:
    model = FakeModel.answering(["a", "b"])
    async with httpx.AsyncClient(transport=model.transport) as client:
        stream = RetryingProvider(openai(client), RetryPolicy()).stream(REQUEST)
        assert await anext(stream) == TextDelta("a")
        assert model.requests[0].closed_at is None
        await stream.aclose()  # type: ignore[attr-defined]
    assert model.requests[0].closed_at is not None
