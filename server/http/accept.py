"""Which of a route's media types a request's ``Accept`` header takes (RFC 9110, 12.5.1).

Media types are matched without regard to case; each offered type takes the ``q`` of the
most specific range that matches it (``text/event-stream`` over ``text/*`` over ``*/*``),
and ``q=0`` refuses it. A range whose ``q`` is not a number from 0 to 1 is ignored. A
parameter's quoted string may hold commas and semicolons: they end no range or parameter.
"""

from __future__ import annotations

import re

QVALUE = re.compile(r"(0(\.\d{0,3})?|1(\.0{0,3})?)")
MAX_RANGES = 64  # past it the header is ignored: a client lists a few


# One range or parameter: unquoted text up to a separator, and quoted strings (RFC 9110,
# 5.6.4: ``"…"``, ``\\`` escaping the next character; one left open runs to the end).
# Possessive, so a header is read once, in C: no backtracking whatever it holds.
_PART = {
    separator: re.compile(rf'(?:[^"{separator}]++|"(?:[^"\\]++|\\.?)*+"?)*+') for separator in ",;"
}


def _unquoted_split(text: str, separator: str, limit: int) -> list[str]:
    """``text`` cut at each ``separator`` (``,`` or ``;``) outside a quoted string, into at
    most ``limit`` parts (the rest dropped)."""
    part = _PART[separator]
    parts: list[str] = []
    at = 0
    while len(parts) < limit:
        found = part.match(text, at)
        assert found is not None  # it matches the empty text
        parts.append(found.group())
        at = found.end() + 1  # past the separator
        if at > len(text):
            break
    return parts


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The header's ranges as (type, subtype, q), lower-cased; the malformed left out."""
    ranges = []
    for part in _unquoted_split(accept, ",", MAX_RANGES):
        media, *params = _unquoted_split(part, ";", MAX_RANGES)
        kind, slash, sub = media.strip().lower().partition("/")
        if not slash or not kind or not sub:
            continue
        q: float | None = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                q = float(value) if QVALUE.fullmatch(value.strip()) else None
        if q is not None:
            ranges.append((kind, sub, q))
    return ranges


def quality(ranges: list[tuple[str, str, float]], media: str) -> tuple[float, int]:
    """``media``'s q under ``ranges`` and how specific the range giving it is (2: named,
    1: ``type/*``, 0: ``*/*``); (0, -1) when none matches."""
    kind, _, sub = media.partition("/")
    best = (0.0, -1)
    for rkind, rsub, q in ranges:
        if (rkind, rsub) == (kind, sub):
            specific = 2
        elif (rkind, rsub) == (kind, "*"):
            specific = 1
        elif (rkind, rsub) == ("*", "*"):
            specific = 0
        else:
            continue
        if specific > best[1]:
            best = (q, specific)
    return best


def chosen(accept: str | None, offered: tuple[str, ...]) -> str | None:
    """The type of ``offered`` (lower-case, the server's preference first) to answer with,
    or None if ``accept`` takes none of them. No header, or an empty one, takes any: the
    first offered. Else the highest q wins, and a tie goes to the earlier offered, however
    specific the ranges giving the q (docs/api.md; review I7: a tie went to the type
    named over the one ``*/*`` gave)."""
    if accept is None or not accept.strip():
        return offered[0] if offered else None
    ranges = _ranges(accept)
    scored = [(quality(ranges, media)[0], -n, media) for n, media in enumerate(offered)]
    q, _, media = max(scored, default=(0.0, 0, None))
    return media if q > 0 else None
