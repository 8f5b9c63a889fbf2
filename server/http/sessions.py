"""The admin REST API under ``/api/v1``: sessions, members, client tokens, transcripts."""

from __future__ import annotations

import re
import secrets

from authz.membership import ADMIN, judge_membership_change
from authz.policy import Decision, Subject
from authz.roles import Capability, Member, check_capabilities
from authz.tokens import ClientClaims, issue_token
from server.http.models import (
    ContextPreview,
    FactPut,
    FactsOut,
    MemberList,
    MemberOut,
    MemberPut,
    PinCreate,
    PinsOut,
    PreviewExcluded,
    PreviewMessage,
    PreviewSummary,
    SessionCreate,
    SessionList,
    SessionOut,
    SessionPatch,
    TokenCreate,
    TokenOut,
    TranscriptEntryOut,
    TranscriptOut,
)
from server.http.rest import Caller, Operation, QueryParam, QueryStr
from server.runtime.room import SessionRoom
from server.state import AppState
from server.store.access import AccessStore
from server.store.sessions import MemberChange, MemberRow, SessionRow
from session.errors import Conflict, Forbidden, InvalidInput, NotFound
from session.queue import Policy
from session.schema import queue_of

USER_ID = re.compile(r"[A-Za-z0-9._@:+-]{1,200}")


def _session_out(row: SessionRow) -> SessionOut:
    return SessionOut(
        id=row.id,
        title=row.title,
        created_at=row.created_at,
        last_seq=row.last_seq,
        policy=Policy(row.policy).value,
        model=row.model,
        restricted_replies="shared" if row.restricted_replies == "shared" else "private",
    )


async def _session(state: AppState, session_id: str) -> SessionRow:
    row = await state.store.get_session(session_id)
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return row


def _check_user_id(user_id: str) -> None:
    if not USER_ID.fullmatch(user_id):
        raise InvalidInput("user_id: 1-200 characters of letters, digits and ._@:+-")


async def create_session(state: AppState, body: SessionCreate) -> SessionOut:
    session_id = secrets.token_hex(12)
    row = await state.store.create_session(
        session_id, body.title, body.policy, int(state.clock() * 1000)
    )
    return _session_out(row)


async def list_sessions(state: AppState, limit: int, offset: int) -> SessionList:
    rows = await state.store.list_sessions(limit=limit, offset=offset)
    total = await state.store.count_sessions()
    return SessionList(
        sessions=[_session_out(r) for r in rows], total=total, limit=limit, offset=offset
    )


async def get_session(state: AppState, session_id: str) -> SessionOut:
    return _session_out(await _session(state, session_id))


async def update_session(
    state: AppState, session_id: str, body: SessionPatch, caller: Caller
) -> SessionOut:
    """Change a session's title, scheduling policy, model or restricted-reply policy (in
    force where the session runs when this returns); policy changes are audited."""
    before = await _session(state, session_id)
    by = caller.user_id or "admin"
    stored: dict[str, str | None] = {}
    if "model" in body.model_fields_set:
        if body.model is not None and body.model not in state.settings.catalog():
            names = ", ".join(sorted(state.settings.catalog()))
            raise InvalidInput(f"model: {body.model!r} is not configured (choose from {names})")
        stored["model"] = body.model
    if body.title is not None:
        stored["title"] = body.title
    if body.restricted_replies is not None:
        stored["restricted_replies"] = body.restricted_replies
    if stored:  # one transaction, with its settings_changed event
        await state.store.change_settings(session_id, stored, int(state.clock() * 1000), by)
    room = await state.rooms.get(session_id)
    if body.policy is not None:
        write = {"op": "policy", "policy": body.policy, "author": caller.user_id or ""}
        await state.rooms.change(room, write)
    if "model" in body.model_fields_set or body.restricted_replies is not None:
        await state.rooms.settings_changed(room)
    changes = {
        name: {"from": getattr(before, name), "to": value}
        for name, value in (
            ("policy", body.policy),
            ("restricted_replies", body.restricted_replies),
        )
        if value is not None and value != getattr(before, name)
    }
    if changes:
        await room.audit("policy", caller.user_id or "admin", changes)
    return _session_out(await _session(state, session_id))


