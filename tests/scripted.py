"""A scripted model for tests: a real ``ModelProvider`` that records every request it is
given and answers as its script says, tool calls included. It stands in for the model only;
everything of Parley's around it is the real thing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from session.model import Finish, ModelEvent, ModelRequest, TextDelta, ToolCall, Usage

Script = Callable[[ModelRequest], list[ModelEvent]]


def call(name: str, arguments: dict[str, Any] | str, call_id: str = "call-1") -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(call_id, name, text)


def answering_text(request: ModelRequest) -> str:
    """What the call was asked: the prompts' text after their attribution line."""
    return " ".join(request.messages[i].content.split("\n", 1)[-1] for i in request.answering)


def echo_tool_results(request: ModelRequest) -> list[ModelEvent] | None:
    """After a tool step, answer with what the tool returned (so the reply carries it)."""
    last = request.messages[-1]
    if last.role == "tool":
        return [TextDelta(f"The tool said: {last.content}")]
    return None


class ScriptedProvider:
    name = "scripted"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[ModelRequest] = []
        self.gate: asyncio.Event | None = None  # prompts containing "[wait]" wait for it

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        if self.gate is not None and "[wait]" in answering_text(request):
            await self.gate.wait()
        events = echo_tool_results(request) or self.script(request)
        for event in events:
            await asyncio.sleep(0)
            yield event
        yield Usage(input_tokens=100, output_tokens=10)
        yield Finish("tool_calls" if any(isinstance(e, ToolCall) for e in events) else "stop")

    def requests_for(self, user_id: str) -> list[ModelRequest]:
        return [r for r in self.requests if r.issuers == (user_id,)]


def everything_in(request: ModelRequest) -> str:
    """All text a model call was given: system, messages, tool results, tool specs."""
    parts = [request.system]
    for message in request.messages:
        parts.append(message.content)
        parts += [c.arguments for c in message.tool_calls]
    parts += [t.name + t.description + json.dumps(dict(t.parameters)) for t in request.tools]
    return "\n".join(parts)
