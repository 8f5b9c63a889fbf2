"""Memoising pure functions of long texts without keeping the texts alive.

The cache key is a 128-bit BLAKE2b digest of the text, so memory stays small however long
the texts are, and a repeated build only pays for hashing what it has seen before.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DigestMemo(Generic[T]):
    """``function`` with its results kept for the ``limit`` texts used most recently."""

    def __init__(self, function: Callable[[str], T], limit: int) -> None:
        self.function = function
        self.limit = limit
        self.cache: OrderedDict[bytes, T] = OrderedDict()
        self.__doc__ = function.__doc__

    def __call__(self, text: str) -> T:
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        try:
            self.cache.move_to_end(key)
            return self.cache[key]
        except KeyError:
            value = self.cache[key] = self.function(text)
            if len(self.cache) > self.limit:
                self.cache.popitem(last=False)
            return value

    def clear(self) -> None:
        self.cache.clear()


def memo_by_digest(limit: int) -> Callable[[Callable[[str], T]], DigestMemo[T]]:
    def wrap(function: Callable[[str], T]) -> DigestMemo[T]:
        return DigestMemo(function, limit)

    return wrap
