"""Who may use a loaded session now: its members and its client tokens revoked.

``Membership`` holds what the store says, as last put in force here (at load, after a
REST change, or in cluster mode after a change on another node), and answers the checks
every socket and call makes: a member's ``Subject`` (the role table read live), why a
token may not be used, and why an open socket must close now. Putting a change in force
closes the sockets it forbids, tells the sockets that speak JSON the member's row as it now
stands (``tell``: a page shows the role and names the server holds, not those it read
when it opened) and hands the session core the event (``MemberUpdated``, ``TokenRevoked``)
that stops the prompts of who lost the right to them (``stop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import replace

from parley.authz.policy import Do, Restriction, Subject, decide, everyone_may_read
from parley.authz.roles import Capability, Member, RoleTable
from parley.authz.tokens import ClientClaims, token_refusal
from parley.server.runtime.sockets import member_frame
from parley.server.settings import Settings
from parley.server.store.access_rows import TokenRow
from parley.server.store.port import SessionStore
from parley.server.ws.connection import Connection
from parley.session.closes import CloseCode
from parley.session.core import MemberUpdated, Standing, TokenRevoked
from parley.session.ratelimit import Rate, Spend

Stop = Callable[[MemberUpdated | TokenRevoked], Awaitable[None]]
# Restrictions whose ``everyone_may_read`` answer is kept at most (then all are dropped).
MAX_KEPT_VERDICTS = 256


class Membership:
    """The members of session ``session_id``; ``sockets`` its open sockets, ``changed``
    wakes its event streams, ``tell`` sends a JSON frame to its sockets that speak JSON
    (all, or one user's)."""

    def __init__(
        self,
        session_id: str,
        store: SessionStore,
        roles: Callable[[], RoleTable],
        clock: Callable[[], float],
        sockets: Callable[[], Iterable[Connection]],
        changed: Callable[[], None],
        stop: Stop,
        tell: Callable[[str, str | None], None] = lambda frame, user_id: None,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.roles = roles
        self.clock = clock
        self.sockets = sockets
        self.changed = changed
        self.stop = stop
        self.tell = tell
        self.members: dict[str, Member] = {}
        # Members' display names, those who have one (shown in presence and transcripts).
        self.display_names: dict[str, str] = {}
        # Revoked client tokens not expired yet, by id (the check of every socket and call).
        self.revoked_tokens: dict[str, TokenRow] = {}
        # ``everyone_may_read``'s answers, while the members and the role table stay.
        self._readable: dict[Restriction, bool] = {}
        self._readable_roles: RoleTable | None = None
        self._revision = 0  # counts the membership changes put in force
        # Counts the changes of what the member list shows (memberships and names): a list
        # encoded at one version is the list while it stays (``server.http.member_list``).
        self.version = 0
        # Held by a member change from its checks to its being in force (``server.http``).
        self.changing = asyncio.Lock()
        # Members as stored, where that is not yet in force here (None: removed), until
        # it is (``set_member``): what they may do as of now (``SessionRoom.store_change``;
        # cluster mode, ``as_stored``).
        self.pending: dict[str, Member | None] = {}
        # Client tokens whose revocation is stored and not yet in force here (``revoke_token``;
        # ``SessionRoom.store_revocation``).
        self.revoking: set[str] = set()
        # Cluster mode: the revoked tokens as last read with the members as stored
        # (``hold_stored``), in force here or not yet.
        self.stored_revoked: Mapping[str, TokenRow] = {}

    def subject(self, user_id: str) -> Subject | None:
        """The member as of now (role table and grants read live), or None."""
        member = self.pending.get(user_id, self.members.get(user_id))
        return None if member is None else Subject.of(member, self.roles())

    def as_stored(self, user_id: str, stored: Member | None) -> None:
        """Cluster mode, in a command's write, after its fence read ``user_id`` as stored
        (``stored``: their role, grants, denials and membership's epoch; None: no member):
        they are judged by it from now, until it is in force here (``pending``), where it
        differs from what they are judged by (a change stored on another node, not yet in
        force here)."""
        current = self.pending.get(user_id, self.members.get(user_id))
        if current is None:
            return  # not a member here either (or not yet: judged as one once in force)
        if stored is None:
            self.hold(user_id, None)
        elif (stored.role, stored.grants, stored.denials, stored.token_epoch) != (
            current.role,
            current.grants,
            current.denials,
            current.token_epoch,
        ):
            self.hold(
                user_id,
                replace(
                    current,
                    role=stored.role,
                    grants=stored.grants,
                    denials=stored.denials,
                    token_epoch=stored.token_epoch,
                ),
            )

    def hold(self, user_id: str, member: Member | None) -> None:
        """``user_id`` is stored as ``member`` (None: removed), not yet in force here: they
        are judged by it from now (``pending``), what every member may read too."""
        self.pending[user_id] = member
        self._pending_changed()

    def hold_stored(self, stored: Iterable[Member], revoked: Mapping[str, TokenRow]) -> None:
        """Cluster mode, in a write of the node that runs the session, when its fence saw a
        change of the members or tokens stored since it last read them (on another node,
        not yet in force here): every member as stored (``stored``, those added too) and
        the revoked tokens (``revoked``), read in that write, are what it and the writes
        after it are judged by, until in force (reviews RH-2, RH-3: a member demoted there
        was sent restricted text "every member" here might read, a run started for who
        could no longer prompt)."""
        now = {member.user_id: member for member in stored}
        self.pending = {
            user_id: now.get(user_id)
            for user_id in self.members.keys() | now.keys()
            if now.get(user_id) != self.members.get(user_id)
        }
        self.stored_revoked = revoked
        self._pending_changed()

    def _pending_changed(self) -> None:
        """What is judged of every member's grants is judged again."""
        self._readable = {}
        self._revision += 1

    def standing(self, user_id: str) -> Standing:
        """What ``user_id``'s membership says of the prompts they sent before now: when it
        began and when a token of theirs was last revoked (those not expired)."""
        member = self.pending.get(user_id, self.members.get(user_id))
        tokens = (*self.revoked_tokens.values(), *self.stored_revoked.values())
        revoked = (t.revoked_at for t in tokens if t.user_id == user_id)
        return Standing(0 if member is None else member.joined_at, max(revoked, default=0))

    def subjects(self) -> Iterator[Subject]:
        """Every member as of now (those stored and not yet in force here included)."""
        roles = self.roles()
        if not self.pending:
            return (Subject.of(m, roles) for m in self.members.values())
        now = {**self.members, **self.pending}
        return (Subject.of(m, roles) for m in now.values() if m is not None)

    def grants_key(self) -> tuple[int, RoleTable]:
        """Equal while no member's membership and no role changed: what was judged of the
        members' grants (what every member may read) is still true."""
        return self._revision, self.roles()

    def everyone_may_read(self, restriction: Restriction) -> bool:
        """Whether every member (``authz.policy.everyone_may_read``) may read ``restriction``,
        kept until the members or the role table change: a restricted reply asks at every
        batch of its text, and asking costs every member's grants (3.7 ms for 1,000)."""
        roles = self.roles()
        if roles is not self._readable_roles or len(self._readable) >= MAX_KEPT_VERDICTS:
            self._readable, self._readable_roles = {}, roles
        verdict = self._readable.get(restriction)
        if verdict is None and restriction and None in self.pending.values():
            # One removed as stored, not yet here: sent what the document gets until it is.
            verdict = False
        if verdict is None:
            verdict = everyone_may_read(self.subjects(), restriction)
            self._readable[restriction] = verdict
        return verdict

    async def refresh(self) -> None:
        """Read the members and revoked tokens from the store and apply what changed (at
        load, and in cluster mode after changes made on another node)."""
        rows = await self.store.list_members(self.session_id)
        current = {row.user_id: row.as_member() for row in rows}
        self.pending = {u: m for u, m in self.pending.items() if current.get(u) != m}
        names_before = self.display_names
        self.display_names = {row.user_id: row.display_name for row in rows if row.display_name}
        told = set(self.members) ^ set(current)
        for user_id in set(self.members) - set(current):
            await self.set_member(user_id, None)
        for user_id, member in current.items():
            if self.members.get(user_id) != member:
                told.add(user_id)
                await self.set_member(user_id, member)
        renamed = {
            user_id
            for user_id in names_before.keys() | self.display_names.keys()
            if names_before.get(user_id) != self.display_names.get(user_id)
        }
        if renamed:
            self.version += 1
        self.tell_members(renamed - told)
        revoked = await self.store.access.revoked_tokens(self.session_id, int(self.clock()))
        for token in revoked.values():
            await self.revoke_token(token)

    async def refresh_member(self, user_id: str) -> None:
        """Read one member from the store and apply what changed, as ``refresh`` does for
        all: after a change of that member alone was stored (a rename reads one row, not
        the session's: review R4-3, reading and rebuilding a thousand members after each
        rename held the event loop)."""
        row = await self.store.get_member(self.session_id, user_id)
        name_before = self.display_names.get(user_id, "")
        if row is not None and row.display_name:
            self.display_names[user_id] = row.display_name
        else:
            self.display_names.pop(user_id, None)
        member = None if row is None else row.as_member()
        if self.pending.get(user_id, member) == member:
            self.pending.pop(user_id, None)  # in force already (a change of the name alone)
        if self.members.get(user_id) != member:
            await self.set_member(user_id, member)
        elif self.display_names.get(user_id, "") != name_before:
            self.version += 1
            self.tell_members((user_id,))

    async def set_member(self, user_id: str, member: Member | None) -> None:
        """Put a stored membership change in force (None: removed): sockets that may no
        longer read the session close; a member removed (or removed and added back: a new
        epoch) loses their tokens, sockets and prompts, and the tokens of the invite links
        they minted for others die with them, as they do once they may no longer make
        those links (``token_refusal``)."""
        before = self.members.get(user_id)
        self.pending.pop(user_id, None)
        if member is None:
            self.members.pop(user_id, None)
            self.display_names.pop(user_id, None)
        else:
            self.members[user_id] = member
        self._readable = {}
        self._revision += 1
        self.version += 1
        self.refresh_sockets()
        if member != before:
            self.tell_members((user_id,))
        await self.stop(MemberUpdated(user_id, before, member, int(self.clock() * 1000)))

    async def roles_changed(self, roles: frozenset[str]) -> None:
        """The capabilities of ``roles`` changed (custom roles edited or deleted): sockets
        that may no longer read the session close, and a member of one of them who may no
        longer prompt loses their runs, as when their own grants change (``MemberUpdated``,
        member unchanged)."""
        self.refresh_sockets()
        # What changed is what the holders may do: theirs alone are told (a role with a
        # thousand holders told to a thousand sockets is a million frames).
        self.tell_members(
            (u for u, member in self.members.items() if member.role in roles), own_only=True
        )
        now = int(self.clock() * 1000)
        for user_id, member in list(self.members.items()):
            if member.role in roles:
                await self.stop(MemberUpdated(user_id, member, member, now))

    async def revoke_token(self, token: TokenRow) -> None:
        """Put a revoked token in force: its sockets close, its user's prompts stop."""
        if self.put_revoked(token):
            await self.stop(TokenRevoked(token.user_id, int(self.clock() * 1000)))

    def put_revoked(self, token: TokenRow) -> bool:
        """``revoke_token`` but for its user's prompts: refused from now, its sockets
        closed. False if it was in force already (or expired): nothing to stop."""
        now = self.clock()
        self.revoking.discard(token.id)
        self.revoked_tokens = {k: t for k, t in self.revoked_tokens.items() if t.expires_at > now}
        if token.id in self.revoked_tokens or token.expires_at <= now:
            return False
        self.revoked_tokens[token.id] = token
        self.refresh_sockets()
        return True

    def refresh_sockets(self) -> None:
        """Close the sockets that may no longer be open (``closing``); wake the event
        streams (``changed``), which check their reader again."""
        self.changed()
        for connection in list(self.sockets()):
            closing = self.closing(connection.user_id, connection.claims)
            if closing is not None:
                connection.close(*closing)

    def tell_members(self, user_ids: Iterable[str], *, own_only: bool = False) -> None:
        """Tell the sockets that speak JSON (``own_only``: the member's own) how each of
        ``user_ids`` now stands: a ``member`` frame each, what the member list shows of
        them, or no role once gone."""
        for user_id in sorted(user_ids):
            name = self.display_names.get(user_id, "")
            frame = member_frame(user_id, self.subject(user_id), name)
            self.tell(frame, user_id if own_only else None)

    def token_revoked(self, token_id: str) -> bool:
        """Whether client token ``token_id`` is revoked as of now (stored so, if not yet in
        force here): what a command sent with it is judged by where it is stored."""
        return (
            token_id in self.revoked_tokens
            or token_id in self.revoking
            or token_id in self.stored_revoked
        )

    def token_refusal(self, claims: ClientClaims) -> str | None:
        """Why a verified token may not be used now (None: it may, or its user is no
        member, which the membership check answers), by the members, their tokens and the
        role table as of now (stored, if not yet in force here): revoked, of an earlier
        membership, or from the invite link of a maker who may no longer make it
        (``authz.tokens.token_refusal``). The one answer of a socket's opening, a REST
        call and a command's commit (there, cluster mode: after its fence read the member,
        the maker and the token as stored)."""
        member = self.pending.get(claims.user_id, self.members.get(claims.user_id))
        if member is None:
            return None
        maker = None
        if claims.made_by:
            maker = self.pending.get(claims.made_by, self.members.get(claims.made_by))
        return token_refusal(claims, member, _Revoked(self), maker, self.roles())

    def closing(self, user_id: str, claims: ClientClaims | None) -> tuple[CloseCode, str] | None:
        """Why a socket of ``user_id`` (opened with ``claims``) must close now: its user
        was removed (4403), its token revoked (4401), or its user may no longer read the
        session (4403). None: it stays open."""
        if user_id not in self.members:
            return CloseCode.FORBIDDEN, "removed: you are no longer a member"
        refusal = None if claims is None else self.token_refusal(claims)
        if refusal is not None:
            return CloseCode.UNAUTHENTICATED, refusal
        if not decide(self.subject(user_id), Do(Capability.READ_SESSION)).allowed:
            return CloseCode.FORBIDDEN, "membership revoked"
        return None


class _Revoked:
    """The ids of a session's revoked tokens as of now (``Membership.token_revoked``), as
    a container: no set built per check (every open socket is checked at each change)."""

    __slots__ = ("membership",)

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    def __contains__(self, token_id: object) -> bool:
        return isinstance(token_id, str) and self.membership.token_revoked(token_id)


# Commands a member may have resent at once past the command rate, on their sockets and
# over REST together (after a reconnect or a restart, an SDK resends every one unanswered;
# ``server.runtime.commands.resend_allowed``); then at the command rate.
RESENDS_BURST = 256
# A member's share of their session's preview work (``PARLEY_PREVIEW_WORK_*``): a quarter
# of its rate and burst. One member's loop of previews spent all of it and left the others
# none (review RG); past their share a member waits, and the session pays only what it
# took (``SessionRoom.spend_preview_work``: at most twice the share's burst a preview), so
# one member leaves at least half of the session's burst to the others.
PREVIEW_SHARES = 4


def member_rates(settings: Settings) -> dict[Spend, Rate]:
    """What one member may spend across all their sockets in a session."""
    return {
        Spend.COMMANDS: Rate(settings.user_commands_per_second, 2 * settings.commands_burst),
        Spend.DOCUMENT_BYTES: Rate(
            settings.document_write_bytes_per_s, settings.document_write_burst_bytes
        ),
        Spend.AWARENESS_BYTES: Rate(settings.awareness_bytes_per_s, settings.awareness_burst_bytes),
        Spend.COMMAND_BYTES: Rate(settings.command_bytes_per_s, settings.command_burst_bytes),
        Spend.READ_BYTES: Rate(settings.read_bytes_per_s, settings.read_burst_bytes),
        Spend.SYNC_BYTES: Rate(settings.sync_bytes_per_s, settings.sync_burst_bytes),
        Spend.SOCKET_OPENS: Rate(
            settings.socket_opens_per_minute / 60, settings.socket_opens_burst
        ),
        Spend.RESENDS: Rate(settings.commands_per_second, RESENDS_BURST),
        Spend.PREVIEW_WORK: Rate(
            settings.preview_work_bytes_per_s / PREVIEW_SHARES,
            max(settings.preview_work_burst_bytes / PREVIEW_SHARES, 1.0),
        ),
    }
