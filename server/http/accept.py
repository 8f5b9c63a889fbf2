"""Which of a route's media types a request's ``Accept`` header takes (RFC 9110, 12.5.1).

Media types are matched without regard to case; each offered type takes the ``q`` of the
most specific range that matches it (``text/event-stream`` over ``text/*`` over ``*/*``),
and ``q=0`` refuses it. A range whose ``q`` is not a number from 0 to 1 is ignored.
"""

from __future__ import annotations

import re

QVALUE = re.compile(r"(0(\.\d{0,3})?|1(\.0{0,3})?)")
MAX_RANGES = 64  # past it the header is ignored: a client lists a few


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The header's ranges as (type, subtype, q), lower-cased; the malformed left out."""
    ranges = []
    for part in accept.split(",", MAX_RANGES)[:MAX_RANGES]:
        media, *params = part.split(";")
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
    first offered. Else the highest q wins, then the most specific range, then the
    earlier offered (``*/*`` takes the first)."""
    if accept is None or not accept.strip():
        return offered[0] if offered else None
    ranges = _ranges(accept)
    scored = [(quality(ranges, media), -n, media) for n, media in enumerate(offered)]
    (q, _), _, media = max(scored, default=((0.0, -1), 0, None))
    return media if q > 0 else None