async def delete_session(state: AppState, session_id: str) -> None:
    await _session(state, session_id)
    await state.rooms.forget_session(session_id)
    if not await state.store.delete_session(session_id, int(state.clock() * 1000)):
        raise NotFound(f"no session {session_id!r}")


def _member_out(state: AppState, row: MemberRow) -> MemberOut:
    member = row.as_member()
    subject = Subject.of(member, state.rooms.roles)
    return MemberOut(
        user_id=row.user_id,
        role=row.role,
        grants=sorted(member.grants),
        denials=sorted(member.denials),
        capabilities=sorted(subject.capabilities),
        created_at=row.created_at,
    )


async def put_member(
    state: AppState, session_id: str, user_id: str, body: MemberPut, caller: Caller
) -> MemberOut:
    _check_user_id(user_id)
    await _session(state, session_id)
    room = await state.rooms.current(session_id)  # roles included, as committed
    if body.role not in state.rooms.roles:
        raise InvalidInput(f"role: no role {body.role!r} (see GET /api/v1/roles)")
    grants, denials = check_capabilities(body.grants), check_capabilities(body.denials)
    room = await state.rooms.current(session_id)
    change = await _change_member(
        state, room, caller, user_id, Member(user_id, body.role, grants, denials)
    )
    assert change.after is not None
    return _member_out(state, change.after)


async def delete_member(state: AppState, session_id: str, user_id: str, caller: Caller) -> None:
    """Remove a member: their tokens are revoked, their sockets closed, their prompts
    stopped."""
    room = await state.rooms.current(session_id)
    await _change_member(state, room, caller, user_id, None)


async def _change_member(
    state: AppState, room: SessionRoom, caller: Caller, user_id: str, after: Member | None
) -> MemberChange:
    """Judge (``authz.membership``), store and apply one membership change, the judgment
    made on the rows read in the writing transaction. A refusal is audited and raised."""
    documents = await AccessStore(state.store).reader_lists(room.session_id)
    roles = state.rooms.roles

    def judge(before: MemberRow | None, actor: MemberRow | None) -> Decision:
        who = ADMIN if caller.user_id is None else None if actor is None else actor.as_member()
        previous = None if before is None else before.as_member()
        return judge_membership_change(who, previous, after, roles, documents)

    change = await state.store.change_member(
        room.session_id, user_id, after, int(state.clock() * 1000), judge, caller.user_id
    )
    actor = caller.user_id or "admin"
    if not change.decision.allowed:
        action = f"{'change' if after is not None else 'remove'} member {user_id}"
        wanted = None if after is None else _member_json(after)
        await room.audit(
            "refused", actor, {"action": action, "reason": change.decision.reason, "after": wanted}
        )
        change.decision.require()
    if change.before is None and change.after is None:
        raise NotFound(f"{user_id!r} is not a member of this session")
    await state.rooms.settings_changed(room)  # in force where the session runs
    await room.audit(
        "membership",
        actor,
        {
            "user_id": user_id,
            "before": None if change.before is None else _member_json(change.before.as_member()),
            "after": None if change.after is None else _member_json(change.after.as_member()),
        },
    )
    return change


def _member_json(member: Member) -> dict[str, object]:
    return {
        "role": member.role,
        "grants": sorted(member.grants),
        "denials": sorted(member.denials),
    }


async def list_members(state: AppState, session_id: str) -> MemberList:
    await _session(state, session_id)
    await state.rooms.current_access()
    rows = await state.store.list_members(session_id)
    return MemberList(members=[_member_out(state, r) for r in rows])


