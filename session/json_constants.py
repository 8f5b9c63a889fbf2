"""``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), though Python's ``json``
and pydantic's parser take them, and both read a number past a double's range (``1e400``,
valid JSON) as Infinity: every door that parses what a client sent refuses them all as
malformed JSON (a socket's command frame, an awareness state, a REST body), so one text gets
one answer at every door, and no Infinity is ever stored.

A double holds about 16 significant digits, so ``86400.000000000001`` is read as 86400.0,
whole: ``read_numbers`` also says which numbers were read as a whole double they are not,
for a REST body's integer fields to take the integer a number denotes or refuse its
fraction (review B2-4)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn


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


# Where a number may not be the double it is read as: it has an exponent (it may be past a
# double's range, or below it), or 16 digits or more (a fraction may be past a double's
# precision; a whole number without a fraction or an exponent stays an integer, exact).
# A fraction that is not zero is lost only past 15 significant digits: the nearest whole
# double is then within 2**-53 of the number, so its digits before and after the point
# number 16 at least (or 324 past the point, for one read as 0).
_MAY_BE_INEXACT = re.compile(rb"[0-9][eE]|[0-9.]{17}")


def whole_denoted(text: str) -> int | None:
    """The integer the JSON number ``text`` denotes, or None if it has a fraction that is
    not zero (``1.5e1`` is 15; ``1e-400`` is a fraction, though a double reads it as 0)."""
    try:
        number = Decimal(text)
    except InvalidOperation:  # an exponent past ±10**18: what it scales is 0 or a fraction
        return 0 if text.lower().partition("e")[0].strip("-0.") == "" else None
    if number != number.to_integral_value():
        return None
    return int(number)


class _ReadAsWhole(float):
    """A number read as a whole double that is not the number it denotes: ``whole`` is the
    integer it denotes, None when it has a fraction that is not zero."""

    whole: int | None


def _read_float(text: str) -> float:
    """``json.loads``'s ``parse_float`` of ``read_numbers``: ``finite_float``, marking a
    whole double read from another number (``100.00000000000000001``)."""
    value = finite_float(text)
    if not value.is_integer():
        return value
    whole = whole_denoted(text)
    if whole == value:
        return value
    marked = _ReadAsWhole(value)
    marked.whole = whole
    return marked


@dataclass(frozen=True, slots=True)
class NumbersRead:
    """What a JSON text's numbers are that their doubles do not say."""

    # Why the text is not JSON: it holds NaN, ±Infinity or a number past a double's range.
    not_json: str | None = None
    # Each number read as a whole double that is not the number it denotes, by the key of
    # the object member it is (or is an item of) and the double: the integer it denotes,
    # None when it has a fraction that is not zero (one of two so keyed is, if either is).
    read_as_whole: Mapping[tuple[str, float], int | None] = field(default_factory=dict)


_EXACT = NumbersRead()


def read_numbers(raw: bytes) -> NumbersRead:
    """What the JSON text ``raw``'s numbers are that their doubles do not say (a text that
    is not JSON for another reason reads as exact: its parser says what is wrong). Parsed
    only when such a number, ``NaN`` or ``Infinity`` may be in it somewhere, so a body of
    ordinary numbers costs one search of its bytes."""
    if b"NaN" not in raw and b"Infinity" not in raw and _MAY_BE_INEXACT.search(raw) is None:
        return _EXACT
    read_as_whole: dict[tuple[str, float], int | None] = {}

    def note(key: str, value: object) -> None:
        if isinstance(value, _ReadAsWhole):
            at = (key, float(value))
            same = read_as_whole.get(at, value.whole) == value.whole
            read_as_whole[at] = value.whole if same else None

    def object_of(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        for key, value in pairs:
            for item in value if isinstance(value, list) else (value,):
                note(key, item)
        return dict(pairs)

    try:
        json.loads(
            raw,
            parse_constant=reject_constant,
            parse_float=_read_float,
            object_pairs_hook=object_of,
        )
    except NotJsonConstant as exc:
        return NumbersRead(not_json=str(exc))
    except (ValueError, RecursionError):
        return _EXACT
    return NumbersRead(read_as_whole=read_as_whole) if read_as_whole else _EXACT


def constant_in(raw: bytes) -> str | None:
    """Why the JSON text ``raw`` is not JSON if it holds ``NaN``, ``±Infinity`` or a number
    past a double's range outside its strings, else None (also for a text that is not JSON
    for another reason: its parser says what is wrong)."""
    return read_numbers(raw).not_json
