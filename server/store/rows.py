"""The rows Parley stores, as the store hands them out, and the reads of them that
transactions share (the database's adapter, ``server.store.sessions``, and its in-memory
twin, ``server.store.memory``, return the same types)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.authz.policy import Decision
from parley.authz.roles import Member, Role
from parley.authz.tokens import ClientClaims
from parley.server.store.access_rows import TokenRow
from parley.server.store.direct_sqlite import direct
from parley.server.store.lease_locks import XACT, tell_locked
from parley.server.store.tables import members, model_usage, quotas, roles, sessions
from parley.session.errors import Conflict, InvalidInput, NotFound
from parley.session.names import look_alike_key, name_key, read_name, speaker_name_refusal
from parley.session.quota import Quotas


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    title: str
    created_at: int
    last_seq: int
    policy: str
    model: str | None = None
    restricted_replies: str = "private"
    restricted_replies_by: str | None = None  # the member who chose ``shared``; None: admin


@dataclass(frozen=True, slots=True)
class MemberRow:
    session_id: str
    user_id: str
    role: str
    created_at: int
    grants: tuple[str, ...] = ()
    denials: tuple[str, ...] = ()
    token_epoch: str = ""
    display_name: str = ""

    def as_member(self) -> Member:
        return Member(
            self.user_id,
            self.role,
            frozenset(self.grants),
            frozenset(self.denials),
            self.token_epoch,
            self.created_at,
        )


@dataclass(frozen=True, slots=True)
class MemberChange:
    """What ``Store.change_member`` decided, and the member before and after (as before
    when refused); ``revoked``: the tokens from members' links it revoked, by session
    (``link_tokens``)."""

    decision: Decision
    before: MemberRow | None
    after: MemberRow | None
    revoked: dict[str, list[TokenRow]] = field(default_factory=dict)


def claims_column(claims: ClientClaims | None) -> str | None:
    """The column form of a client token's claims (``session_commands.token_claims``:
    a forwarded command's; ``entries.token_claims``: a prompt's link token's; None: none)."""
    return None if claims is None else json.dumps(asdict(claims), separators=(",", ":"))


def claims_of(column: str | None) -> ClientClaims | None:
    """The claims stored by ``claims_column``."""
    return None if column is None else ClientClaims(**json.loads(column))


@dataclass(frozen=True, slots=True)
class EntryRow:
    id: str
    session_id: str
    seq: int
    kind: str
    author: str
    command_id: str
    text: str
    status: str
    reason: str | None
    reply_id: str | None
    created_at: int
    # Set when the prompt's run starts in the write that stores it (inserted ``running``).
    started_at: int | None = None
    # A prompt sent with a token from another member's invite link: its claims
    # (``claims_column``), judged again when its run starts.
    token_claims: str | None = None


@dataclass(frozen=True, slots=True)
class StoredDoc:
    snapshot: bytes | None
    updates: list[bytes]
    updates_since_snapshot: int
    last_update_id: int = 0  # of the newest update read (or the snapshot's): 0 for none


def session_row(row: Any) -> SessionRow:
    return SessionRow(
        row.id,
        row.title,
        row.created_at,
        row.last_seq,
        row.policy,
        row.model,
        row.restricted_replies,
        row.restricted_replies_by,
    )


def member_row(row: Any) -> MemberRow:
    return MemberRow(
        row.session_id,
        row.user_id,
        row.role,
        row.created_at,
        tuple(json.loads(row.grants)),
        tuple(json.loads(row.denials)),
        row.token_epoch,
        row.display_name,
    )


def kept_name(before: MemberRow | None) -> str:
    """The display name a change that names none keeps ("" for a member added)."""
    return "" if before is None else before.display_name


def check_name_free(
    name: str | None,
    user_id: str,
    others: Iterable[tuple[str, str]],
    authors: Iterable[str] = (),
    at: str = "display_name",
) -> None:
    """``ReservedName`` (at ``at``) if ``name`` reads as a speaker the server names
    (``session.names.speaker_named``: "Assistant", "system", …). ``Conflict`` if it reads
    as another member's display name or user id here, or as the user id of anyone else
    whose writing is in the transcript (``authors``: a member removed still reads as
    their user id there, so it stays theirs; review FK): compared as read
    (``session.names.read_name``: letter case, compatibility forms, invisible characters,
    spaces and letters that look alike aside), names stored before the rule included;
    ``others``: the (user id, display name) of every member whose either may read as
    ``name`` (all members, or those ``members_named`` finds). Read in the writing
    transaction, so two members racing for one name cannot both take it."""
    reserved = speaker_name_refusal(name, at)
    if reserved is not None:
        raise reserved
    wanted = read_name(name or "")
    if not wanted:
        return
    for other, shown in others:
        if other != user_id and wanted in (read_name(other), read_name(shown)):
            raise Conflict(f"{name!r} is another member's name here; choose another")
    for author in authors:
        if author != user_id and wanted == read_name(author):
            raise Conflict(
                f"{name!r} is the user id of a former member, whose messages stay in the"
                " transcript; choose another"
            )