async def create_token(state: AppState, session_id: str, body: TokenCreate) -> TokenOut:
    await _session(state, session_id)
    ttl = body.ttl_seconds or state.settings.token_ttl_default_s
    if ttl > state.settings.token_ttl_max_s:
        raise InvalidInput(f"ttl_seconds: at most {state.settings.token_ttl_max_s}")
    now = int(state.clock())

    def mint(member: MemberRow) -> tuple[str, ClientClaims]:
        return issue_token(
            state.keys.signing_key,
            user_id=body.user_id,
            session_id=session_id,
            now=now,
            ttl_seconds=ttl,
            epoch=member.token_epoch,
        )

    issued = await AccessStore(state.store).record_token(session_id, body.user_id, now, mint)
    if issued is None:
        raise Conflict(f"{body.user_id!r} is not a member of this session")
    member, token, claims = issued
    return TokenOut(
        token=token,
        jti=claims.token_id,
        expires_at=claims.expires_at,
        user_id=body.user_id,
        session_id=session_id,
        role=member.role,
    )


async def revoke_token(state: AppState, session_id: str, jti: str) -> None:
    """Revoke one client token: its sockets close (4401) and its member's prompts stop."""
    await _session(state, session_id)
    token = await AccessStore(state.store).revoke_token(session_id, jti, int(state.clock()))
    if token is None:
        raise NotFound(f"no unexpired token {jti!r} in this session")
    room = await state.rooms.get(session_id)
    await room.membership.revoke_token(token)
    await room.audit("token", "admin", {"revoked": jti, "user_id": token.user_id})


async def get_transcript(state: AppState, session_id: str) -> TranscriptOut:
    room = await state.rooms.current(session_id)
    return TranscriptOut(
        messages=[TranscriptEntryOut.model_validate(e.to_json()) for e in room.doc.entries()]
    )


async def list_facts(state: AppState, session_id: str) -> FactsOut:
    room = await state.rooms.current(session_id)
    return FactsOut(facts=room.doc.fact_map())


async def put_fact(
    state: AppState, session_id: str, key: str, body: FactPut, caller: Caller
) -> FactsOut:
    room = await state.rooms.get(session_id)
    write = {"op": "set_fact", "key": key, "value": body.value, "author": caller.user_id or ""}
    result = await state.rooms.change(room, write)
    return FactsOut(facts=result["facts"])


async def delete_fact(state: AppState, session_id: str, key: str) -> None:
    room = await state.rooms.current(session_id)
    if key not in room.doc.fact_map():
        raise NotFound(f"no fact {key!r}")
    await state.rooms.change(room, {"op": "set_fact", "key": key, "value": None})


async def list_pins(state: AppState, session_id: str) -> PinsOut:
    room = await state.rooms.current(session_id)
    return PinsOut(pins=room.doc.pinned())


async def create_pin(state: AppState, session_id: str, body: PinCreate) -> PinsOut:
    room = await state.rooms.get(session_id)
    result = await state.rooms.change(
        room, {"op": "pin", "entry_id": body.entry_id, "pinned": True}
    )
    return PinsOut(pins=result["pins"])


async def delete_pin(state: AppState, session_id: str, entry_id: str) -> None:
    room = await state.rooms.current(session_id)
    if entry_id not in room.doc.pinned():
        raise NotFound(f"{entry_id!r} is not pinned")
    await state.rooms.change(room, {"op": "pin", "entry_id": entry_id, "pinned": False})


