"""Code point sets written as one regular-expression class read alike by Python and
ECMA-262 (review RJ-3)."""

from __future__ import annotations

import re
import unicodedata

from parley.session.code_points import FORMAT_CHARACTERS, class_of, merged, points_of, ranges_of


def test_the_format_characters_are_unicodes_as_python_knows_them() -> None:
    listed = points_of(FORMAT_CHARACTERS)
    known = {p for p in range(0x110000) if unicodedata.category(chr(p)) == "Cf"}
    assert sorted(known - listed) == []
    # Unicode 15.0's, unassigned in an older Python's (U+13439-U+1343F in 14.0).
    assert {unicodedata.category(chr(p)) for p in listed - known} <= {"Cn"}


def test_ranges_of_points_are_the_fewest_and_keep_every_point() -> None:
    points = {0, 1, 2, 5, 0xFFFF, 0x10000, 0x10FFFF}
    assert ranges_of(points) == ((0, 2), (5, 5), (0xFFFF, 0x10000), (0x10FFFF, 0x10FFFF))
    assert points_of(ranges_of(points)) == points
    ranges = ((5, 9), (0, 2), (3, 3), (8, 12), (20, 20))
    assert merged(ranges) == ((0, 3), (5, 12), (20, 20)) == ranges_of(points_of(ranges))


def test_a_class_holds_each_range_and_writes_astral_points_as_themselves() -> None:
    ranges = ((0x0085, 0x0085), (0xFEFF, 0xFEFF), (0xE0001, 0xE0001), (0xF0000, 0x10FFFF))
    written = class_of(ranges)
    assert "\\u0085" in written and "\\ufeff" in written and "\U000e0001" in written
    outside = re.compile(f"^[^{written}]*$")
    for low, high in ranges:
        assert outside.fullmatch(f"a{chr(low)}") is None
        assert outside.fullmatch(f"{chr(high)}b") is None
    assert outside.fullmatch("a\u0084\ufefe\U000e0002\U0001f600") is not None
