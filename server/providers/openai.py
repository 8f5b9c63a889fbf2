"""OpenAI-compatible Chat Completions, streamed: OpenAI, vLLM, Ollama, llama.cpp, LM Studio.

``render`` and ``ChatCompletionsDecoder`` are pure (request in, JSON out; chunk in, events
out) so the wire format is tested without a socket; ``OpenAIProvider`` adds the HTTP call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from parley.server.providers.upstream import Upstream, event_json, post_events
from parley.session.errors import ProviderError
from parley.session.model import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    TextDelta,
    ToolCall,
    Usage,
    wire_name,
)

FINISH_REASONS = {"function_call": "tool_calls"}


def _message(message: ModelMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    rendered = {"role": message.role, "content": message.content}
    if message.role == "user" and message.author:
        rendered["name"] = wire_name(message.author)
    return rendered


def render(request: ModelRequest, model: str) -> dict[str, Any]:
    """The Chat Completions body of ``request``: the system prompt as a system message,
    every other message as it is (user content opens with the server's attribution line),
    a user message's member in its ``name`` field."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            *([{"role": "system", "content": request.system}] if request.system else []),
            *(_message(m) for m in request.messages),
        ],
        "max_tokens": request.max_output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": dict(tool.parameters),
                },
            }
            for tool in request.tools
        ]
    return body


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ChatCompletionsDecoder:
    """Turns ``chat.completion.chunk`` objects into events.

    Tool calls arrive in pieces keyed by ``index`` (id and name first, the arguments split
    anywhere); each is emitted whole when the choice finishes. Usage comes in the last
    chunk (``include_usage``) or, on some servers, beside the finish reason: it is emitted
    with ``Finish`` at the end of the stream."""

    calls: dict[int, _PartialCall] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str | None = None

    def feed(self, chunk: dict[str, Any]) -> list[ModelEvent]:
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(f"the model failed mid-stream: {message}")
        events: list[ModelEvent] = []
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            )
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 is never asked for
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                events.append(TextDelta(text))
            for piece in delta.get("tool_calls") or []:
                call = self.calls.setdefault(int(piece.get("index", 0)), _PartialCall())
                call.id = piece.get("id") or call.id
                function = piece.get("function") or {}
                call.name = function.get("name") or call.name
                if function.get("arguments"):
                    call.arguments.append(function["arguments"])
            reason = choice.get("finish_reason")
            if reason:
                self.finish = FINISH_REASONS.get(reason, reason)
                events.extend(self._complete_calls())
        return events

    def _complete_calls(self) -> list[ModelEvent]:
        calls: list[ModelEvent] = [
            ToolCall(call.id or f"call_{index}", call.name, "".join(call.arguments))
            for index, call in sorted(self.calls.items())
        ]
        self.calls.clear()
        return calls

    def close(self) -> list[ModelEvent]:
        """The events owed at ``[DONE]``."""
        events = self._complete_calls()
        if self.usage is not None:
            events.append(self.usage)
        events.append(Finish(self.finish or "stop"))
        return events


class OpenAIProvider:
    """A model behind ``POST {base_url}/chat/completions``."""

    def __init__(self, name: str, upstream: Upstream, client: httpx.AsyncClient) -> None:
        self.name = name
        self.upstream = upstream
        self.client = client

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        headers = {}
        if self.upstream.api_key:
            headers["authorization"] = f"Bearer {self.upstream.api_key}"
        decoder = ChatCompletionsDecoder()
        events = post_events(
            self.client,
            self.upstream,
            "/chat/completions",
            render(request, self.upstream.model),
            headers,
        )
        try:
            async for event in events:
                if event.data.strip() == "[DONE]":
                    for item in decoder.close():
                        yield item
                    return
                for item in decoder.feed(event_json(self.upstream, event)):
                    yield item
        except ProviderError as exc:  # the key out of what the upstream said
            raise self.upstream.scrubbed(exc) from None
        finally:
            await events.aclose()
        raise ProviderError(f"{self.upstream.label} ended the stream before [DONE]")
