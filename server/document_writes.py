"""The REST API's writes of a session's shared document (facts, pins, the policy), as data.

On one node they run on the room at once. In cluster mode only the node running the
session may write its document, so on another node the same write is forwarded there (as
the admin, whose REST call was already authorised) and its result comes back.
"""

from __future__ import annotations

from typing import Any

from server.room import SessionRoom
from session.errors import InvalidInput
from session.queue import Policy


async def apply_document_write(room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
    """Run ``write`` on ``room``; returns the facts or pins after it."""
    kind = write.get("op")
    if kind == "set_fact":
        await room.set_fact(
            str(write["key"]),
            None if write["value"] is None else str(write["value"]),
            str(write.get("author") or ""),
        )
        return {"facts": room.doc.fact_map()}
    if kind == "pin":
        await room.set_pinned(str(write["entry_id"]), bool(write["pinned"]))
        return {"pins": room.doc.pinned()}
    if kind == "policy":
        await room.set_policy(Policy(write["policy"]))
        return {}
    raise InvalidInput(f"unknown document write {kind!r}")