def check_added_name(
    user_id: str,
    display_name: str | None,
    others: Sequence[tuple[str, str]],
    authors: Iterable[str] = (),
    user_ids: Iterable[str] = (),
) -> None:
    """A member added (``user_id`` no member yet; ``others`` as ``check_name_free``'s):
    ``Conflict`` if their user id, or the name they are given, reads as another member's
    user id or display name here, or as another author's user id (``authors``,
    ``check_name_free``), whoever adds them: the rule holds whichever came first (review:
    eve took the name "carol", then the real carol was added, and both wrote as "carol";
    review I2-2: ``carol`` and ``Carol``, shown by their user ids, were both added); and if
    their user id looks like another member's (``user_ids``: every member's) or author's
    (``check_user_id_distinct``)."""
    authors = tuple(authors)
    check_name_free(user_id, user_id, others, authors, at="user_id")
    check_name_free(display_name, user_id, others, authors)
    check_user_id_distinct(user_id, (*user_ids, *authors))


def check_user_id_distinct(user_id: str, user_ids: Iterable[str]) -> None:
    """``Conflict`` if ``user_id`` looks like one of ``user_ids`` (the session's members'
    and former authors'), as Unicode's confusables read them (``names.look_alike_key``:
    ``aIice`` beside ``alice``, ``rnallory`` beside ``mallory``; review RN-3): the model is
    told user ids, and would read two people as one. One key a member (user ids are
    ASCII: a few µs each), on a member added only."""
    key = look_alike_key(user_id)
    for other in user_ids:
        if other != user_id and look_alike_key(other) == key:
            raise Conflict(
                f"user_id: {user_id!r} looks like {other!r}, the user id of another member"
                " or author here (letters that read alike: I, l and 1, O and 0, rn and m);"
                " choose another"
            )


def names_to_check(
    user_id: str, display_name: str | None, *, distinct_name: bool, added: bool
) -> list[str]:
    """The names a member change must find free (``check_name_free``): the name it sets
    (``distinct_name``), and a member ``added``'s user id and name."""
    wanted = [display_name or ""] if distinct_name or added else []
    return [*wanted, user_id] if added else wanted


def check_room_for(count: int, max_members: int) -> None:
    """``Conflict`` if a member added to ``count`` members would pass the cap."""
    if count >= max_members:
        raise Conflict(f"the session has {count} members, the most it may have")


async def members_named(
    connection: AsyncConnection, session_id: str, names: Iterable[str]
) -> list[tuple[str, str]]:
    """The (user id, display name) of the members whose user id or display name may read as
    one of ``names``: those of the same ``name_key`` (looked up by index) and those stored
    without keys (by a version before them), for ``check_name_free`` to fold. A rename in a
    session of a thousand members reads the few rows it may meet, not a thousand (review
    R4-3: folding every member's names on each rename held the event loop 80 ms)."""
    keys = sorted({name_key(name) for name in names} - {""})
    if not keys:
        return []
    rows = await connection.execute(
        select(members.c.user_id, members.c.display_name).where(
            members.c.session_id == session_id,
            or_(
                members.c.user_id_key.in_(keys),
                members.c.name_key.in_(keys),
                members.c.user_id_key.is_(None),
                members.c.name_key.is_(None),
            ),
        )
    )
    return [(r[0], r[1]) for r in rows]


def member_keys(user_id: str, display_name: str) -> dict[str, str]:
    """The key columns stored with a member's row (``members_named`` reads them)."""
    return {"user_id_key": name_key(user_id), "name_key": name_key(display_name)}


