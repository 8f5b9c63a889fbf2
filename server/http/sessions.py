"""The admin REST API under ``/api/v1``: sessions and their transcripts."""

from __future__ import annotations

import re
import secrets

from parley.authz.policy import may_read
from parley.authz.roles import Capability
from parley.authz.tokens import ADMIN_ACTOR
from parley.server.http.cursor import CURSOR, make_cursor, read_cursor
from parley.server.http.models import (
    SessionCreate,
    SessionList,
    SessionOut,
    SessionPatch,
    TranscriptOut,
)
from parley.server.http.rest import (
    Caller,
    Encoded,
    Operation,
    QueryParam,
    QueryStr,
    read_of_kept,
    spend_command_everywhere,
)
from parley.server.http.transcript_body import TranscriptBody
from parley.server.state import AppState
from parley.server.store.sessions import SessionRow
from parley.session.commands import PATH_DOTS
from parley.session.errors import Forbidden, InvalidInput, NotFound
from parley.session.queue import Policy

USER_ID = re.compile(r"[A-Za-z0-9._@:+-]{1,200}")
SESSION_ERRORS = (404,)


def _session_out(row: SessionRow) -> SessionOut:
    return SessionOut(
        id=row.id,
        title=row.title,
        created_at=row.created_at,
        last_seq=row.last_seq,
        policy=Policy(row.policy).value,
        model=row.model,
        restricted_replies="shared" if row.restricted_replies == "shared" else "private",
        restricted_replies_by=row.restricted_replies_by,
    )


async def session_row(state: AppState, session_id: str) -> SessionRow:
    row = await state.store.get_session(session_id)
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return row


def check_user_id(user_id: str) -> None:
    if not USER_ID.fullmatch(user_id):
        raise InvalidInput("user_id: 1-200 characters of letters, digits and ._@:+-")
    if user_id in PATH_DOTS:
        raise InvalidInput(f"user_id: {user_id!r} is a URL path's dot segment")
    if user_id == ADMIN_ACTOR:
        raise InvalidInput(f"user_id: {ADMIN_ACTOR!r} names the admin key in audit records")


async def create_session(state: AppState, body: SessionCreate) -> SessionOut:
    session_id = secrets.token_hex(12)
    row = await state.store.create_session(
        session_id, body.title, body.policy, int(state.clock() * 1000)
    )
    return _session_out(row)


async def list_sessions(
    state: AppState, limit: int, offset: int, cursor: str | None
) -> SessionList:
    """A page of sessions, oldest first: after ``cursor`` (the last page's
    ``next_cursor``), or past ``offset`` of them (kept for older callers)."""
    after = None
    if cursor is not None:
        if offset:
            raise InvalidInput("cursor: give it or offset, not both")
        after = read_cursor(cursor)
    rows = await state.store.list_sessions(limit=limit + 1, offset=offset, after=after)
    page = rows[:limit]
    total = await state.store.count_sessions()
    last = page[-1] if len(rows) > limit else None
    return SessionList(
        sessions=[_session_out(r) for r in page],
        total=total,
        limit=limit,
        offset=offset,
        next_cursor=None if last is None else make_cursor(last.created_at, last.id),
    )


async def get_session(state: AppState, session_id: str) -> SessionOut:
    return _session_out(await session_row(state, session_id))


async def update_session(
    state: AppState, session_id: str, body: SessionPatch, caller: Caller
) -> SessionOut:
    """Change a session's title, scheduling policy, model or restricted-reply policy (in
    force where the session runs when this returns); policy changes are audited."""
    before = await session_row(state, session_id)
    # A member's change (a socket's ``set_policy``, or a setting only REST changes) is
    # an event every reader of the session is sent: as bounded as their commands.
    await spend_command_everywhere(state, await state.rooms.get(session_id), caller.user_id)
    by = caller.actor
    stored: dict[str, str | None] = {}
    if "model" in body.model_fields_set:
        if body.model is not None and body.model not in state.settings.catalog():
            names = ", ".join(sorted(state.settings.catalog()))
            raise InvalidInput(f"model: {body.model!r} is not configured (choose from {names})")
        stored["model"] = body.model
    if body.title is not None:
        stored["title"] = body.title
    if body.restricted_replies is not None:
        # ``shared`` is the choice of whoever made it: the admin key's (None) holds for
        # everything, a member's only for what they may read (``SessionView.shares``).
        chooser = caller.user_id if body.restricted_replies == "shared" else None
        chosen = (before.restricted_replies, before.restricted_replies_by)
        if body.restricted_replies == "shared" and chosen != ("shared", chooser):
            await _may_share_restricted(state, session_id, caller)
        stored["restricted_replies"] = body.restricted_replies
        stored["restricted_replies_by"] = chooser
    if stored:  # one transaction, with its settings_changed event
        await state.store.change_settings(session_id, stored, int(state.clock() * 1000), by)
    room = await state.rooms.get(session_id)
    if body.policy is not None:
        write = {"op": "policy", "policy": body.policy, "author": caller.user_id or ""}
        await state.rooms.change(room, write)
    changed = body.restricted_replies is not None or body.title is not None
    if "model" in body.model_fields_set or changed:
        await state.rooms.settings_changed(room)  # the title: into the document's ``meta``
    changes = {
        name: {"from": getattr(before, name), "to": value}
        for name, value in (
            ("policy", body.policy),
            ("restricted_replies", body.restricted_replies),
        )
        if value is not None and value != getattr(before, name)
    }
    chooser = stored.get("restricted_replies_by", before.restricted_replies_by)
    if chooser != before.restricted_replies_by:  # a member's ``shared``, or no longer theirs
        changes["restricted_replies_by"] = {"from": before.restricted_replies_by, "to": chooser}
    if changes:
        await room.writer.audit("policy", caller.actor, changes)
    return _session_out(await session_row(state, session_id))


