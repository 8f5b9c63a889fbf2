"""Invite links: minted over REST by who manages members, opened by a browser, exchanged
there for a client token of the member the invite names.

The secret travels in the link's fragment (``/demo/#invite=…``), which browsers never send
to a server, so it is in no access log; the exchange posts it in a body. A secret is 256
random bits kept only as its SHA-256; an invite works ``max_uses`` times (once by default)
until it expires or is revoked, and dies with the membership it was made for, or when its
maker could no longer mint it (revoked at its first refused use, audited once); a link a
member mints for someone else names only a user nobody has been yet, and a token it gives
lives only while its maker may still make that link (review RI-2;
``authz.tokens.token_refusal``). A failed exchange says only that the link is not valid,
whatever the reason. The exchange needs no key, so it is budgeted by client address and by
invite (``invite_limits``).
"""

from __future__ import annotations

import secrets

from parley.authz.membership import Traces, judge_invite
from parley.authz.policy import Readers
from parley.authz.roles import Capability
from parley.authz.tokens import ADMIN_ACTOR, ClientClaims, issue_token
from parley.server.http.members import revocations_in_force, token_out
from parley.server.http.models import (
    InviteCreate,
    InviteCreated,
    InviteExchange,
    InviteList,
    InviteOut,
    TokenOut,
)
from parley.server.http.rest import Caller, Operation, spend_command_everywhere
from parley.server.http.sessions import SESSION_ERRORS, session_row
from parley.server.state import AppState
from parley.server.store.access import AccessStore
from parley.server.store.invites import (
    InviteRow,
    InviteStore,
    Killed,
    read_traces,
    secret_digest,
)
from parley.server.store.rows import MemberRow
from parley.session.errors import Conflict, InvalidInput, NotFound, Unauthenticated

MAX_LIVE_INVITES = 100  # per session: each is a row to keep and a way in to watch
DEMO_LINK = "/demo/#invite={secret}"
NOT_VALID = "this invite link is not valid (expired, used up or revoked)"


