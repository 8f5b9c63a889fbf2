"""Private side-threads over REST: a member's own conversations with the model beside a
session (``session.core.threads``).

Every change is sent as the command frame a socket sends (``thread_open``,
``thread_prompt``, …) through the same door as a prompt over HTTP (``prompts.send``:
judged by the core, limited by the member's command budget, forwarded to the node that
runs the session); reads come from the store, so every node answers alike. A member sees
their own side-threads only; another's is ``not_found``. The admin key reads any.
"""

from __future__ import annotations

from collections.abc import Mapping

from parley.authz.roles import Capability
from parley.server.http.models import CancelPost, EntryPost, MessagePosted
from parley.server.http.prompts import COMMAND_ERRORS, command_id, send
from parley.server.http.rest import Caller, Encoded, Operation, read_paid_after
from parley.server.http.thread_models import (
    ThreadListOut,
    ThreadOpened,
    ThreadOut,
    ThreadPickPost,
    ThreadPost,
    ThreadRunAccepted,
)
from parley.server.runtime.side_threads import thread_json
from parley.server.state import AppState
from parley.session.errors import NotFound
from parley.session.thread_commands import MAX_TITLE_CHARS


async def _thread(state: AppState, session_id: str, thread_id: str, caller: Caller) -> Encoded:
    room = await state.rooms.current(session_id)  # ``not_found`` for a session not there

    async def answer() -> bytes:
        found = await state.store.load_threads(session_id, caller.user_id, thread_id=thread_id)
        for thread in found:
            # Judged for the reader now, as ``…/entries/{id}/private`` is.
            shown = thread_json(room.side_threads.read_by(thread, caller.user_id), turns=True)
            return ThreadOut.model_validate(shown).model_dump_json().encode()
        raise NotFound(f"no side-thread {thread_id!r} of yours in this session")

    # Its answer's bytes spend the reader's read budget, as the transcript's do (review: 16
    # concurrent reads of a member's threads held the server for seconds), checked before
    # the thread is loaded (review RJ-2: a refused read cost the whole load).
    return await read_paid_after(state, room, caller.user_id, answer)


# The most a side-thread adds to a list's JSON beside its owner's id: its title at its
# bound, each character as up to 6 bytes (``\u001f``), and its id, numbers and keys.
LISTED_THREAD_MAX_BYTES = 6 * MAX_TITLE_CHARS + 256


def _most_listed_bytes(state: AppState, user_id: str) -> int:
    """The most a list of ``user_id``'s side-threads can be: as many as they may keep."""
    each = LISTED_THREAD_MAX_BYTES + 6 * len(user_id)
    return 64 + state.settings.max_threads_per_member * each


async def list_threads(state: AppState, session_id: str, caller: Caller) -> Encoded:
    """The caller's side-threads in this session, oldest first (the admin: everyone's). A
    member's list spends their read budget by its bytes, as a thread's read does (review
    RL-2: one rule for every list made anew from the store): paid before the store is
    read by the most it can be (FX67: 1 byte, so lists asked at once were each made
    against one budget), and settled to its bytes once made."""
    room = await state.rooms.current(session_id)  # ``not_found`` for a session not there

    async def answer() -> bytes:
        threads = await state.store.load_threads(session_id, caller.user_id, texts=False)
        listed = ThreadListOut(
            threads=[ThreadOut.model_validate(thread_json(t, turns=False)) for t in threads]
        )
        return listed.model_dump_json().encode()

    least = 1
    if caller.user_id is not None:
        least = min(_most_listed_bytes(state, caller.user_id), state.settings.read_burst_bytes)
    return await read_paid_after(state, room, caller.user_id, answer, least=least)


async def open_thread(
    state: AppState, session_id: str, body: ThreadPost, caller: Caller
) -> ThreadOpened:
    command = {"type": "thread_open", "id": command_id(body.id), "title": body.title}
    if body.anchor is not None:
        command["anchor"] = body.anchor
    ack = await send(state, session_id, caller, body.as_user, command)
    return ThreadOpened(thread_id=str(ack["thread_id"]), anchor_seq=int(ack["anchor_seq"]))


async def get_thread(state: AppState, session_id: str, thread_id: str, caller: Caller) -> Encoded:
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


