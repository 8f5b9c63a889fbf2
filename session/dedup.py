"""Finding repeated content: exact (after normalising), near (MinHash), and pasted blocks.

Everything is deterministic: hashes are keyed BLAKE2b, never Python's salted ``hash``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from session.memo import memo_by_digest

SHINGLE_CHARS = 5
MAX_SHINGLES = 512
MIN_SHINGLES = 16
PERMUTATIONS = 64
BANDS = 16  # 16 bands of 4 rows: pairs at 0.8 similarity are found with p > 0.999
ROWS = PERMUTATIONS // BANDS
_PRIME = (1 << 61) - 1
_SEEDS = [
    (
        int.from_bytes(hashlib.blake2b(f"a{i}".encode(), digest_size=8).digest(), "big") | 1,
        int.from_bytes(hashlib.blake2b(f"b{i}".encode(), digest_size=8).digest(), "big"),
    )
    for i in range(PERMUTATIONS)
]


def normalise(text: str) -> str:
    """Case and whitespace folded: what counts as the same text."""
    return " ".join(text.casefold().split())


def shingles(text: str) -> set[int]:
    """Hashes of the character 5-grams of the normalised text (a long text is sampled:
    only 5-grams whose hash is divisible by a step that keeps about 512 of them)."""
    flat = normalise(text)
    if len(flat) < SHINGLE_CHARS:
        return {zlib.crc32(flat.encode())} if flat else set()
    found = {
        zlib.crc32(flat[i : i + SHINGLE_CHARS].encode())
        for i in range(len(flat) - SHINGLE_CHARS + 1)
    }
    step = len(found) // MAX_SHINGLES + 1
    if step > 1:
        found = {h for h in found if h % step == 0} or found
    return found


@memo_by_digest(limit=32_768)
def minhash(text: str) -> tuple[int, ...] | None:
    """The signature of ``text``; None when it is too short to compare by shape (a short
    message is folded only when it is the same to the letter)."""
    found = shingles(text)
    if len(found) < MIN_SHINGLES:
        return None
    return tuple(min((a * h + b) % _PRIME for h in found) for a, b in _SEEDS)


def similarity(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Estimated Jaccard similarity of the shingle sets behind two signatures."""
    return sum(1 for x, y in zip(a, b, strict=True) if x == y) / PERMUTATIONS


@dataclass
class NearDuplicateIndex:
    """Signatures seen so far, bucketed by band so a look-up touches few candidates."""

    threshold: float
    _signatures: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _buckets: dict[tuple[int, tuple[int, ...]], list[str]] = field(default_factory=dict)

    def find(self, signature: tuple[int, ...]) -> str | None:
        """The key of the most similar indexed text at or above the threshold."""
        best: tuple[float, str] | None = None
        seen: set[str] = set()
        for band in range(BANDS):
            for key in self._buckets.get(self._band(signature, band), ()):
                if key in seen:
                    continue
                seen.add(key)
                score = similarity(signature, self._signatures[key])
                if score >= self.threshold and (best is None or score > best[0]):
                    best = (score, key)
        return None if best is None else best[1]

    def add(self, key: str, signature: tuple[int, ...]) -> None:
        self._signatures[key] = signature
        for band in range(BANDS):
            self._buckets.setdefault(self._band(signature, band), []).append(key)

    def remove_last(self, key: str) -> None:
        """Undo the latest ``add``, which must have been of ``key``."""
        signature = self._signatures.pop(key)
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


def blocks(text: str, min_lines: int) -> Iterable[tuple[int, int, str]]:
    """Pasted blocks: runs of at least ``min_lines`` non-blank lines, as
    ``(start_line, end_line, normalised_text)``."""
    lines = text.split("\n")
    start = None
    for index, line in enumerate([*lines, ""]):
        if line.strip():
            if start is None:
                start = index
            continue
        if start is not None and index - start >= min_lines:
            yield start, index, "\n".join(normalise(x) for x in lines[start:index])
        start = None
