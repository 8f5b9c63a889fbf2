"""Memoising pure functions of long texts without keeping the texts alive.

The cache key is a 128-bit BLAKE2b digest of the text, so memory stays small however long
the texts are, and a repeated build only pays for hashing what it has seen before.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def memo_by_digest(limit: int) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    def wrap(function: Callable[[str], T]) -> Callable[[str], T]:
        cache: OrderedDict[bytes, T] = OrderedDict()

        def cached(text: str) -> T:
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            try:
                cache.move_to_end(key)
                return cache[key]
            except KeyError:
                value = cache[key] = function(text)
                if len(cache) > limit:
                    cache.popitem(last=False)
                return value

        cached.__doc__ = function.__doc__
        return cached

    return wrap
