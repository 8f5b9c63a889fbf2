"""REST routes of a session's members and their client tokens."""

from __future__ import annotations

from collections.abc import Awaitable

from parley.authz.membership import ADMIN, judge_membership_change
from parley.authz.policy import Decision, Do, Readers, Subject, decide
from parley.authz.roles import Capability, Member, check_capabilities
from parley.authz.tokens import ADMIN_ACTOR, ClientClaims, issue_token
from parley.server.http.cursor import CURSOR, make_cursor, read_cursor
from parley.server.http.member_list import MemberListBody, member_out
from parley.server.http.models import (
    SESSION_TITLE_MAX_CHARS,
    MemberList,
    MemberOut,
    MemberPut,
    MePatch,
    MySession,
    MySessionList,
    TokenCreate,
    TokenOut,
)
from parley.server.http.rest import (
    Caller,
    Encoded,
    Operation,
    QueryParam,
    QueryStr,
    path_pattern,
    read_of_kept,
    read_paid_after,
    spend_command_everywhere,
)
from parley.server.http.sessions import SESSION_ERRORS, USER_ID, check_user_id, session_row
from parley.server.runtime.room import SessionRoom
from parley.server.state import AppState
from parley.server.store.access import AccessStore
from parley.server.store.link_tokens import LinkRefusal, Revoked, by_readers
from parley.server.store.rows import check_room_for
from parley.server.store.sessions import Judge, MemberChange, MemberRow
from parley.session.errors import Conflict, Forbidden, InvalidInput, NotFound


def _member_out(state: AppState, row: MemberRow) -> MemberOut:
    return member_out(row.as_member(), row.display_name, state.rooms.roles)


async def put_member(
    state: AppState, session_id: str, user_id: str, body: MemberPut, caller: Caller
) -> MemberOut:
    check_user_id(user_id)
    await session_row(state, session_id)
    room = await state.rooms.current(session_id)  # roles included, as committed
    if body.role not in state.rooms.roles:
        raise InvalidInput(f"role: no role {body.role!r} (see GET /api/v1/roles)")
    grants, denials = check_capabilities(body.grants), check_capabilities(body.denials)
    room = await state.rooms.current(session_id)
    change = await _change_member(
        state,
        room,
        caller,
        user_id,
        Member(user_id, body.role, grants, denials),
        display_name=body.display_name,
    )
    assert change.after is not None
    return _member_out(state, change.after)


async def get_me(state: AppState, session_id: str, caller: Caller) -> MemberOut:
    """The calling member: role, what they may do now, display name."""
    row = await state.store.get_member(session_id, _member_id(caller))
    if row is None:
        raise NotFound("you are not a member of this session")
    return _member_out(state, row)


async def patch_me(state: AppState, session_id: str, body: MePatch, caller: Caller) -> MemberOut:
    """Change one's own display name (nothing else: a role is changed by who manages
    members). Refused, without a write, if the membership changed meanwhile."""
    user_id = _member_id(caller)
    room = await state.rooms.current(session_id)
    current = room.membership.members.get(user_id)
    if current is None:
        raise NotFound("you are not a member of this session")
    # A write that wakes every reader of the session: as bounded as the member's commands.
    await spend_command_everywhere(state, room, user_id)

    def judge(before: MemberRow | None, _actor: MemberRow | None) -> Decision:
        same = before is not None and before.as_member() == current
        return Decision(same, "your membership changed meanwhile; read it again")

    change = await state.store.change_member(
        session_id,
        user_id,
        current,
        int(state.clock() * 1000),
        judge,
        user_id,
        display_name=body.display_name,
        distinct_name=True,  # another member's name is refused, under the session's lock
    )
    if not change.decision.allowed:
        raise Conflict(change.decision.reason)
    await state.rooms.settings_changed(room, user_id)  # presence and transcripts show it
    assert change.after is not None
    return _member_out(state, change.after)


