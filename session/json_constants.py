"""``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), though Python's ``json``
and pydantic's parser take them, and both read a number past a double's range (``1e400``,
valid JSON) as Infinity: every door that parses what a client sent refuses them all as
malformed JSON (a socket's command frame, an awareness state, a REST body), so one text gets
one answer at every door, and no Infinity is ever stored."""

from __future__ import annotations

import json
import math
import re
from typing import NoReturn


class NotJsonConstant(ValueError):
    """A ``NaN``, an ``Infinity`` or a number past a double's range outside strings (a
    ``ValueError``, as any malformed JSON)."""


def reject_constant(name: str) -> NoReturn:
    """``json.loads``'s ``parse_constant``: raise ``NotJsonConstant`` naming ``name``."""
    raise NotJsonConstant(f"{name} is not JSON")


def finite_float(text: str) -> float:
    """``json.loads``'s ``parse_float``: the number ``text``, or ``NotJsonConstant`` when a
    double cannot hold it (it would be read as Infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise NotJsonConstant(f"{text[:40]} is past a number's range")
    return value


# Where a number may be past a double's range: it has an exponent, or 309 digits or more
# (a whole number stays an integer, exact; one with a fraction is a double).
_MAY_OVERFLOW = re.compile(rb"[0-9][eE]|[0-9]{309}")


def constant_in(raw: bytes) -> str | None:
    """Why the JSON text ``raw`` is not JSON if it holds ``NaN``, ``±Infinity`` or a number
    past a double's range outside its strings, else None (also for a text that is not JSON
    for another reason: its parser says what is wrong). Parsed only when such a word or
    number may be in it somewhere."""
    if b"NaN" not in raw and b"Infinity" not in raw and _MAY_OVERFLOW.search(raw) is None:
        return None
    try:
        json.loads(raw, parse_constant=reject_constant, parse_float=finite_float)
    except NotJsonConstant as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None
    return None
