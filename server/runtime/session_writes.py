"""The REST API's changes of a session, as data: writes of its shared document (facts,
pins, the policy) and ``settings``, the settings the running node keeps in memory (model,
restricted replies, members), read again from the store once the REST call stored them.

They enter through ``RoomRegistry.change``: on one node they run on the room at once; in
cluster mode only the node running the session may write its document or judge its
commands, so on another node the same change is forwarded there (as the admin, with the
member it is sent by) and its result comes back. Either way the change is in force
where the session runs before the REST call returns. Document writes are carried out by
the session core like any command (``SessionWriter.execute``), so its limits hold here too;
a member's fact or pin is judged by the core as their socket's would be (the route only
let them into the session); the policy is a setting the REST route authorised and audits.
"""

from __future__ import annotations

from typing import Any

from parley.server.runtime.commands import kept_ack
from parley.server.runtime.room import SessionRoom, new_id
from parley.session.commands import command_from
from parley.session.core import CommandEvent
from parley.session.errors import DuplicateCommand, InvalidInput

SETTINGS_WRITE = "settings"
# Not a change: a member's REST call on another node spends their one command budget here.
CHARGE_WRITE = "charge"
# The id a node forwarding a change gives it (``ClusterNode``): a document write under it
# keeps its ack with what it stores, so one run again (its runner died before it answered)
# is answered as stored, not carried out twice. Never in the REST call's answer.
FORWARDED_ID = "forwarded_id"
# Before a forwarded write's id, its command's id (which keeps the ack).
_FORWARDED = "fwd-"


async def apply_session_write(room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
    """Run ``write`` on ``room``; returns the facts or pins after it, as committed."""
    kind = write.get("op")
    write_id = str(write.get("id") or "rest")
    if kind == CHARGE_WRITE:
        room.spend_command(
            str(write["user_id"]), str(write.get("why") or "too many commands; slow down")
        )
        return {}
    if kind == SETTINGS_WRITE and write.get("member"):  # one member's change, nothing else
        await room.reload_member(str(write["member"]))
        return {}
    if kind == SETTINGS_WRITE:  # carried out where the session runs
        row = await room.reload_settings()
        await room.reload_quotas()
        if room.doc.meta.get("title") != row.title:  # renamed: every client reads ``meta``
            async with room.writer.document.writing():
                room.doc.set_title(row.title)
        return {}
    if kind == "set_fact":
        data = {"type": "set_fact", "key": write.get("key"), "value": write.get("value")}
    elif kind == "pin":
        pin = "pin" if write.get("pinned") else "unpin"
        data = {"type": pin, "entry_id": write.get("entry_id")}
    elif kind == "policy":
        data = {"type": "set_policy", "policy": write.get("policy")}
    else:
        raise InvalidInput(f"unknown session write {kind!r}")
    # The socket's parser, then the core: the same checks in the same order as the same
    # command sent on a socket (review: a viewer's over-long fact was ``forbidden`` over
    # REST, judged by its route's capability first, and ``too_large`` on a socket).
    event_id = new_id()
    forwarded = write.get(FORWARDED_ID)
    # An id of its own (a member's side-thread command may be named ``rest``), kept only
    # under a forwarded write's id, which no client knows.
    once = f"{_FORWARDED}{forwarded}" if isinstance(forwarded, str) and forwarded else None
    command = command_from({"id": once or f"{write_id}-{event_id}", **data}, room.limits)
    actor = str(write.get("author") or "")  # "" : the admin API
    # A member's fact or pin is judged by the core, as their socket's would be; the policy
    # is a setting of ``PATCH …/sessions/{id}``, which judged its caller and audits it.
    admin = not actor or kind == "policy"
    kept = once is not None
    event = CommandEvent(actor, command, room.now_ms(), event_id, admin=admin, resendable=kept)
    try:
        if not kept or await kept_ack(room, actor, command) is None:
            await room.writer.execute(event)
    except DuplicateCommand:
        if not kept:
            raise
        # Stored already under the forwarded id, whatever the ids known here say: done.
    if kind == "policy":
        return {}
    # As committed, as a REST read answers them: never a write under way since, which
    # may yet fail (review RA-4).
    doc = await room.writer.document.committed_document()
    return {"facts": doc.fact_map()} if kind == "set_fact" else {"pins": doc.pinned()}
