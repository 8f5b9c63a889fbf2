"""Anthropic's Messages API, streamed (``POST {base_url}/v1/messages``).

``render`` and ``MessagesDecoder`` are pure; ``AnthropicProvider`` adds the HTTP call.
The API's rules shape the rendering: the system prompt is a top-level field, roles
alternate (consecutive messages of one role are merged), tool results are ``tool_result``
blocks in a user message, and the first message is the user's. A user message's
attribution line is a text block of its own, before the block of the members' text; the
API joins a turn's text blocks with nothing between them, so the line ends with its line
break, and messages merged into one turn are set apart by a blank line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from parley.server.providers.upstream import Upstream, event_json, post_events
from parley.session.errors import ProviderError
from parley.session.model import (
    OPENING,
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    TextDelta,
    ToolCall,
    Usage,
)

API_VERSION = "2023-06-01"
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
RETRYABLE_ERRORS = {"overloaded_error", "api_error", "rate_limit_error"}


def _input(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments) if arguments else {}
    except (ValueError, RecursionError):
        return {}  # the tool loop already answered the bad JSON with an error result
    return parsed if isinstance(parsed, dict) else {}


def _blocks(message: ModelMessage) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": message.content,
        }
        if message.is_error:
            result["is_error"] = True
        return "user", [result]
    blocks: list[dict[str, Any]] = []
    # The server's attribution line in a block of its own, the members' text in the next.
    # The API reads a turn's text blocks as one text, joined with nothing between them, so
    # the line ends with its line break (review: a member's text opening ", alice asks
    # you]" read as "[mallory wrote], alice asks you]").
    attribution = message.attribution and message.attribution + "\n"
    for text in (attribution, message.body):
        if text:  # the API refuses empty text blocks
            blocks.append({"type": "text", "text": text})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        )
    return message.role, blocks


def _merge(messages: tuple[ModelMessage, ...]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            content = turns[-1]["content"]
            if content[-1]["type"] == "text" and blocks[0]["type"] == "text":
                # Messages merged into one turn: each still starts on a line of its own.
                content[-1] = {**content[-1], "text": content[-1]["text"] + "\n\n"}
            content.extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open the user turn that answers the tool calls.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    # The API refuses a conversation that opens with the model's turn: OPENING stands in
    # for the turns the context left out (the only text a provider adds, and only then;
    # the build counted it, ``ContextSettings.user_turn_first``).
    if turns and turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING}]})
    return turns


def render(request: ModelRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_output_tokens,
        "messages": _merge(request.messages),
        "stream": True,
    }
    if request.system:
        body["system"] = request.system
    if request.tools:
        body["tools"] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.parameters),
            }
            for tool in request.tools
        ]
    return body


@dataclass(slots=True)
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    json: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MessagesDecoder:
    """Turns the stream's events into model events. Input tokens come with
    ``message_start``, output tokens with ``message_delta``; both are emitted, with
    ``Finish``, at ``message_stop``. ``done`` is set then."""

    blocks: dict[int, _Block] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    done: bool = False

    def feed(self, data: dict[str, Any]) -> list[ModelEvent]:
        kind = data.get("type")
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            # Cached prompt tokens are input too, billed or not.
            self.input_tokens = sum(
                int(usage.get(key) or 0)
                for key in (
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                )
            )
            self.output_tokens = int(usage.get("output_tokens") or 0)
        elif kind == "content_block_start":
            start = data.get("content_block") or {}
            index = int(data.get("index", 0))
            self.blocks[index] = _Block(
                str(start.get("type")), str(start.get("id", "")), str(start.get("name", ""))
            )
            if start.get("type") == "text" and start.get("text"):
                return [TextDelta(start["text"])]
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [TextDelta(delta["text"])]
            if delta.get("type") == "input_json_delta":
                partial = self.blocks.get(int(data.get("index", 0)))
                if partial is not None:
                    partial.json.append(str(delta.get("partial_json", "")))
        elif kind == "content_block_stop":
            block = self.blocks.pop(int(data.get("index", 0)), None)
            if block is not None and block.kind == "tool_use":
                return [ToolCall(block.id, block.name, "".join(block.json) or "{}")]
        elif kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason:
                self.stop_reason = STOP_REASONS.get(reason, reason)
            usage = data.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.output_tokens = int(usage["output_tokens"])
        elif kind == "message_stop":
            self.done = True
            return [
                Usage(self.input_tokens, self.output_tokens),
                Finish(self.stop_reason or "stop"),
            ]
        elif kind == "error":
            error = data.get("error") or {}
            raise ProviderError(
                f"the model failed mid-stream: {error.get('type')}: {error.get('message')}",
                retryable=error.get("type") in RETRYABLE_ERRORS,
            )
        return []  # ping, and event types added after this was written


class AnthropicProvider:
    def __init__(self, name: str, upstream: Upstream, client: httpx.AsyncClient) -> None:
        self.name = name
        self.upstream = upstream
        self.client = client

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        headers = {"anthropic-version": API_VERSION}
        if self.upstream.api_key:
            headers["x-api-key"] = self.upstream.api_key
        decoder = MessagesDecoder()
        events = post_events(
            self.client,
            self.upstream,
            "/v1/messages",
            render(request, self.upstream.model),
            headers,
        )
        try:
            async for event in events:
                for item in decoder.feed(event_json(self.upstream, event)):
                    yield item
                if decoder.done:
                    return
        except ProviderError as exc:  # the key out of what the upstream said
            raise self.upstream.scrubbed(exc) from None
        finally:
            await events.aclose()
        raise ProviderError(f"{self.upstream.label} ended the stream before message_stop")