# The lease row of a session run in cluster mode (``server.cluster.lease``), if any.
_LOCK_LEASE = text(f"SELECT {XACT} FROM session_leases WHERE session_id = :id FOR NO KEY UPDATE")
# The same lock, for a change of the members or client tokens: counted on the lease row, so
# the node that runs the session reads them again at its next write (its fence).
_COUNT_MEMBERS_CHANGE = text(
    "UPDATE session_leases SET members_version = members_version + 1 WHERE session_id = :id"
    f" RETURNING {XACT}"
)


async def count_members_change(connection: AsyncConnection, session_id: str) -> None:
    """Count a change of the members (their access) or client tokens on the session's
    lease row, locked already by ``lock_session`` in this transaction (PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(_COUNT_MEMBERS_CHANGE, {"id": session_id})


# A custom role's definition changed: counted on the lease rows of the sessions where a
# member holds it, locked in one order (as a member change locks one, then the role's row).
_COUNT_ROLE_CHANGE = text(
    f"""
    WITH touched AS (
        SELECT l.session_id FROM session_leases l
        WHERE l.session_id IN (SELECT m.session_id FROM members m WHERE m.role = :role)
        ORDER BY l.session_id
        FOR NO KEY UPDATE
    )
    UPDATE session_leases SET members_version = members_version + 1
    WHERE session_id IN (SELECT session_id FROM touched)
    RETURNING session_id, {XACT}
    """
)


async def count_role_change(connection: AsyncConnection, role: str) -> None:
    """Before custom role ``role``'s definition is changed, in that transaction: count it
    on the lease row of every session where a member holds it (PostgreSQL), so the node
    that runs each judges its next write by the roles as stored, in force there or not
    yet. Its lease row locked first, as a member change locks it before the role's row:
    a member given the role meanwhile is either counted here or waits for this commit."""
    if connection.dialect.name == "postgresql":
        for row in await connection.execute(_COUNT_ROLE_CHANGE, {"role": role}):
            tell_locked(connection, row.session_id, int(row.xact))


async def lock_session(
    connection: AsyncConnection, session_id: str, *, members_change: bool = False
) -> None:
    """Lock the session's row for this transaction (PostgreSQL; SQLite has one writer at a
    time anyway), so its membership changes and token issues happen one after another.
    ``NotFound`` for an unknown session.

    Cluster mode: its lease row first (if it is run), which every write of the running
    node locks first (its fence): such a change and those writes happen one after another,
    and a member's write after a removal is judged by it at its commit (review RA-3: a
    removed member's messages were stored after their ``member_left``). ``members_change``:
    the transaction changes the members or client tokens; the lease row counts it (its
    ``members_version``), so the running node judges its next write by them as stored, in
    force there or not yet (reviews RH-2, RH-3). The node's ``LeaseTable`` is told of the
    lock (``lease_locks``): its renewal holds this transaction for the node's own (FX68)."""
    if connection.dialect.name == "postgresql":
        lock = _COUNT_MEMBERS_CHANGE if members_change else _LOCK_LEASE
        held = (await connection.execute(lock, {"id": session_id})).first()
        if held is not None:
            tell_locked(connection, session_id, int(held.xact))
    found = await connection.execute(
        select(sessions.c.id).where(sessions.c.id == session_id).with_for_update()
    )
    if found.first() is None:
        raise NotFound(f"no session {session_id!r}")


async def hold_role(connection: AsyncConnection, name: str, *, to_delete: bool = False) -> bool:
    """Lock custom role ``name``'s row for this transaction (PostgreSQL: shared to give it
    to a member, exclusive ``to_delete`` it), so a role is not deleted while it is given
    (review: a delete that counted no holder raced two members given the role, and they
    held a role that no longer existed, with every capability of the next role of that
    name). False when there is no such role (a built-in role is always there)."""
    if name in Role.__members__.values():
        return True
    found = await connection.execute(
        select(roles.c.name).where(roles.c.name == name).with_for_update(read=not to_delete)
    )
    return found.first() is not None


def require_role(found: bool, name: str) -> None:
    """``hold_role``'s answer for a member given ``name``: the route's own error if gone."""
    if not found:
        raise InvalidInput(f"role: no role {name!r} (see GET /api/v1/roles)")


async def read_member(
    connection: AsyncConnection, session_id: str, user_id: str
) -> MemberRow | None:
    row = (
        await connection.execute(
            select(members).where(
                and_(members.c.session_id == session_id, members.c.user_id == user_id)
            )
        )
    ).first()
    return None if row is None else member_row(row)


