"""What the fold needs of one message's text, found once per text and shared by every fold.

A session's fold, each read scope's, each side-thread's and the context preview's all see
the same messages; a new fold (a side-thread opened, a scope seen first) walks the whole
history. What a step needs of a text alone (the digest of it as written, its pasted
blocks, its escaped form) does not depend on the fold, so it is kept here,
keyed by the text's digest (exact: equal digests, equal texts), and a message is shaped
once, not once per fold (review: each side-thread's first prompt re-read 100 messages of
5,000 short lines each, 0.5 s of a stalled loop a cycle).

The memo is bounded by entries and by about the bytes they hold (an escaped text is kept
only when it differs from its text).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from parley.session.attribution import escape_text
from parley.session.dedup import as_written

BlockSpan = tuple[int, int, bytes]
"""A pasted block: (first line, line after its last, digest of its lines ``as_written``)."""


@dataclass(frozen=True, slots=True)
class TextShape:
    written: bytes  # digest of ``as_written(text)``: what a repeat of it shares
    blocks: tuple[BlockSpan, ...]  # of at least ``min_lines`` lines, in text order
    escaped: str | None  # ``escape_text(text)`` when it differs from the text


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


# A run of at least ``min_lines`` non-blank lines ("\n"-separated, as ``str.split`` cuts):
# possessive, so a try that fails gives nothing back; in C.


@cache
def _run_of_lines(min_lines: int) -> re.Pattern[str]:
    return re.compile(rf"(?m)(?:^[^\S\n]*+\S[^\n]*+(?:\n|\Z)){{{max(min_lines, 1)},}}+")


def block_spans(text: str, min_lines: int) -> Iterator[BlockSpan]:
    """A text's pasted blocks, runs of at least ``min_lines`` non-blank lines (cut at
    "\n"), each with the digest of its lines ``as_written``, found by a regular
    expression: a step per block, none per line (a text of 16,000 one-letter lines is one
    block)."""
    line = position = 0
    for match in _run_of_lines(min_lines).finditer(text):
        line += text.count("\n", position, match.start())
        block = match.group()
        count = block.count("\n")
        if block.endswith("\n"):
            block = block[:-1]
        else:
            count += 1
        yield line, line + count, digest(as_written(block))
        line, position = line + count, match.end()


def size_of(shape: TextShape) -> int:
    """About the bytes ``shape`` holds: itself and its digests, its blocks, its escaped
    text."""
    escaped = 0 if shape.escaped is None else sys.getsizeof(shape.escaped)
    return 400 + 200 * len(shape.blocks) + escaped


class ShapeMemo:
    """``shape(text, min_lines)``, kept for the ``limit`` texts used most recently, and
    fewer when what they hold passes about ``max_bytes`` (a text of many short blocks
    holds a digest for each: a count of texts alone would not bound it)."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[bytes, int], TextShape] = OrderedDict()
        self.bytes_kept = 0
        self.shaped = 0  # texts shaped, not found kept: what a test counts

    def __call__(self, text: str, min_lines: int) -> TextShape:
        key = (digest(text), min_lines)
        shape = self._cache.get(key)
        if shape is not None:
            self._cache.move_to_end(key)
            return shape
        shape = self._cache[key] = self._shape(text, min_lines)
        self.bytes_kept += size_of(shape)
        while len(self._cache) > 1 and (
            len(self._cache) > self.limit or self.bytes_kept > self.max_bytes
        ):
            _, dropped = self._cache.popitem(last=False)
            self.bytes_kept -= size_of(dropped)
        return shape

    def _shape(self, text: str, min_lines: int) -> TextShape:
        self.shaped += 1
        escaped = escape_text(text)
        return TextShape(
            written=digest(as_written(text)),
            blocks=tuple(block_spans(text, min_lines)),
            escaped=None if escaped is text else escaped,
        )

    def clear(self) -> None:
        self._cache.clear()
        self.bytes_kept = 0


shape_of = ShapeMemo(limit=32_768, max_bytes=64 * 1024 * 1024)
