"""Invite links: a secret a member's browser exchanges for a client token of that member.

Only the secret's SHA-256 is stored, so the table gives nobody a working link. An invite is
spent in the transaction that mints the token: its use count is raised only while below
``max_uses``, the member is read there, and it must still be the membership the invite was
made for (the same ``token_epoch``: a member removed and added back kills older invites).
That is part of ``_live``, the one rule the listing, the cap and the exchange apply.
One its maker could no longer mint is revoked there, for good (``Killed``): judged with what
the server holds of its member then (``read_traces``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.authz.membership import Traces
from parley.authz.policy import Readers
from parley.authz.tokens import ClientClaims
from parley.server.store.access import insert_client_token, read_reader_lists
from parley.server.store.rows import MemberRow, lock_session, read_member
from parley.server.store.tables import client_tokens, entries, invites, members, side_threads

if TYPE_CHECKING:
    from parley.server.store.database import Database
    from parley.server.store.link_tokens import Revoked


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class InviteRow:
    id: str
    session_id: str
    user_id: str
    max_uses: int
    uses: int
    token_ttl_s: int
    created_by: str
    created_at: int
    expires_at: int
    revoked_at: int | None
    # A link minted with a token from another member's link: that maker and their
    # membership's epoch, which the tokens it gives carry ("": none).
    made_by: str = ""
    maker_epoch: str = ""


@dataclass(frozen=True, slots=True)
class Killed:
    """An invite ``redeem`` revoked because its maker could not mint it now (``reason``):
    told to the one exchange that revoked it, so its refusal is audited once."""

    invite: InviteRow
    reason: str


def _invite(row: Any) -> InviteRow:
    return InviteRow(
        row.id,
        row.session_id,
        row.user_id,
        row.max_uses,
        row.uses,
        row.token_ttl_s,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.revoked_at,
        row.made_by or "",
        row.maker_epoch or "",
    )


async def read_traces(connection: AsyncConnection, session_id: str, user_id: str) -> Traces:
    """What the server holds of ``user_id`` besides their membership of ``session_id``
    (``authz.membership.Traces``): four indexed lookups, one statement."""
    here = (
        exists().where(
            and_(client_tokens.c.session_id == session_id, client_tokens.c.user_id == user_id)
        ),
        exists().where(and_(entries.c.session_id == session_id, entries.c.author == user_id)),
        exists().where(
            and_(side_threads.c.session_id == session_id, side_threads.c.owner == user_id)
        ),
        exists().where(and_(members.c.user_id == user_id, members.c.session_id != session_id)),
    )
    row = (await connection.execute(select(*here))).one()
    return Traces(*(bool(there) for there in row))


def _of_membership() -> Any:
    """Whether the invite's member is still the membership it was made for (same
    ``token_epoch``): one removed, even added back, makes it dead (review RV40-F3)."""
    return exists().where(
        and_(
            members.c.session_id == invites.c.session_id,
            members.c.user_id == invites.c.user_id,
            members.c.token_epoch == invites.c.token_epoch,
        )
    )


def _live(now: int) -> Any:
    """The one rule of a live invite, for the listing, the cap, a revoke and the exchange."""
    return and_(
        invites.c.revoked_at.is_(None),
        invites.c.expires_at > now,
        invites.c.uses < invites.c.max_uses,
        _of_membership(),
    )


class InviteStore:
    def __init__(self, store: Database) -> None:
        self.store = store

    async def create(
        self, row: InviteRow, secret: str, max_live: int
    ) -> tuple[InviteRow | None, int]:
        """Store ``row`` for a current member (None if ``row.user_id`` is none), unless the
        session already has ``max_live`` live invites; returns the row and that count. Dead
        invites of the session are deleted on the way."""
        async with self.store.transaction() as tx:
            connection = tx.connection
            await lock_session(connection, row.session_id)
            member = await read_member(connection, row.session_id, row.user_id)
            if member is None:
                return None, 0
            now = row.created_at // 1000
            await connection.execute(
                invites.delete().where(
                    and_(
                        invites.c.session_id == row.session_id,
                        or_(
                            invites.c.revoked_at.is_not(None),
                            invites.c.expires_at <= now,
                            ~_of_membership(),
                        ),
                    )
                )
            )
            live = (
                await connection.execute(
                    select(func.count())
                    .select_from(invites)
                    .where(and_(invites.c.session_id == row.session_id, _live(now)))
                )
            ).scalar_one()
            if live >= max_live:
                return None, int(live)
            await connection.execute(
                insert(invites).values(
                    id=row.id,
                    session_id=row.session_id,
                    user_id=row.user_id,
                    secret_sha256=secret_digest(secret),
                    token_epoch=member.token_epoch,
                    max_uses=row.max_uses,
                    uses=0,
                    token_ttl_s=row.token_ttl_s,
                    created_by=row.created_by,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                    made_by=row.made_by or None,
                    maker_epoch=row.maker_epoch or None,
                )
            )
        return row, int(live)

    async def list_live(self, session_id: str, now: int) -> list[InviteRow]:
        async with self.store.read() as connection:
            rows = await connection.execute(
                select(invites)
                .where(and_(invites.c.session_id == session_id, _live(now)))
                .order_by(invites.c.created_at, invites.c.id)
            )
            return [_invite(r) for r in rows]

    async def revoke(self, session_id: str, invite_id: str, now: int) -> bool:
        """Revoke a live invite; False if there is none by that id."""
        async with self.store.transaction() as tx:
            result = await tx.connection.execute(
                update(invites)
                .where(
                    and_(
                        invites.c.session_id == session_id,
                        invites.c.id == invite_id,
                        _live(now),
                    )
                )
                .values(revoked_at=now)
            )
        return bool(result.rowcount)

    async def live_session(self, secret: str, now: int) -> str | None:
        """The session of the live invite whose secret this is (None: there is none). A
        guess costs this read, not a write transaction (the exchange needs no key)."""
        async with self.store.read() as connection:
            found = (
                await connection.execute(
                    select(invites.c.session_id).where(_live_secret(secret, now))
                )
            ).first()
        return None if found is None else str(found.session_id)

    async def redeem(
        self,
        secret: str,
        now: int,
        mint: Callable[[InviteRow, MemberRow, MemberRow | None], tuple[str, ClientClaims]],
        judge: Callable[
            [InviteRow, tuple[MemberRow | None, MemberRow | None], MemberRow, Traces, set[Readers]],
            str | None,
        ],
    ) -> tuple[InviteRow, MemberRow, str, ClientClaims, Revoked] | Killed | None:
        """Spend one use of the live invite whose secret this is and mint (and record) a
        token for its member, in one transaction; None when there is no such invite or its
        member is no longer the one it was made for. An invite ``judge`` (given the
        invite, the memberships now of its maker and of the maker it carries, its member's,
        their traces and the session's reader lists, all read under the session's lock, as
        a document's attach reads them: FX37; ``mint`` the invite, its member and maker)
        refuses, saying why,
        is revoked in that transaction: ``Killed`` (None to an exchange that raced it).
        Whoever exchanged is told only that the link is not valid (no oracle for
        guessers); the caller audits a ``Killed``, once per invite (review: a dead link
        exchanged 1,600 times in 9 s wrote 1,600 audit records). With the token: the
        tokens from other makers' links that named its member, revoked now (review
        RM-1)."""
        live = _live_secret(secret, now)
        async with self.store.transaction() as tx:
            connection = tx.connection
            found = (
                await connection.execute(
                    select(invites, invites.c.token_epoch.label("epoch")).where(live)
                )
            ).first()
            if found is None:
                return None
            invite = _invite(found)
            await lock_session(connection, invite.session_id)
            member = await read_member(connection, invite.session_id, invite.user_id)
            if member is None or member.token_epoch != found.epoch:
                return None
            maker = await read_member(connection, invite.session_id, invite.created_by)
            carried = None
            if invite.made_by:
                carried = await read_member(connection, invite.session_id, invite.made_by)
            traces = await read_traces(connection, invite.session_id, invite.user_id)
            documents = await read_reader_lists(connection, invite.session_id)
            refused = judge(invite, (maker, carried), member, traces, documents)
            if refused is not None:
                killed = await connection.execute(
                    update(invites)
                    .where(and_(invites.c.id == invite.id, invites.c.revoked_at.is_(None)))
                    .values(revoked_at=now)
                )
                return Killed(invite, refused) if killed.rowcount == 1 else None
            spent = await connection.execute(
                update(invites)
                .where(and_(invites.c.id == invite.id, _live(now)))
                .values(uses=invites.c.uses + 1)
            )
            if spent.rowcount != 1:  # the last use went to a redeem at the same moment
                return None
            token, claims = mint(invite, member, maker)
            revoked = await insert_client_token(connection, claims, now, member.user_id)
        return invite, member, token, claims, revoked


def _live_secret(secret: str, now: int) -> Any:
    return and_(invites.c.secret_sha256 == secret_digest(secret), _live(now))
