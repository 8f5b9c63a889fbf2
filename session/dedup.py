"""Finding repeated content: exact (after normalising) and near (MinHash); pasted blocks
are found in ``session.shape``.

Everything is deterministic: seeds come from BLAKE2b and hashing is fixed 64-bit integer
arithmetic (numpy, vectorised: a signature costs microseconds, not milliseconds), never
Python's salted ``hash``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from parley.session.memo import memo_by_digest

SHINGLE_BYTES = 5
MAX_SHINGLES = 512
MIN_SHINGLES = 16
PERMUTATIONS = 64
BANDS = 16  # 16 bands of 4 rows: pairs at 0.8 similarity are found with p > 0.999
ROWS = PERMUTATIONS // BANDS
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it permutes 64-bit values


def _seed(label: str) -> int:
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "big")


# Multiply-shift hashing, ((a * x + b) mod 2**64) >> 32, one (a, b) per permutation.
_A = np.array([_seed(f"a{i}") | 1 for i in range(PERMUTATIONS)], dtype=np.uint64)[:, None]
_B = np.array([_seed(f"b{i}") for i in range(PERMUTATIONS)], dtype=np.uint64)[:, None]


# The blanks that end a line, each run tried once (not from each of its blanks: a line of
# 30,000 blanks then "x" would cost 30,000² steps), in C.
_LINE_END_BLANKS = re.compile(r"(?m)(?<![^\S\n])[^\S\n]++$")


def as_written(text: str) -> str:
    """The text as its author wrote it, but for blanks at the end of a line and blank lines
    at either end: what counts as the same text when someone else said it (another member,
    the model twice), and what two texts must share for one to stand for the other (a
    reference to a block, a reply or a tool result given before). Letter case (``kQ7`` and
    ``Kq7``, ``Straße`` and ``STRASSE``), stops and punctuation (``..`` may be an
    argument), indentation and the blanks inside a line all count (reviews: a member's
    words, block or reply stood for another's in other case or indentation)."""
    return _LINE_END_BLANKS.sub("", text).strip("\n")


def normalise(text: str) -> str:
    """Case and whitespace folded: what counts as the same text when its author says it
    again (``as_written`` when someone else did)."""
    return " ".join(text.casefold().split())


def same_words(text: str) -> str:
    """The text case and whitespace folded, without the stops that end it: a member's texts
    with the same say the same, asked or exclaimed ("roll back now" and "roll back now?"). Nothing
    inside it goes: "x > 5" and "x < 5" differ (review of the change: every sign and
    separator dropped made them one)."""
    return normalise(text).rstrip(_FINAL_STOPS)


_FINAL_STOPS = " ?!.\u2026"


def shingles(text: str) -> NDArray[np.uint64]:
    """Hashes of the byte 5-grams of the normalised text, distinct and sorted. A long text
    is sampled: only hashes divisible by a step that keeps about 512 of them."""
    data = np.frombuffer(normalise(text).encode(), dtype=np.uint8).astype(np.uint64)
    if len(data) < SHINGLE_BYTES:
        grams = np.array([int.from_bytes(data.astype(np.uint8).tobytes(), "big")], np.uint64)
        return grams if len(data) else np.empty(0, np.uint64)
    grams = np.zeros(len(data) - SHINGLE_BYTES + 1, dtype=np.uint64)
    for offset in range(SHINGLE_BYTES):
        grams = (grams << np.uint64(8)) | data[offset : offset + len(grams)]
    with np.errstate(over="ignore"):
        found = np.unique(grams * _MIX)
    step = len(found) // MAX_SHINGLES + 1
    if step > 1:
        sampled = found[found % np.uint64(step) == 0]
        found = sampled if len(sampled) else found
    return found


@memo_by_digest(limit=32_768)
def minhash(text: str) -> tuple[int, ...] | None:
    """The signature of ``text``; None when it is too short to compare by shape (a short
    message is folded only when it is the same to the letter)."""
    found = shingles(text)
    if len(found) < MIN_SHINGLES:
        return None
    with np.errstate(over="ignore"):
        hashed = (_A * found[None, :] + _B) >> np.uint64(32)
    return tuple(hashed.min(axis=1).tolist())


def similarity(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Estimated Jaccard similarity of the shingle sets behind two signatures."""
    return sum(1 for x, y in zip(a, b, strict=True) if x == y) / PERMUTATIONS


@dataclass
class NearDuplicateIndex:
    """Signatures seen so far, bucketed by band so a look-up touches few candidates."""

    threshold: float
    _signatures: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _arrays: dict[str, NDArray[np.uint64]] = field(default_factory=dict)
    _buckets: dict[tuple[int, tuple[int, ...]], list[str]] = field(default_factory=dict)

    def find(self, signature: tuple[int, ...]) -> str | None:
        """The key of the most similar indexed text at or above the threshold (the first
        found, of equals). All candidates are compared in one vectorised step."""
        candidates = list(
            dict.fromkeys(
                key
                for band in range(BANDS)
                for key in self._buckets.get(self._band(signature, band), ())
            )
        )
        if not candidates:
            return None
        stacked = np.stack([self._arrays[key] for key in candidates])
        scores = np.count_nonzero(stacked == np.array(signature, dtype=np.uint64), axis=1)
        best = int(np.argmax(scores))
        if scores[best] / PERMUTATIONS < self.threshold:
            return None
        return candidates[best]

    def add(self, key: str, signature: tuple[int, ...]) -> None:
        self._signatures[key] = signature
        self._arrays[key] = np.array(signature, dtype=np.uint64)
        for band in range(BANDS):
            self._buckets.setdefault(self._band(signature, band), []).append(key)

    def remove_last(self, key: str) -> None:
        """Undo the latest ``add``, which must have been of ``key``."""
        signature = self._signatures.pop(key)
        del self._arrays[key]
        for band in range(BANDS):
            bucket_key = self._band(signature, band)
            bucket = self._buckets[bucket_key]
            assert bucket[-1] == key, "remove_last must undo the latest add"
            bucket.pop()
            if not bucket:
                del self._buckets[bucket_key]

    @staticmethod
    def _band(signature: tuple[int, ...], band: int) -> tuple[int, tuple[int, ...]]:
        return band, signature[band * ROWS : (band + 1) * ROWS]
