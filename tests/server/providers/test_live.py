"""Smoke tests against the real vendors. Collected only when their API key is set (see
``pytest_collection_modifyitems`` in ``tests/conftest.py``): deselected, never skipped."""

from __future__ import annotations

import os

import httpx
import pytest

from parley.server.providers.anthropic import AnthropicProvider
from parley.server.providers.openai import OpenAIProvider
from parley.server.providers.upstream import Upstream
from parley.session.model import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

REQUEST = ModelRequest(
    session_id="live",
    issuers=("alice",),
    system="You are a terse assistant.",
    messages=(ModelMessage("user", "What is the weather in Oslo? Use the tool.", author="alice"),),
    answering=(0,),
    max_output_tokens=200,
    tools=(
        ToolSpec(
            "weather",
            "Current weather in a city",
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        ),
    ),
)


async def run(provider: ModelProvider) -> list[ModelEvent]:
    return [event async for event in provider.stream(REQUEST)]


def check(events: list[ModelEvent]) -> None:
    calls = [e for e in events if isinstance(e, ToolCall)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert calls or text
    assert any(isinstance(e, Usage) and e.input_tokens > 0 for e in events)
    assert isinstance(events[-1], Finish)
    if calls:
        assert calls[0].name == "weather" and "Oslo" in calls[0].arguments


LIVE = [
    pytest.param(
        OpenAIProvider,
        "OPENAI",
        "https://api.openai.com/v1",
        "gpt-4o-mini",
        marks=pytest.mark.live(env="OPENAI_API_KEY"),
        id="openai",
    ),
    pytest.param(
        AnthropicProvider,
        "ANTHROPIC",
        "https://api.anthropic.com",
        "claude-haiku-4-5",
        marks=pytest.mark.live(env="ANTHROPIC_API_KEY"),
        id="anthropic",
    ),
]


@pytest.mark.parametrize(("kind", "vendor", "base_url", "model"), LIVE)
async def test_live_call_streams_text_or_a_tool_call_with_usage(
    kind: type[OpenAIProvider | AnthropicProvider], vendor: str, base_url: str, model: str
) -> None:
    """``{VENDOR}_BASE_URL`` and ``PARLEY_LIVE_{VENDOR}_MODEL`` override the defaults."""
    upstream = Upstream(
        vendor.lower(),
        os.environ.get(f"{vendor}_BASE_URL", base_url),
        os.environ.get(f"PARLEY_LIVE_{vendor}_MODEL", model),
        os.environ[f"{vendor}_API_KEY"],
    )
    async with httpx.AsyncClient(timeout=60) as client:
        check(await run(kind(vendor.lower(), upstream, client)))