def _invite_out(row: InviteRow) -> InviteOut:
    return InviteOut(
        id=row.id,
        session_id=row.session_id,
        user_id=row.user_id,
        max_uses=row.max_uses,
        uses=row.uses,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


async def create_invite(
    state: AppState, session_id: str, body: InviteCreate, caller: Caller
) -> InviteCreated:
    """Mint an invite link for a member. The secret is in this answer only."""
    await session_row(state, session_id)
    if caller.user_id is not None:  # the admin key's spend nothing: no room to load
        await spend_command_everywhere(state, await state.rooms.get(session_id), caller.user_id)
    token_ttl = body.token_ttl_seconds or state.settings.token_ttl_default_s
    if token_ttl > state.settings.token_ttl_max_s:
        raise InvalidInput(f"token_ttl_seconds: at most {state.settings.token_ttl_max_s}")
    now_ms = int(state.clock() * 1000)
    row = InviteRow(
        id=secrets.token_hex(8),
        session_id=session_id,
        user_id=body.user_id,
        max_uses=body.max_uses,
        uses=0,
        token_ttl_s=token_ttl,
        created_by=caller.actor,
        created_at=now_ms,
        expires_at=now_ms // 1000 + body.ttl_seconds,
        revoked_at=None,
        **_inherited(caller),
    )
    await _judge(state, session_id, caller, body.user_id)
    secret = secrets.token_urlsafe(32)
    stored, live = await InviteStore(state.store).create(row, secret, MAX_LIVE_INVITES)
    if stored is None and live >= MAX_LIVE_INVITES:
        raise Conflict(f"this session has {live} live invites; revoke some first")
    if stored is None:
        raise Conflict(f"{body.user_id!r} is not a member of this session")
    room = await state.rooms.get(session_id)
    await room.writer.audit(
        "invite",
        caller.actor,
        {"created": row.id, "user_id": row.user_id, "max_uses": row.max_uses},
    )
    return InviteCreated(
        **_invite_out(stored).model_dump(), secret=secret, link=DEMO_LINK.format(secret=secret)
    )


async def _judge(state: AppState, session_id: str, caller: Caller, user_id: str) -> None:
    """A member may mint a link only to access they could have handed out themselves,
    and for another only a user the server knows by this membership alone
    (``authz.membership.judge_invite``); a refusal is audited. Judged again at each use."""
    if caller.user_id is None:
        return
    room = await state.rooms.current(session_id)
    target = room.membership.members.get(user_id)
    if target is None:
        raise Conflict(f"{user_id!r} is not a member of this session")
    actor = room.membership.members.get(caller.user_id)
    documents = await AccessStore(state.store).reader_lists(session_id)
    async with state.store.read() as connection:
        traces = await read_traces(connection, session_id, user_id)
    decision = judge_invite(actor, target, state.rooms.roles, documents, traces)
    if not decision.allowed:
        what = {"action": f"invite {user_id}", "reason": decision.reason}
        await room.writer.audit("refused", caller.user_id, what)
        decision.require()


async def list_invites(state: AppState, session_id: str) -> InviteList:
    """The session's live invites (not expired, revoked or used up); never their secrets."""
    await session_row(state, session_id)
    rows = await InviteStore(state.store).list_live(session_id, int(state.clock()))
    return InviteList(invites=[_invite_out(r) for r in rows])


async def revoke_invite(state: AppState, session_id: str, invite_id: str, caller: Caller) -> None:
    """Revoke a live invite: it signs nobody in from now on (tokens it gave stay valid
    until revoked themselves, or, another member's link, until its maker may no longer
    make it)."""
    await session_row(state, session_id)
    room = await state.rooms.get(session_id)
    await spend_command_everywhere(state, room, caller.user_id)
    if not await InviteStore(state.store).revoke(session_id, invite_id, int(state.clock())):
        raise NotFound(f"no live invite {invite_id!r} in this session")
    await room.writer.audit("invite", caller.actor, {"revoked": invite_id})


async def exchange_invite(state: AppState, body: InviteExchange, client: str) -> TokenOut:
    """Exchange an invite's secret for a client token of its member (no key needed: the
    secret is the credential; ``client``'s budget and the invite's are spent instead). One
    use of the invite is spent."""
    now = int(state.clock())
    state.exchanges.spend_address(client, state.clock())
    store = InviteStore(state.store)
    session_id = await store.live_session(body.invite, now)
    if session_id is None:
        raise Unauthenticated(NOT_VALID)
    state.exchanges.spend_invite(secret_digest(body.invite), state.clock())
    await state.rooms.current_access()  # the roles as committed

    def judge(
        invite: InviteRow,
        makers: tuple[MemberRow | None, MemberRow | None],
        member: MemberRow,
        traces: Traces,
        documents: set[Readers],
    ) -> str | None:
        """A link hands out its member's access as it is now: judged again, as if its
        maker minted it now (a maker removed or lowered, a member raised past what the
        maker may hand out, or one who has signed in meanwhile, makes it dead), and as if
        the maker it carries did (``_inherited``; one whose membership is not the one it
        carries is gone). Why not, or None."""
        minted_by, carried = makers
        if invite.made_by and (carried is None or carried.token_epoch != invite.maker_epoch):
            return f"revoked: {invite.made_by!r}, whose invite link it came from, left"
        if not _made_by_another(invite):
            return None  # the admin key's, or the member's own access
        for maker in (minted_by, carried) if invite.made_by else (minted_by,):
            actor = None if maker is None else maker.as_member()
            roles = state.rooms.roles
            decision = judge_invite(actor, member.as_member(), roles, documents, traces)
            if not decision.allowed:
                return decision.reason
        return None

    def mint(
        invite: InviteRow, member: MemberRow, maker: MemberRow | None
    ) -> tuple[str, ClientClaims]:
        """A token of the member; one from another member's link lives while its maker
        (the one the link carries, if any) may still make that link
        (``authz.tokens.token_refusal``)."""
        made_by, maker_epoch = invite.made_by, invite.maker_epoch
        if not made_by and maker is not None and _made_by_another(invite):
            made_by, maker_epoch = maker.user_id, maker.token_epoch
        return issue_token(
            state.keys.signing_key,
            user_id=member.user_id,
            session_id=invite.session_id,
            now=now,
            ttl_seconds=invite.token_ttl_s,
            epoch=member.token_epoch,
            made_by=made_by,
            maker_epoch=maker_epoch,
        )

    redeemed = await store.redeem(body.invite, now, mint, judge)
    if isinstance(redeemed, Killed):
        invite = redeemed.invite
        room = await state.rooms.get(invite.session_id)
        what = {
            "action": f"use invite {invite.id} of {invite.user_id}",
            "reason": redeemed.reason,
            "revoked": True,
        }
        await room.writer.audit("refused", invite.created_by, what)
    if redeemed is None or isinstance(redeemed, Killed):
        raise Unauthenticated(NOT_VALID)
    invite, member, token, claims, revoked = redeemed
    room = await state.rooms.get(invite.session_id)
    await revocations_in_force(state, revoked)
    await room.writer.audit("invite", member.user_id, {"used": invite.id, "jti": claims.token_id})
    return token_out(member, token, claims)


def _inherited(caller: Caller) -> dict[str, str]:
    """A link minted with a token from another member's link, for whomever, carries that
    maker (``InviteRow.made_by``): the tokens it gives are theirs too, and live while that
    maker may make the link (reviews RM-1, for oneself, and RW-1, for another: else the
    maker launders an identity through it, or keeps the access they were lowered from)."""
    claims = caller.claims
    if claims is None or not claims.made_by:
        return {}
    return {"made_by": claims.made_by, "maker_epoch": claims.maker_epoch}


def _made_by_another(invite: InviteRow) -> bool:
    """Whether a member minted ``invite`` for someone else (not the admin key, nor the
    member for themselves)."""
    return invite.created_by not in (ADMIN_ACTOR, invite.user_id)


OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/invites",
        create_invite,
        "Mint an invite link for a member (the secret goes in the link's fragment)",
        capability=Capability.MANAGE_MEMBERS,
        with_caller=True,
        body=InviteCreate,
        response=InviteCreated,
        status=201,
        location="/api/v1/sessions/{session_id}/invites/{id}",
        errors=(404, 409),
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/invites",
        list_invites,
        "Live invite links (without their secrets)",
        capability=Capability.MANAGE_MEMBERS,
        response=InviteList,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/invites/{invite_id}",
        revoke_invite,
        "Revoke an invite link",
        capability=Capability.MANAGE_MEMBERS,
        with_caller=True,
        status=204,
        errors=SESSION_ERRORS,
    ),
    Operation(
        "POST",
        "/api/v1/invites/exchange",
        exchange_invite,
        "Exchange an invite link's secret for a client token",
        auth=False,
        with_client=True,
        body=InviteExchange,
        body_bytes=1024,  # an invite of 100 characters, and no credentials to charge
        response=TokenOut,
        errors=(401, 429),
    ),
]