async def read_members(connection: AsyncConnection, session_id: str) -> list[MemberRow]:
    """The session's members, oldest first."""
    rows = await connection.execute(
        select(members)
        .where(members.c.session_id == session_id)
        .order_by(members.c.created_at, members.c.user_id)
    )
    return [member_row(row) for row in rows]


def entry_row(row: Any) -> EntryRow:
    return EntryRow(
        row.id,
        row.session_id,
        row.seq,
        row.kind,
        row.author,
        row.command_id,
        row.text,
        row.status,
        row.reason,
        row.reply_id,
        row.created_at,
        token_claims=row.token_claims,
    )


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One issuer's share of one model call (``estimated``: of a run cut off by a crash, as
    its recovery estimates it; stored only if its reply has no usage yet)."""

    session_id: str
    user_id: str
    day: str
    model: str
    reply_id: str
    input_tokens: int
    output_tokens: int
    created_at: int
    estimated: bool = False


# Built once: every run reads the quotas and writes its usage (see ``command_statements``).
_INSERT_USAGE = direct(insert(model_usage))
_QUOTAS = select(quotas).where(quotas.c.session_id == bindparam("session"))


async def insert_usage_rows(connection: AsyncConnection, rows: Sequence[UsageRow]) -> None:
    """Insert ``rows``; an estimated reply's only if it has no usage stored yet (its run's
    node stored what it counted before it lost it, or an earlier recovery its estimate)."""
    if any(r.estimated for r in rows):
        counted = await _counted(connection, rows)
        rows = [r for r in rows if not r.estimated or r.reply_id not in counted]
    if rows:
        await connection.execute(
            _INSERT_USAGE,
            [
                {
                    "session_id": r.session_id,
                    "user_id": r.user_id,
                    "day": r.day,
                    "model": r.model,
                    "reply_id": r.reply_id,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )


async def replace_usage_rows(connection: AsyncConnection, rows: Sequence[UsageRow]) -> None:
    """Insert ``rows``, counted by the node that made the calls, in place of what a recovery
    estimated for their replies (a node that lost a session mid-run and woke after another
    node recovered it)."""
    replies = sorted({r.reply_id for r in rows})
    for reply_id in replies:
        await _lock_usage_of(connection, reply_id)
    if replies:
        session_id = rows[0].session_id
        await connection.execute(
            delete(model_usage).where(
                model_usage.c.session_id == session_id, model_usage.c.reply_id.in_(replies)
            )
        )
    await insert_usage_rows(connection, rows)


async def _counted(connection: AsyncConnection, rows: Sequence[UsageRow]) -> set[str]:
    """Which of the estimated ``rows``' replies have usage stored (locked first, so that a
    node storing its count of one waits for this transaction, or this for it)."""
    replies = sorted({r.reply_id for r in rows if r.estimated})
    for reply_id in replies:
        await _lock_usage_of(connection, reply_id)
    found = await connection.execute(
        select(model_usage.c.reply_id).where(
            model_usage.c.session_id == rows[0].session_id, model_usage.c.reply_id.in_(replies)
        )
    )
    return {str(reply_id) for (reply_id,) in found}


async def _lock_usage_of(connection: AsyncConnection, reply_id: str) -> None:
    """PostgreSQL: be the one transaction storing ``reply_id``'s usage until this one ends
    (SQLite has one writer at a time)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('parley_usage'), hashtext(:r))"),
            {"r": reply_id},
        )


async def usage_totals(
    connection: AsyncConnection, session_id: str, day: str, user_id: str | None = None
) -> list[tuple[str, int, int, int]]:
    """Each user's input tokens, output tokens and calls on ``day`` (one user's when
    ``user_id`` is given), by user id."""
    where = [model_usage.c.session_id == session_id, model_usage.c.day == day]
    if user_id is not None:
        where.append(model_usage.c.user_id == user_id)
    query = (
        select(
            model_usage.c.user_id,
            func.sum(model_usage.c.input_tokens),
            func.sum(model_usage.c.output_tokens),
            func.count(),
        )
        .where(and_(*where))
        .group_by(model_usage.c.user_id)
        .order_by(model_usage.c.user_id)
    )
    rows = (await connection.execute(query)).all()
    return [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]


async def quota_limits(connection: AsyncConnection, session_id: str) -> Quotas:
    """The session's quotas (none set: ``Quotas()``)."""
    row = (await connection.execute(_QUOTAS, {"session": session_id})).first()
    if row is None:
        return Quotas()
    return Quotas(row.session_tokens_per_day, row.user_tokens_per_day)