async def preview_context(
    state: AppState, session_id: str, user_id: str, caller: Caller
) -> ContextPreview:
    """Exactly what the next model call for ``user_id`` would be given, if it started now:
    the run that takes the user's next waiting prompt, or the history alone. A member may
    preview only their own."""
    if caller.user_id is not None and caller.user_id != user_id:
        raise Forbidden("a member may preview only their own model input")
    room = await state.rooms.current(session_id, kept=True)
    if user_id not in room.membership.members:
        raise Conflict(f"{user_id!r} is not a member of this session")
    # The queue as the document shows it: the running node's committed plan, the same on
    # every node (a read replica has no queue of its own).
    queue = queue_of(room.doc, room.queue.limits)
    waiting = [p for p in queue.pending() if p.author == user_id]
    prompt_ids: tuple[str, ...] = ()
    if waiting:
        upcoming = queue.next()
        if upcoming is not None and waiting[0].id in upcoming.ids:
            prompt_ids = upcoming.ids
        else:
            prompt_ids = (waiting[0].id,)
    scope = room.runs.scope_for(
        [user_id] if not prompt_ids else _authors(room, prompt_ids), preview=True
    )
    built = room.context.build(prompt_ids, scope)
    request = built.request
    return ContextPreview(
        user_id=user_id,
        prompt_ids=list(prompt_ids),
        tokenizer=built.tokenizer,
        budget=built.budget,
        tokens=built.tokens,
        system=request.system,
        system_tokens=built.system_tokens,
        messages=[
            PreviewMessage(
                role=m.role,
                author=m.author,
                authors=list(m.authors),
                content=m.content,
                tokens=tokens,
                answering=index in request.answering,
            )
            for index, (m, tokens) in enumerate(
                zip(request.messages, built.tokens_per_message, strict=True)
            )
        ],
        excluded=[PreviewExcluded(entry_id=x.entry_id, reason=x.reason) for x in built.excluded],
        notes=built.notes,
        summary=None
        if built.summary is None
        else PreviewSummary(
            id=built.summary.id,
            from_seq=built.summary.from_seq,
            to_seq=built.summary.to_seq,
            entries=len(built.summary.covers),
            tokens=built.summary.tokens,
        ),
    )


def _authors(room: SessionRoom, prompt_ids: tuple[str, ...]) -> list[str]:
    return [room.doc.entry(p).author for p in prompt_ids]


SESSION_ERRORS = (404,)
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/facts",
        list_facts,
        "Session facts",
        capability=Capability.READ_SESSION,
        response=FactsOut,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "PUT",
        "/api/v1/sessions/{session_id}/facts/{key}",
        put_fact,
        "Set a session fact (always in the model's input, one line, with who set it)",
        capability=Capability.PIN,
        body=FactPut,
        response=FactsOut,
        errors=(404,),
        with_caller=True,
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/facts/{key}",
        delete_fact,
        "Remove a session fact",
        capability=Capability.PIN,
        status=204,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/pins",
        list_pins,
        "Pinned entries",
        capability=Capability.READ_SESSION,
        response=PinsOut,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/pins",
        create_pin,
        "Pin an entry (always in the model's input)",
        capability=Capability.PIN,
        body=PinCreate,
        response=PinsOut,
        status=201,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/pins/{entry_id}",
        delete_pin,
        "Unpin an entry",
        capability=Capability.PIN,
        status=204,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/context",
        preview_context,
        "Preview the next model input for a member",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=ContextPreview,
        errors=(404, 409),
        query_str=(QueryStr("user_id"),),
    ),
    Operation(
        "POST",
        "/api/v1/sessions",
        create_session,
        "Create a session",
        body=SessionCreate,
        response=SessionOut,
        status=201,
    ),
    Operation(
        "GET",
        "/api/v1/sessions",
        list_sessions,
        "List sessions",
        response=SessionList,
        query=(QueryParam("limit", 1, 500, 50), QueryParam("offset", 0, 10**9, 0)),
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
        errors=SESSION_ERRORS,
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
        "PUT",
        "/api/v1/sessions/{session_id}/members/{user_id}",
        put_member,
        "Add a member or change a member's role",
        capability=Capability.MANAGE_MEMBERS,
        with_caller=True,
        body=MemberPut,
        response=MemberOut,
        errors=(404, 409),
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/members/{user_id}",
        delete_member,
        "Remove a member (their tokens are revoked, sockets close with 4403, prompts stop)",
        capability=Capability.MANAGE_MEMBERS,
        with_caller=True,
        status=204,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/members",
        list_members,
        "List members",
        capability=Capability.READ_SESSION,
        response=MemberList,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/tokens",
        create_token,
        "Mint a short-lived client token for a member",
        body=TokenCreate,
        response=TokenOut,
        status=201,
        errors=(404, 409),
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/tokens/{jti}",
        revoke_token,
        "Revoke a client token (its sockets close with 4401, its member's prompts stop)",
        status=204,
        errors=(404,),
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/transcript",
        get_transcript,
        "The transcript in sequence order",
        capability=Capability.READ_SESSION,
        response=TranscriptOut,
        errors=SESSION_ERRORS,
    ),
]