async def _may_share_restricted(state: AppState, session_id: str, caller: Caller) -> None:
    """``shared`` shows everyone replies drawn from any reader list in the session: a
    member may choose it only if they may read every one (as a membership change may not
    hand out read access its maker lacks). Refusals are audited. Lists added later are
    judged as a reply draws on them (``SessionView.shares``): one the chooser may not read
    keeps such a reply private."""
    if caller.user_id is None:
        return  # the admin key
    room = await state.rooms.get(session_id)
    subject = room.subject(caller.user_id)
    lists = await room.access.reader_lists(session_id)
    unreadable = sorted(r.resource for r in lists if not may_read(subject, (r,)))
    if unreadable:
        reason = (
            "restricted_replies: shared would show every member replies drawn from "
            f"material you may not read ({', '.join(unreadable[:5])})"
        )
        action = {"action": "set restricted_replies shared", "reason": reason}
        await room.writer.audit("refused", caller.actor, action)
        raise Forbidden(reason)


async def delete_session(state: AppState, session_id: str) -> None:
    await session_row(state, session_id)
    await state.rooms.forget_session(session_id)
    if not await state.store.delete_session(session_id, int(state.clock() * 1000)):
        raise NotFound(f"no session {session_id!r}")


async def get_transcript(state: AppState, session_id: str, caller: Caller) -> Encoded:
    """The whole transcript in sequence order. A member's reads spend their read budget
    by the answer's bytes (``PARLEY_READ_BYTES_PER_S``, burst ``PARLEY_READ_BURST_BYTES``;
    an answer larger than the burst takes all of it): past it, 429 ``rate_limited``."""
    # Encoded once per version of each entry (``TranscriptBody``), kept with the room.
    room, doc = await state.rooms.committed(session_id)  # read before the next await
    kept = state.transcripts.get(room)
    if kept is None:
        kept = state.transcripts[room] = TranscriptBody()
    # As of now: the encoding gives the loop back while it works.
    entries, names = doc.entries(), dict(room.membership.display_names)
    return Encoded(
        await read_of_kept(
            state, room, caller.user_id, kept.size, lambda: kept.encode(entries, names)
        )
    )


OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/api/v1/sessions",
        create_session,
        "Create a session",
        body=SessionCreate,
        response=SessionOut,
        status=201,
        location="/api/v1/sessions/{id}",
    ),
    Operation(
        "GET",
        "/api/v1/sessions",
        list_sessions,
        "List sessions",
        response=SessionList,
        query=(QueryParam("limit", 1, 500, 50), QueryParam("offset", 0, 10**9, 0)),
        query_str=(QueryStr("cursor", 400, required=False, pattern=CURSOR),),
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}",
        get_session,
        "Get a session",
        capability=Capability.READ_SESSION,
        response=SessionOut,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "PATCH",
        "/api/v1/sessions/{session_id}",
        update_session,
        "Change a session's title, scheduling policy, model or restricted-reply policy",
        capability=Capability.MANAGE_SESSION,
        with_caller=True,
        body=SessionPatch,
        response=SessionOut,
        errors=(404, 429),
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}",
        delete_session,
        "Delete a session and close its sockets",
        capability=Capability.MANAGE_SESSION,
        status=204,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/transcript",
        get_transcript,
        "The transcript in sequence order",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=TranscriptOut,
        errors=(404, 429),
    ),
]
