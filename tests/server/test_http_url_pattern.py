"""The pattern a webhook's or a tool's URL is judged by (and the document gives): every
control, blank and format character refused, as Python knows Unicode (review RJ-3)."""

from __future__ import annotations

import re
import unicodedata

from parley.server.http.models import HTTP_URL_PATTERN, URL_REFUSED

_REFUSED_CATEGORIES = {"Cc", "Zs", "Zl", "Zp", "Cf"}


def test_the_table_holds_every_control_blank_and_format_character_and_nothing_else() -> None:
    listed = {p for low, high in URL_REFUSED for p in range(low, high + 1)}
    wanted = {p for p in range(0x110000) if unicodedata.category(chr(p)) in _REFUSED_CATEGORIES}
    assert sorted(wanted - listed) == []
    others = {unicodedata.category(chr(p)) for p in listed - wanted}
    assert others <= {"Cn"}, others


def test_the_pattern_refuses_each_listed_character_and_takes_the_rest() -> None:
    pattern = re.compile(HTTP_URL_PATTERN)
    assert "\\s" not in HTTP_URL_PATTERN
    for low, high in URL_REFUSED:
        for point in (low, high):
            assert pattern.fullmatch(f"https://a.example/{chr(point)}") is None, hex(point)
    taken = "https://a.example/\u00e9\u4e2d\U0001f600?q=1#f"
    assert pattern.fullmatch(taken) is not None
    assert pattern.fullmatch("https://" + "a" * 1990) is not None
    assert pattern.fullmatch("https://" + "a" * 1991) is None
