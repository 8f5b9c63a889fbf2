"""Client tokens from another member's invite link (``client_tokens.made_by``), and the
links minted with one (``invites.made_by``): revoked in the transaction that makes them
dead (reviews RM-1, RW-2).

Such a token lives only while its link could still be minted and exchanged. What the
server judges at each use in memory (its maker's membership and capabilities:
``authz.tokens.token_refusal``) is not all of it: a link for someone else names only a user
nobody has been yet, and is judged with the session's reader lists. So the token is
revoked, as the admin key revokes one (in force on every node, at a command's commit too),
once its member is known another way (a token issued to them otherwise, a membership of
another session: ``revoke_known``), or once a membership change of the session, or a
document attached to it, leaves its maker unable to hand out what its member holds
(``revoke_refused``); so too a change that moves the reader lists or what a maker reads
with no membership change: a custom role edited, a reader list stored with a webhook
tool's answer (``revoke_by_stored``, reviews RA-1, RA-2). Each revocation is audited
(``token``, with its reason) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.authz.membership import reader_refusal
from parley.authz.policy import Readers
from parley.authz.roles import RoleTable
from parley.authz.tokens import ADMIN_ACTOR
from parley.server.store.access import (
    CHANNEL_SETTINGS,
    insert_audit,
    read_reader_lists,
    read_roles,
)
from parley.server.store.access_rows import TokenRow
from parley.server.store.rows import MemberRow, lock_session, read_member
from parley.server.store.tables import client_tokens, invites

KNOWN = "its member is known another way: only they or the admin key may sign in as them"
Revoked = dict[str, list[TokenRow]]
"""Tokens revoked, by session id (to put in force where each session runs)."""
LinkRefusal = Callable[[MemberRow, MemberRow | None], str | None]
"""Why a token from a link may not live, given its member and its maker as stored (None:
no member), or None."""


def by_readers(roles: RoleTable, documents: Iterable[Readers]) -> LinkRefusal:
    """The ``LinkRefusal`` of the session's reader lists ``documents``: its maker could
    not hand out what its member may read (``authz.membership.reader_refusal``)."""

    def refusal(member: MemberRow, maker: MemberRow | None) -> str | None:
        maker_now = None if maker is None else maker.as_member()
        return reader_refusal(member.as_member(), maker_now, roles, documents)

    return refusal


def _from_links(now_ms: int) -> Any:
    return and_(
        client_tokens.c.made_by.is_not(None),
        client_tokens.c.made_by != "",
        client_tokens.c.revoked_at.is_(None),
        client_tokens.c.expires_at > now_ms // 1000,
    )


async def revoke_known(
    connection: AsyncConnection,
    user_id: str,
    now_ms: int,
    *,
    session_id: str,
    kept_maker: str = "",
    elsewhere: bool = False,
    actor: str = ADMIN_ACTOR,
) -> Revoked:
    """``user_id`` became known another way: revoke the tokens from other members' links
    that name them, and kill the links they minted for themselves with one. In
    ``session_id``, those of every maker but ``kept_maker`` (a token just issued to them
    there, from that maker's link, or ""); ``elsewhere``: in every session but
    ``session_id`` (they were just added to it)."""
    place = (
        client_tokens.c.session_id != session_id
        if elsewhere
        else and_(client_tokens.c.session_id == session_id, client_tokens.c.made_by != kept_maker)
    )
    rows = list(
        await connection.execute(
            select(client_tokens).where(
                and_(client_tokens.c.user_id == user_id, place, _from_links(now_ms))
            )
        )
    )
    link_place = (
        invites.c.session_id != session_id
        if elsewhere
        else and_(invites.c.session_id == session_id, invites.c.made_by != kept_maker)
    )
    await _kill_links(connection, now_ms, invites.c.user_id == user_id, link_place)
    held = None if elsewhere else session_id
    return await _revoke(connection, rows, now_ms, actor, lambda row: KNOWN, held)


async def revoke_refused(
    connection: AsyncConnection,
    session_id: str,
    now_ms: int,
    refusal: LinkRefusal,
    actor: str = ADMIN_ACTOR,
) -> Revoked:
    """After a membership change of ``session_id`` (in its transaction): revoke the tokens
    from members' links there that ``refusal`` (given their member and maker as stored
    now; None: it may live) refuses, and kill the links for themselves that carry such a
    maker."""
    rows = list(
        await connection.execute(
            select(client_tokens).where(
                and_(client_tokens.c.session_id == session_id, _from_links(now_ms))
            )
        )
    )
    if not rows:
        return {}
    read: dict[str, MemberRow | None] = {}

    async def member(user_id: str) -> MemberRow | None:
        if user_id not in read:
            read[user_id] = await read_member(connection, session_id, user_id)
        return read[user_id]

    reasons: dict[str, str] = {}
    refused_pairs: list[tuple[str, str]] = []
    for row in rows:
        holder = await member(row.user_id)
        if holder is None:
            continue  # removed: their tokens are dead by their epoch already
        reason = refusal(holder, await member(row.made_by))
        if reason is not None:
            reasons[row.id] = reason
            refused_pairs.append((row.user_id, row.made_by))
    if refused_pairs:
        pairs = (
            and_(invites.c.user_id == user, invites.c.made_by == maker)
            for user, maker in set(refused_pairs)
        )
        await _kill_links(connection, now_ms, invites.c.session_id == session_id, or_(*pairs))
    refused = [row for row in rows if row.id in reasons]
    return await _revoke(
        connection, refused, now_ms, actor, lambda row: reasons[row.id], session_id
    )


async def revoke_by_stored(
    connection: AsyncConnection, sessions: Any, now_ms: int, actor: str = ADMIN_ACTOR
) -> Revoked:
    """``revoke_refused`` in each of ``sessions`` (a column expression of their ids, a
    subquery say) by its reader lists and the custom roles as stored in this transaction,
    once it changed them without a membership change (a custom role edited, a reader list
    stored with a webhook tool's answer); returns the tokens revoked. Each session locked
    by this transaction already (``lock_session``), so a link exchanged, a token issued or
    a document attached meanwhile is judged with this change, or judges it. Only the
    sessions with a live token from a link are read further (one statement for the rest)."""
    live = await connection.execute(
        select(client_tokens.c.session_id)
        .where(and_(client_tokens.c.session_id.in_(sessions), _from_links(now_ms)))
        .distinct()
    )
    judged = sorted(session_id for (session_id,) in live)
    if not judged:
        return {}
    roles = RoleTable(await read_roles(connection))
    revoked: Revoked = {}
    for session_id in judged:
        refusal = by_readers(roles, await read_reader_lists(connection, session_id))
        revoked |= await revoke_refused(connection, session_id, now_ms, refusal, actor)
    return revoked


async def _kill_links(connection: AsyncConnection, now_ms: int, *where: Any) -> None:
    """Revoke the live links for oneself that carry a maker (``invites.made_by``) among
    ``where``."""
    await connection.execute(
        update(invites)
        .where(
            and_(
                invites.c.made_by.is_not(None),
                invites.c.made_by != "",
                invites.c.revoked_at.is_(None),
                *where,
            )
        )
        .values(revoked_at=now_ms // 1000)
    )


async def _revoke(
    connection: AsyncConnection,
    rows: list[Any],
    now_ms: int,
    actor: str,
    reason: Callable[[Any], str],
    held: str | None,
) -> Revoked:
    """Revoke ``rows`` and audit each. ``held``: the session whose lock the transaction
    holds, whose lease row counts the change (``lock_session``), as a revocation of the
    admin key's does. Other sessions' are not locked (no lock order to keep across
    sessions): their running node's fence reads a command's token as stored anyway."""
    revoked: Revoked = {}
    if not rows:
        return revoked
    if held is not None:
        await lock_session(connection, held, members_change=True)
    await connection.execute(
        update(client_tokens)
        .where(client_tokens.c.id.in_([row.id for row in rows]))
        .values(revoked_at=now_ms)
    )
    for row in rows:
        token = TokenRow(row.id, row.user_id, row.expires_at, revoked=True, revoked_at=now_ms)
        revoked.setdefault(row.session_id, []).append(token)
        what = {
            "revoked": row.id,
            "user_id": row.user_id,
            "made_by": row.made_by,
            "reason": f"revoked: {row.made_by!r} made the invite link that gave this token, "
            f"and {reason(row)}",
        }
        await insert_audit(connection, row.session_id, now_ms, "token", actor, what)
    if connection.dialect.name == "postgresql":
        # Every node reads the session's revoked tokens again (as ``revoke_token`` does).
        for session_id in revoked:
            await connection.execute(select(func.pg_notify(CHANNEL_SETTINGS, session_id)))
    return revoked
