"""Prompting over plain HTTP, for bots and backends that do not speak WebSocket.

``POST …/prompts`` and ``POST …/messages`` send a command as a member (their client token,
or the admin key with ``as_user``), ``POST …/prompts/{id}/cancel`` cancels one, and
``GET …/prompts/{id}`` reports where a prompt is. A command is sent as the same JSON frame
a socket sends, through the same door (``RoomRegistry.command``: ``server.runtime.commands`` and
``session.core``, on the node that runs the session), so it is judged, limited, made
idempotent by its id, stored and audited exactly as a socket's; only the answer differs:
the command's error is raised here as the ``ParleyError`` its code names, and so answered
with that error's HTTP status.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from parley.authz.roles import Capability
from parley.authz.tokens import ADMIN_ACTOR
from parley.server.http.models import (
    CancelPost,
    EntryPost,
    MessagePosted,
    PromptAccepted,
    PromptStatusOut,
)
from parley.server.http.rest import Caller, Operation, spend_command
from parley.server.runtime.commands import resend_allowed, stored_resend
from parley.server.state import AppState
from parley.session.commands import reply_error
from parley.session.entries import EntryKind
from parley.session.errors import Forbidden, InvalidInput, NotFound, RateLimited
from parley.session.schema import SessionDocument


def _actor(caller: Caller, as_user: str | None) -> str:
    """Who the command is sent as: the token's member, or the admin's ``as_user``."""
    if caller.user_id is None:
        if as_user is None:
            raise InvalidInput("as_user: required with the admin key (the member to send as)")
        return as_user
    if as_user is not None and as_user != caller.user_id:
        raise Forbidden("only the admin key may send as another user")
    return caller.user_id


async def send(
    state: AppState, session_id: str, caller: Caller, as_user: str | None, command: dict[str, Any]
) -> dict[str, Any]:
    """Send ``command`` through the one door; returns its ack, or raises its error."""
    actor = _actor(caller, as_user)
    room = await state.rooms.get(session_id)
    frame = json.dumps(command, ensure_ascii=False)  # escapes stay within the frame limit
    # A resend spends the command budget as any command does, as on a socket (review: over
    # REST, resends answered from the store spent none, each a read); past the budget, one
    # the recent acks hold is answered from memory all the same.
    known = room.recent_acks.knows(actor, command["id"])
    resent = None
    try:
        spend_command(state, room, actor)
    except RateLimited:
        # Past it, a resend spends the member's resend allowance, theirs on a socket too
        # (review: a socket answered one the store knew, REST refused it 429; one the
        # recent acks held was answered without limit).
        if not resend_allowed(room, actor, room.clock()):
            raise
        if not known:
            resent = await stored_resend(room, actor, frame)
            if resent is None:
                raise
    else:
        resent = None if known else await stored_resend(room, actor, frame)
    if caller.is_admin:
        what = {"action": f"{command['type']} as {actor}", "command_id": command["id"]}
        await room.writer.audit("as_user", ADMIN_ACTOR, {**what, "user_id": actor})
    answered = (
        resent
        if resent is not None
        else await state.rooms.command(room, actor, frame, caller.claims)
    )
    reply: dict[str, Any] = json.loads(answered)
    if reply.get("type") == "error":
        raise reply_error(reply)
    return reply


def command_id(given: str | None) -> str:
    return given if given is not None else f"http-{secrets.token_hex(12)}"


def _position(doc: SessionDocument, prompt_id: str) -> int | None:
    """Where a waiting prompt is in the committed plan (1: the next to run), else None."""
    for position, item in enumerate(doc.queued(), start=1):
        if item.id == prompt_id:
            return position
    return None


def _status(doc: SessionDocument, prompt_id: str) -> PromptStatusOut:
    """Where the prompt is, in ``doc`` as committed (``RoomRegistry.committed``)."""
    if not doc.has_entry(prompt_id) or doc.entry(prompt_id).kind is not EntryKind.PROMPT:
        raise NotFound(f"no prompt {prompt_id!r} in this session")
    entry = doc.entry(prompt_id)
    return PromptStatusOut.model_validate(
        {
            "prompt_id": entry.id,
            "seq": entry.seq,
            "author": entry.author,
            "status": entry.status,
            "reason_code": entry.reason_code,
            "reason": entry.reason,
            "retry_at": entry.retry_at,
            "reply_id": entry.reply_id,
            "position": _position(doc, prompt_id),
        }
    )


async def post_prompt(
    state: AppState, session_id: str, body: EntryPost, caller: Caller
) -> PromptAccepted:
    """Ask the model, as a member: the prompt waits its turn in the session's queue."""
    command = {"type": "prompt", "id": command_id(body.id), "text": body.text}
    ack = await send(state, session_id, caller, body.as_user, command)
    prompt_id = str(ack["prompt_id"])
    # What is committed, so every node answers as this one does.
    _, doc = await state.rooms.committed(session_id)
    return PromptAccepted(
        prompt_id=prompt_id, seq=int(ack["seq"]), position=_position(doc, prompt_id)
    )


async def post_message(
    state: AppState, session_id: str, body: EntryPost, caller: Caller
) -> MessagePosted:
    """Talk to the other members, as a member (the model reads it with the next prompt)."""
    command = {"type": "message", "id": command_id(body.id), "text": body.text}
    ack = await send(state, session_id, caller, body.as_user, command)
    return MessagePosted(message_id=str(ack["message_id"]), seq=int(ack["seq"]))


async def cancel_prompt(
    state: AppState, session_id: str, prompt_id: str, body: CancelPost, caller: Caller
) -> PromptStatusOut:
    """Cancel a waiting prompt, or stop the run answering it; answers its status after."""
    command = {"type": "cancel", "id": command_id(body.id), "prompt_id": prompt_id}
    await send(state, session_id, caller, body.as_user, command)
    _, doc = await state.rooms.committed(session_id)
    return _status(doc, prompt_id)


async def get_prompt(state: AppState, session_id: str, prompt_id: str) -> PromptStatusOut:
    _, doc = await state.rooms.committed(session_id)
    return _status(doc, prompt_id)


COMMAND_ERRORS = (404, 409, 429)
OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/prompts",
        post_prompt,
        "Send a prompt as a member (client token, or the admin key with as_user); "
        "judged, limited and idempotent by id as a socket's",
        # Every member who reads the session reaches the door, which judges ``prompt``.
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=EntryPost,
        answers_resends=True,
        body_bytes=None,  # texts: up to PARLEY_MAX_REQUEST_BYTES
        response=PromptAccepted,
        status=202,
        location="/api/v1/sessions/{session_id}/prompts/{prompt_id}",
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/messages",
        post_message,
        "Post a message to the other members as a member (client token, or the admin key "
        "with as_user)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=EntryPost,
        answers_resends=True,
        body_bytes=None,  # texts: up to PARLEY_MAX_REQUEST_BYTES
        response=MessagePosted,
        status=202,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/prompts/{prompt_id}/cancel",
        cancel_prompt,
        "Cancel a waiting prompt or stop the run answering it; its status after",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=CancelPost,
        answers_resends=True,
        response=PromptStatusOut,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/prompts/{prompt_id}",
        get_prompt,
        "A prompt's status, why it ended unanswered, its reply and its place in the queue",
        capability=Capability.READ_SESSION,
        response=PromptStatusOut,
        errors=(404,),
    ),
]
