"""``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), though Python's ``json``
and pydantic's parser take them: every door that parses what a client sent refuses them as
malformed JSON (a socket's command frame, an awareness state, a REST body), so one text gets
one answer at every door."""

from __future__ import annotations

import json
from typing import NoReturn


class NotJsonConstant(ValueError):
    """A ``NaN`` or ``Infinity`` outside strings (a ``ValueError``, as any malformed JSON)."""


def reject_constant(name: str) -> NoReturn:
    """``json.loads``'s ``parse_constant``: raise ``NotJsonConstant`` naming ``name``."""
    raise NotJsonConstant(f"{name} is not JSON")


def constant_in(raw: bytes) -> str | None:
    """Why the JSON text ``raw`` is not JSON if it holds ``NaN`` or ``±Infinity`` outside
    its strings, else None (also for a text that is not JSON for another reason: its parser
    says what is wrong). Parsed only when those words are in it somewhere."""
    if b"NaN" not in raw and b"Infinity" not in raw:
        return None
    try:
        json.loads(raw, parse_constant=reject_constant)
    except NotJsonConstant as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None
    return None
