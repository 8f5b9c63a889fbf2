"""The REST API's changes of a session, as data: writes of its shared document (facts,
pins, the policy) and ``settings``, the settings the running node keeps in memory (model,
restricted replies, members), read again from the store once the REST call stored them.

They enter through ``RoomRegistry.change``: on one node they run on the room at once; in
cluster mode only the node running the session may write its document or judge its
commands, so on another node the same change is forwarded there (as the admin, whose REST
call was already authorised) and its result comes back. Either way the change is in force
where the session runs before the REST call returns.
"""

from __future__ import annotations

from typing import Any

from server.room import SessionRoom
from session.errors import InvalidInput
from session.queue import Policy

SETTINGS_WRITE = "settings"


async def apply_session_write(room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
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
    if kind == SETTINGS_WRITE:
        await room.reload_settings()
        return {}
    raise InvalidInput(f"unknown session write {kind!r}")