async def my_sessions(state: AppState, limit: int, cursor: str | None, caller: Caller) -> Encoded:
    """The sessions the token's member belongs to (by user id), newest first: after
    ``cursor`` (the last page's ``next_cursor``). Each needs a token of its own to join:
    this lists, it grants nothing. A revoked token is refused (401) by the listing's own
    read of it too, so it never lists the session whose membership revoked it.

    A page spends one command of the member's budget in the token's session, and their read
    budget there by its bytes, paid first by the most it can be: 429 ``rate_limited`` past
    either."""
    # Review RV40-F2: a page of 200 sessions took the loop about 16 ms, and four connections
    # reading it in a loop unbudgeted made another member's reads ten times slower.
    member_id = _member_id(caller)
    assert caller.session_id is not None  # a member's token names its session
    room = await state.rooms.current(caller.session_id)
    await spend_command_everywhere(state, room, member_id)
    await state.rooms.current_access()

    def readable(member: MemberRow) -> bool:
        # Not even the title of a session the member may not read (``GET …/{id}`` is 403).
        subject = Subject.of(member.as_member(), state.rooms.roles)
        return decide(subject, Do(Capability.READ_SESSION)).allowed

    after = None if cursor is None else read_cursor(cursor)
    token_id = None if caller.claims is None else caller.claims.token_id

    async def answer() -> bytes:
        rows = await state.store.sessions_of_member(
            member_id, limit=limit + 1, keep=readable, after=after, token_id=token_id
        )
        last = rows[limit - 1][0] if len(rows) > limit else None
        page = MySessionList(
            sessions=[
                MySession(
                    id=s.id,
                    title=s.title,
                    role=m.role,
                    created_at=s.created_at,
                    last_seq=s.last_seq,
                )
                for s, m in rows[:limit]
            ],
            limit=limit,
            next_cursor=None if last is None else make_cursor(last.created_at, last.id),
        )
        return page.model_dump_json().encode()

    most = min(limit * LISTED_SESSION_MAX_BYTES, state.settings.read_burst_bytes)
    return await read_paid_after(state, room, caller.user_id, answer, least=most)


# The most a session adds to ``/me/sessions``: its title at its bound, each character as up
# to 6 bytes (``\u001f``), its id, role, numbers and keys.
LISTED_SESSION_MAX_BYTES = 6 * SESSION_TITLE_MAX_CHARS + 256


def _member_id(caller: Caller) -> str:
    if caller.user_id is None:
        raise Forbidden("this route answers for a member: call it with a client token")
    return caller.user_id


async def delete_member(state: AppState, session_id: str, user_id: str, caller: Caller) -> None:
    """Remove a member: their tokens are revoked, their sockets closed, their prompts
    stopped."""
    room = await state.rooms.current(session_id)
    await _change_member(state, room, caller, user_id, None)


