"""JSON whose objects give each key once, the one rule of both doors (a socket's command
frame, a REST body).

Python's ``json`` (and pydantic's parser) keep the last of a repeated key: a body
``{"role": "viewer", "role": "owner"}`` made an owner, and a reader that keeps the first
(a proxy, a log, an audit tool) would see a viewer (review). Checked as each object is
built: one set of its keys, so the cost is linear in the body's size.
"""

from __future__ import annotations

import json
from typing import Any

from parley.session.errors import InvalidInput


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook``: the object, or ``InvalidInput`` naming a key
    given twice in it."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInput(f"key {key[:40]!r} is given twice in one object")
            seen.add(key)
    return data


def check_unique_keys(raw: str | bytes) -> None:
    """Raise ``InvalidInput`` if an object in the JSON text ``raw`` repeats a key, at any
    depth. Text that is not JSON passes: its parser is the one to say what is wrong."""
    try:
        json.loads(raw, object_pairs_hook=unique_object)
    except (ValueError, RecursionError):
        return