async def _share(
    state: AppState,
    session_id: str,
    caller: Caller,
    as_user: str | None,
    command: Mapping[str, object],
) -> MessagePosted:
    ack = await send(state, session_id, caller, as_user, {"type": "thread_share", **command})
    return MessagePosted(message_id=str(ack["message_id"]), seq=int(ack["seq"]))


async def share_thread(
    state: AppState, session_id: str, thread_id: str, body: EntryPost, caller: Caller
) -> MessagePosted:
    """Post ``text`` (say, the edited draft) into the session as the member's message,
    marked as from a private thread (``restricted_share`` if the side-thread drew on what
    not every member may read, under ``restricted_replies: private``; ``busy`` while a
    reply is being written in it)."""
    command = {"id": command_id(body.id), "thread_id": thread_id, "text": body.text}
    return await _share(state, session_id, caller, body.as_user, command)


async def share_replies(
    state: AppState, session_id: str, thread_id: str, body: ThreadPickPost, caller: Caller
) -> MessagePosted:
    """Post the picked replies of the side-thread, as ``share`` does."""
    command = {"id": command_id(body.id), "thread_id": thread_id, "turn_ids": body.turn_ids}
    return await _share(state, session_id, caller, body.as_user, command)


async def close_thread(
    state: AppState, session_id: str, thread_id: str, body: CancelPost, caller: Caller
) -> Encoded:
    """Close a side-thread: kept and readable, no more prompts; a run in it stops."""
    command = {"type": "thread_close", "id": command_id(body.id), "thread_id": thread_id}
    await send(state, session_id, caller, body.as_user, command)
    reader = caller if body.as_user is None else Caller(body.as_user, session_id, None)
    return await _thread(state, session_id, thread_id, reader)


async def delete_thread(state: AppState, session_id: str, thread_id: str, caller: Caller) -> None:
    """Delete a side-thread and its turns (a run in it stops). The admin key deletes any
    member's, sent as its owner (audited as such)."""
    owner = None
    if caller.user_id is None:
        await state.rooms.current(session_id)  # ``not_found`` for a session not there
        threads = await state.store.load_threads(session_id, thread_id=thread_id, texts=False)
        owner = next((t.owner for t in threads), None)
        if owner is None:
            raise NotFound(f"no side-thread {thread_id!r} in this session")
    command = {"type": "thread_delete", "id": command_id(None), "thread_id": thread_id}
    await send(state, session_id, caller, owner, command)


THREAD = "/api/v1/sessions/{session_id}/threads/{thread_id}"
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/threads",
        list_threads,
        "Your private side-threads in this session (the admin key: every member's), "
        "without their turns' texts (which spends a member's read budget)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=ThreadListOut,
        errors=(404, 429),
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/threads",
        open_thread,
        "Open a private side-thread, its context the session up to an entry (or now)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=ThreadPost,
        answers_resends=True,
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
        errors=(404, 429),
    ),
    Operation(
        "POST",
        THREAD + "/prompts",
        prompt_thread,
        "Ask in a side-thread: answered beside the session's queue, to you alone",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=EntryPost,
        answers_resends=True,
        body_bytes=None,  # texts: up to PARLEY_MAX_REQUEST_BYTES
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
        answers_resends=True,
        response=ThreadRunAccepted,
        status=202,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "POST",
        THREAD + "/share",
        share_thread,
        "Post text (say, the edited draft summary) into the session as your message",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=EntryPost,
        answers_resends=True,
        body_bytes=None,  # texts: up to PARLEY_MAX_REQUEST_BYTES
        response=MessagePosted,
        status=202,
        errors=(*COMMAND_ERRORS, 403),
    ),
    Operation(
        "POST",
        THREAD + "/share-replies",
        share_replies,
        "Post picked replies of the side-thread into the session as your message",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=ThreadPickPost,
        answers_resends=True,
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
        answers_resends=True,
        response=ThreadOut,
        errors=COMMAND_ERRORS,
    ),
    Operation(
        "DELETE",
        THREAD,
        delete_thread,
        "Delete a side-thread and its turns (the admin key: any member's)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        status=204,
        errors=COMMAND_ERRORS,
    ),
]