async def _change_member(
    state: AppState,
    room: SessionRoom,
    caller: Caller,
    user_id: str,
    after: Member | None,
    display_name: str | None = None,
) -> MemberChange:
    """Judge (``authz.membership``), store and apply one membership change, the judgment
    made on the rows read in the writing transaction. A refusal is audited and raised. A
    member's change spends their command budget, as their other writes do; a new member
    past ``PARLEY_MAX_MEMBERS_PER_SESSION`` is refused (``conflict``)."""
    await spend_command_everywhere(state, room, caller.user_id)
    # One change at a time in this room: the cap counts the members the changes before
    # it put in force (concurrent adds all saw the same count).
    async with room.membership.changing:
        limit = state.settings.max_members_per_session
        present = room.membership.members
        if after is not None and user_id not in present:  # refused early (and under the lock)
            check_room_for(len(present), limit)
        roles = state.rooms.roles

        def judged(documents: set[Readers]) -> tuple[Judge, LinkRefusal]:
            """The change judged by the reader lists as of its commit (read under the
            session's lock, as a document's attach reads them: FX37)."""

            def judge(before: MemberRow | None, actor: MemberRow | None) -> Decision:
                by_admin = caller.user_id is None
                who = ADMIN if by_admin else None if actor is None else actor.as_member()
                previous = None if before is None else before.as_member()
                return judge_membership_change(who, previous, after, roles, documents)

            return judge, by_readers(roles, documents)

        def store() -> Awaitable[MemberChange]:
            return state.store.change_member(
                room.session_id,
                user_id,
                after,
                int(state.clock() * 1000),
                None,
                caller.user_id,
                display_name=display_name,
                # Nobody, the admin key included, gives a member another's name (review:
                # names the admin gave or added could read as another member's, shown the
                # same).
                distinct_name=display_name is not None,
                max_members=limit,  # read again under the session's lock: on every node
                readers=judged,
            )

        # Ordered with the session's writes: their commands after it are judged by it.
        change = await room.store_change(user_id, store)
        actor = caller.actor
        if not change.decision.allowed:
            action = f"{'change' if after is not None else 'remove'} member {user_id}"
            wanted = None if after is None else _member_json(after)
            await room.writer.audit(
                "refused",
                actor,
                {"action": action, "reason": change.decision.reason, "after": wanted},
            )
            change.decision.require()
        if change.before is None and change.after is None:
            raise NotFound(f"{user_id!r} is not a member of this session")
        # In force where the session runs (all of it when tokens were revoked with it).
        await state.rooms.settings_changed(room, None if change.revoked else user_id)
        await revocations_in_force(state, change.revoked, but=room.session_id)
    await room.writer.audit(
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


async def list_members(state: AppState, session_id: str, caller: Caller) -> Encoded:
    """Every member, as in force in the room. A member's read spends one command of their
    budget, shared with their sockets, and their read budget by the answer's bytes
    (``PARLEY_READ_BYTES_PER_S``): 429 ``rate_limited`` past either."""
    await session_row(state, session_id)
    room = await state.rooms.current(session_id)
    if caller.user_id is not None:
        await spend_command_everywhere(state, room, caller.user_id)
    await state.rooms.current_access()
    kept = state.member_lists.get(room)
    if kept is None:
        kept = state.member_lists[room] = MemberListBody()
    roles = state.rooms.roles

    async def encode() -> bytes:
        return kept.encode(room.membership, roles)

    return Encoded(await read_of_kept(state, room, caller.user_id, kept.size, encode))


async def create_token(state: AppState, session_id: str, body: TokenCreate) -> TokenOut:
    await session_row(state, session_id)
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
    member, token, claims, revoked = issued
    await revocations_in_force(state, revoked)
    return token_out(member, token, claims)


async def revocations_in_force(state: AppState, revoked: Revoked, but: str = "") -> None:
    """Put tokens revoked with another change (``link_tokens``) in force, as ``revoke_token``
    does, in each session (but ``but``, put in force already) loaded here: its sockets
    close, its prompts stop; in force where it runs before this returns (cluster mode: the
    revocation's notification tells every node; a session loaded later reads it)."""
    for session_id, tokens in revoked.items():
        room = state.rooms.loaded(session_id)
        if room is None or session_id == but:
            continue
        for token in tokens:
            await room.membership.revoke_token(token)
        await state.rooms.settings_changed(room)


def token_out(member: MemberRow, token: str, claims: ClientClaims) -> TokenOut:
    return TokenOut(
        token=token,
        jti=claims.token_id,
        expires_at=claims.expires_at,
        user_id=claims.user_id,
        session_id=claims.session_id,
        role=member.role,
    )


async def revoke_token(state: AppState, session_id: str, jti: str) -> None:
    """Revoke one client token: its sockets close (4401) and its member's prompts stop."""
    await session_row(state, session_id)
    room = await state.rooms.get(session_id)
    now_ms = int(state.clock() * 1000)
    # Ordered with the session's writes: a command sent with it after it is refused.
    revocation = await room.store_revocation(
        lambda: AccessStore(state.store).revoke_token(session_id, jti, now_ms)
    )
    if revocation is None:
        raise NotFound(f"no unexpired token {jti!r} in this session")
    token = revocation.token
    await room.membership.revoke_token(token)
    if not revocation.first:
        # Revoked already: the same 204, and no change (the first call put it in force
        # everywhere and audited it; review FX36: a repeat wrote a second record).
        return
    # In force where the session runs before this returns (review: revoked through a
    # node that follows it, the token still stored a message on the running node).
    await state.rooms.settings_changed(room)
    await room.writer.audit("token", ADMIN_ACTOR, {"revoked": jti, "user_id": token.user_id})


OPERATIONS: list[Operation] = [
    Operation(
        "PUT",
        "/api/v1/sessions/{session_id}/members/{user_id}",
        put_member,
        "Add a member or change a member's role",
        path_forms={"user_id": path_pattern(USER_ID.pattern)},
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
        path_forms={"user_id": path_pattern(USER_ID.pattern)},
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
        with_caller=True,
        response=MemberList,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/me",
        get_me,
        "The calling member (client token): role, capabilities, display name",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=MemberOut,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "PATCH",
        "/api/v1/sessions/{session_id}/me",
        patch_me,
        "Change one's own display name (client token)",
        capability=Capability.READ_SESSION,
        with_caller=True,
        body=MePatch,
        response=MemberOut,
        errors=(404, 409, 429),
    ),
    Operation(
        "GET",
        "/api/v1/me/sessions",
        my_sessions,
        "The sessions the client token's member belongs to",
        capability=Capability.READ_SESSION,
        with_caller=True,
        own_session=True,
        response=MySessionList,
        query=(QueryParam("limit", 1, 200, 50),),
        query_str=(QueryStr("cursor", 400, required=False, pattern=CURSOR),),
        errors=(429,),
        tag="members",
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/tokens",
        create_token,
        "Mint a short-lived client token for a member",
        body=TokenCreate,
        response=TokenOut,
        status=201,
        location="/api/v1/sessions/{session_id}/tokens/{jti}",
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
]
