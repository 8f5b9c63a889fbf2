"""Private side-threads over REST: a member's own conversations with the model beside a
session (``session.core.threads``).

Every change is sent as the command frame a socket sends (``thread_open``,
``thread_prompt``, …) through the same door as a prompt over HTTP (``prompts.send``:
judged by the core, limited by the member's command budget, forwarded to the node that
runs the session); reads come from the store, so every node answers alike. A member sees
their own side-threads only; another's is ``not_found``. The admin key reads any.
"""

from __future__ import annotations

from parley.authz.roles import Capability
from parley.server.http.models import (
    CancelPost,
    EntryPost,
    MessagePosted,
    ThreadListOut,
    ThreadOpened,
    ThreadOut,
    ThreadPost,
    ThreadRunAccepted,
    ThreadSharePost,
)
from parley.server.http.prompts import COMMAND_ERRORS, command_id, send
from parley.server.http.rest import Caller, Operation
from parley.server.runtime.side_threads import thread_json
from parley.server.state import AppState
from parley.session.core import SideThread
from parley.session.errors import NotFound


async def _threads(state: AppState, session_id: str, caller: Caller) -> list[SideThread]:
    """The caller's side-threads as stored (the admin's: everyone's)."""
    await state.rooms.current(session_id)  # ``not_found`` for a session that is not there
    stored = await state.store.load_threads(session_id)
    return [t for t in stored if caller.user_id is None or t.owner == caller.user_id]


async def _thread(state: AppState, session_id: str, thread_id: str, caller: Caller) -> ThreadOut:
    for thread in await _threads(state, session_id, caller):
        if thread.id == thread_id:
            return ThreadOut.model_validate(thread_json(thread, turns=True))
    raise NotFound(f"no side-thread {thread_id!r} of yours in this session")


async def list_threads(state: AppState, session_id: str, caller: Caller) -> ThreadListOut:
    """The caller's side-threads in this session, oldest first (the admin: everyone's)."""
    threads = await _threads(state, session_id, caller)
    return ThreadListOut(
        threads=[ThreadOut.model_validate(thread_json(t, turns=False)) for t in threads]
    )


async def open_thread(
    state: AppState, session_id: str, body: ThreadPost, caller: Caller
) -> ThreadOpened:
    command = {"type": "thread_open", "id": command_id(body.id), "title": body.title}
    if body.anchor is not None:
        command["anchor"] = body.anchor
    ack = await send(state, session_id, caller, body.as_user, command)
    return ThreadOpened(thread_id=str(ack["thread_id"]), anchor_seq=int(ack["anchor_seq"]))


async def get_thread(state: AppState, session_id: str, thread_id: str, caller: Caller) -> ThreadOut:
    """A side-thread with its turns: its owner's (or the admin's) to read."""
    return await _thread(state, session_id, thread_id, caller)


async def _run(
    state: AppState, session_id: str, caller: Caller, as_user: str | None, command: dict[str, str]
) -> ThreadRunAccepted:
    ack = await send(state, session_id, caller, as_user, command)
    return ThreadRunAccepted(
        thread_id=str(ack["thread_id"]), turn_id=str(ack["turn_id"]), reply_id=str(ack["reply_id"])
    )


async def prompt_thread(
    state: AppState, session_id: str, thread_id: str, body: EntryPost, caller: Caller
) -> ThreadRunAccepted:
    """Ask in a side-thread: answered beside the session's queue, streamed to the
    member's sockets alone, the reply stored in the thread."""
    command = {
        "type": "thread_prompt",
        "id": command_id(body.id),
        "thread_id": thread_id,
        "text": body.text,
    }
    return await _run(state, session_id, caller, body.as_user, command)


async def summarise_thread(
    state: AppState, session_id: str, thread_id: str, body: CancelPost, caller: Caller
) -> ThreadRunAccepted:
    """Ask the model for a draft summary of the side-thread to share (its reply)."""
    command = {"type": "thread_summarise", "id": command_id(body.id), "thread_id": thread_id}
    return await _run(state, session_id, caller, body.as_user, command)


async def share_thread(
    state: AppState, session_id: str, thread_id: str, body: ThreadSharePost, caller: Caller
) -> MessagePosted:
    """Post ``text`` or the picked replies into the session as the member's message,
    marked as from a private thread (``restricted_share`` if it draws on what not every
    member may read, under ``restricted_replies: private``)."""
    command: dict[str, object] = {
        "type": "thread_share",
        "id": command_id(body.id),
        "thread_id": thread_id,
    }
    if body.text is not None:
        command["text"] = body.text
    if body.turn_ids is not None:
        command["turn_ids"] = body.turn_ids
    ack = await send(state, session_id, caller, body.as_user, command)
    return MessagePosted(message_id=str(ack["message_id"]), seq=int(ack["seq"]))


async def close_thread(
    state: AppState, session_id: str, thread_id: str, body: CancelPost, caller: Caller
) -> ThreadOut:
    """Close a side-thread: kept and readable, no more prompts; a run in it stops."""
    command = {"type": "thread_close", "id": command_id(body.id), "thread_id": thread_id}
    await send(state, session_id, caller, body.as_user, command)
    reader = caller if body.as_user is None else Caller(body.as_user, session_id, None)
    return await _thread(state, session_id, thread_id, reader)


async def delete_thread(state: AppState, session_id: str, thread_id: str, caller: Caller) -> None:
    """Delete a side-thread and its turns (a run in it stops)."""
    command = {"type": "thread_delete", "id": command_id(None), "thread_id": thread_id}
    await send(state, session_id, caller, None, command)


THREAD = "/api/v1/sessions/{session_id}/threads/{thread_id}"
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/threads",
        list_threads,
        "Your private side-threads in this session (the admin key: every member's)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=ThreadListOut,
        errors=(404,),
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/threads",
        open_thread,
        "Open a private side-thread, its context the session up to an entry (or now)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=ThreadPost,
        response=ThreadOpened,
        status=201,
        location=THREAD,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "GET",
        THREAD,
        get_thread,
        "A side-thread with its turns (its owner's, or the admin's, to read)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=ThreadOut,
        errors=(404,),
    ),
    Operation(
        "POST",
        THREAD + "/prompts",
        prompt_thread,
        "Ask in a side-thread: answered beside the session's queue, to you alone",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=EntryPost,
        response=ThreadRunAccepted,
        status=202,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "POST",
        THREAD + "/summary",
        summarise_thread,
        "Ask for a draft summary of the side-thread to share (written as its next reply)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=CancelPost,
        response=ThreadRunAccepted,
        status=202,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "POST",
        THREAD + "/share",
        share_thread,
        "Post text or picked replies of the side-thread into the session as your message",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=ThreadSharePost,
        response=MessagePosted,
        status=202,
        errors=(*COMMAND_ERRORS, 403),
    ),
    Operation(
        "POST",
        THREAD + "/close",
        close_thread,
        "Close a side-thread (kept, no more prompts)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=CancelPost,
        response=ThreadOut,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "DELETE",
        THREAD,
        delete_thread,
        "Delete a side-thread and its turns (the member's client token: the admin key "
        "does not act for a member here)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        status=204,
        errors=(*COMMAND_ERRORS, 422),
    ),
]
