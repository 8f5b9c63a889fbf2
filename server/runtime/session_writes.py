"""The REST API's changes of a session, as data: writes of its shared document (facts,
pins, the policy) and ``settings``, the settings the running node keeps in memory (model,
restricted replies, members), read again from the store once the REST call stored them.

They enter through ``RoomRegistry.change``: on one node they run on the room at once; in
cluster mode only the node running the session may write its document or judge its
commands, so on another node the same change is forwarded there (as the admin, whose REST
call was already authorised) and its result comes back. Either way the change is in force
where the session runs before the REST call returns. Document writes are carried out by
the session core like any command (``SessionWriter.execute``), so its limits hold here too;
the REST route authorised the caller and audits the change itself.
"""

from __future__ import annotations

from typing import Any

from parley.server.runtime.room import SessionRoom, new_id
from parley.session.commands import Command, FactCommand, PinCommand, PolicyCommand
from parley.session.core import CommandEvent
from parley.session.errors import InvalidInput, RateLimited
from parley.session.queue import Policy

SETTINGS_WRITE = "settings"
# Not a change: a member's REST call on another node spends their one command budget here.
CHARGE_WRITE = "charge"


async def apply_session_write(room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
    """Run ``write`` on ``room``; returns the facts or pins after it."""
    kind = write.get("op")
    write_id = str(write.get("id") or "rest")
    command: Command
    if kind == CHARGE_WRITE:
        if not room.user_bucket(str(write["user_id"])).allow(room.clock()):
            raise RateLimited(str(write.get("why") or "too many commands; slow down"))
        return {}
    if kind == SETTINGS_WRITE:  # carried out where the session runs
        row = await room.reload_settings()
        await room.reload_quotas()
        if room.doc.meta.get("title") != row.title:  # renamed: every client reads ``meta``
            async with room.writer.document.writing():
                room.doc.set_title(row.title)
        return {}
    if kind == "set_fact":
        value = None if write["value"] is None else str(write["value"])
        command = FactCommand(write_id, str(write["key"]), value)
    elif kind == "pin":
        command = PinCommand(write_id, str(write["entry_id"]), bool(write["pinned"]))
    elif kind == "policy":
        command = PolicyCommand(write_id, Policy(write["policy"]))
    else:
        raise InvalidInput(f"unknown session write {kind!r}")
    actor = str(write.get("author") or "")  # "" : the admin API
    await room.writer.execute(CommandEvent(actor, command, room.now_ms(), new_id(), admin=True))
    if kind == "set_fact":
        return {"facts": room.doc.fact_map()}
    if kind == "pin":
        return {"pins": room.doc.pinned()}
    return {}
