"""Sets of code points written as a regular-expression class that reads alike everywhere.

A JSON Schema ``pattern`` is ECMA-262 (2020-12: with the ``u`` flag), the server judges with
Python's ``re`` or pydantic's Rust ``regex``, and their shorthands differ (``\\s`` holds
U+0085 in Python and U+FEFF in ECMA-262; review RJ-3). A class of explicit ranges, written
in the one form the three read alike (``\\uXXXX`` in the Basic Multilingual Plane, the
character itself above it, as ``\\u{…}`` is ECMA's alone and ``\\U…`` Python's), means one
set of characters to each.
"""

from __future__ import annotations

from collections.abc import Iterable

CodePointRanges = tuple[tuple[int, int], ...]


def _written(point: int) -> str:
    return f"\\u{point:04x}" if point <= 0xFFFF else chr(point)


def class_of(ranges: CodePointRanges) -> str:
    """The inside of a bracketed class of ``ranges`` (inclusive ``(low, high)`` pairs):
    put it in ``[^…]`` for the characters outside them."""
    return "".join(
        _written(low) if low == high else f"{_written(low)}-{_written(high)}"
        for low, high in ranges
    )


# Unicode's format characters (general category Cf, as of Unicode 15.0): shown as nothing,
# or changing how the text around them shows (soft hyphen, zero-width, bidirectional
# controls, U+FEFF, tags). ``tests/session/test_code_points.py`` checks it against Python's.
FORMAT_CHARACTERS: CodePointRanges = (
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)


def points_of(ranges: CodePointRanges) -> set[int]:
    """Every code point of ``ranges``."""
    return {point for low, high in ranges for point in range(low, high + 1)}


def ranges_of(points: Iterable[int]) -> CodePointRanges:
    """``points`` as the fewest sorted ranges."""
    merged: list[tuple[int, int]] = []
    for point in sorted(set(points)):
        if merged and merged[-1][1] == point - 1:
            merged[-1] = (merged[-1][0], point)
        else:
            merged.append((point, point))
    return tuple(merged)


def merged(ranges: CodePointRanges) -> CodePointRanges:
    """``ranges`` sorted, those that overlap or touch made one (costs a sort of the ranges,
    not a pass over their points: a plane of private use is one range)."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(high, out[-1][1]))
        else:
            out.append((low, high))
    return tuple(out)
