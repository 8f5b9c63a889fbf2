"""Persistence over SQLAlchemy async Core: one class, SQLite and PostgreSQL alike.

Writes that must be atomic (a prompt with its sequence number and the CRDT update that shows
it) go through ``Store.transaction()``; everything a caller acknowledges has been committed.
``Store`` is the database's adapter of the ``SessionStore`` port (``server.store.port``):
its transactions and reads (``server.store.database``, ``server.store.reads``), the usage
rows (``server.store.usage``), and here the writes of a session's row and members.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

from sqlalchemy import and_, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.authz.policy import Decision, Readers
from parley.authz.roles import Member
from parley.authz.tokens import ADMIN_ACTOR
from parley.server.store.access import CHANNEL_SETTINGS, AccessStore, read_reader_lists
from parley.server.store.health import StorageHealth
from parley.server.store.lease_locks import XACT, tell_locked
from parley.server.store.link_tokens import LinkRefusal, Revoked, revoke_known, revoke_refused
from parley.server.store.reads import SessionReads
from parley.server.store.rows import (
    EntryRow,
    MemberChange,
    MemberRow,
    SessionRow,
    StoredDoc,
    check_added_name,
    check_name_free,
    check_room_for,
    count_members_change,
    hold_role,
    kept_name,
    lock_session,
    member_keys,
    members_named,
    names_to_check,
    read_member,
    require_role,
)
from parley.server.store.tables import (
    audit_log,
    command_acks,
    doc_snapshots,
    doc_updates,
    documents,
    entries,
    left_clients,
    members,
    model_usage,
    private_items,
    quotas,
    session_events,
    sessions,
    side_thread_turns,
    side_threads,
    summaries,
    thread_doc_snapshots,
    thread_doc_updates,
)
from parley.server.store.transaction import StoreTx
from parley.server.store.usage import UsageTables
from parley.session.events import Membership, SettingsChanged, membership_event
from parley.session.webhook_events import SESSION_CREATED, SESSION_DELETED

# PostgreSQL: a session was deleted (payload: its id); cluster nodes listen to it.
CHANNEL_DELETED = "parley_deleted"
# The settings that decide who reads a reply's restricted text (``SessionView.shares``).
READING_SETTINGS = frozenset({"restricted_replies", "restricted_replies_by"})

__all__ = [
    "EntryRow",
    "Judge",
    "MemberChange",
    "MemberRow",
    "ReaderJudgment",
    "SessionRow",
    "Store",
    "StoreTx",
    "StoredDoc",
]


Judge = Callable[[MemberRow | None, MemberRow | None], Decision]
"""Whether a membership change may be made, given the member's row before it and its
actor's (None: none), as stored."""
ReaderJudgment = Callable[[set[Readers]], tuple[Judge, LinkRefusal]]
"""A membership change's ``Judge`` and ``LinkRefusal``, given the session's reader lists."""


async def _link_tokens(
    connection: AsyncConnection,
    session_id: str,
    added: str | None,
    now_ms: int,
    link_refusal: LinkRefusal | None,
    actor: str,
) -> Revoked:
    """The tokens from members' links a membership change of ``session_id`` revoked:
    those ``link_refusal`` refuses there, and those of ``added`` (a user just added) in
    other sessions."""
    revoked: Revoked = {}
    if link_refusal is not None:
        revoked = await revoke_refused(connection, session_id, now_ms, link_refusal, actor)
    if added is not None:
        elsewhere = await revoke_known(
            connection, added, now_ms, session_id=session_id, elsewhere=True, actor=actor
        )
        revoked |= elsewhere  # other sessions' ids
    return revoked


async def _member_event(
    tx: StoreTx, before: MemberRow | None, after: MemberRow | None, now: int, by: str
) -> None:
    """Store the event of a membership change, if it changed anything."""
    row = after or before
    if row is None:  # removing a user who is no member
        return

    def shown(member: MemberRow | None) -> Membership | None:
        return None if member is None else Membership(member.role, member.grants, member.denials)

    event = membership_event(row.user_id, shown(before), shown(after), by)
    if event is not None:
        await tx.append_events(row.session_id, now, [event])


async def _former_authors(connection: AsyncConnection, session_id: str) -> list[str]:
    """The user ids of the session's transcript that are no member's now: their messages
    still read as theirs (``check_name_free``). One read of the entries' index by session
    and author, when a name is set or a member added; only former members are handed out
    (each is folded then: as many as members were removed after writing)."""
    now_members = select(members.c.user_id).where(members.c.session_id == session_id)
    rows = await connection.execute(
        select(entries.c.author)
        .where(entries.c.session_id == session_id, entries.c.author.not_in(now_members))
        .distinct()
    )
    return [author for (author,) in rows]


async def _member_ids(connection: AsyncConnection, session_id: str) -> list[str]:
    """The session's members' user ids (a member added is compared with each by look:
    ``rows.check_user_id_distinct``)."""
    rows = await connection.execute(
        select(members.c.user_id).where(members.c.session_id == session_id)
    )
    return [user_id for (user_id,) in rows]


class Store(SessionReads, UsageTables):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lock_timeout_s: float = 5.0,
        health: StorageHealth | None = None,
    ) -> None:
        super().__init__(engine, lock_timeout_s=lock_timeout_s, health=health)
        self.access = AccessStore(self)

    # -- sessions -------------------------------------------------------------------------

    async def create_session(
        self, session_id: str, title: str, policy: str, now: int
    ) -> SessionRow:
        async with self.transaction() as tx:
            await tx.connection.execute(
                insert(sessions).values(
                    id=session_id, title=title, created_at=now, last_seq=0, policy=policy
                )
            )
            created = {"title": title, "policy": policy}
            await tx.outbox(session_id, [(0, now, SESSION_CREATED, created)])
        return SessionRow(session_id, title, now, 0, policy)

    async def change_settings(
        self, session_id: str, values: dict[str, str | None], now: int, by: str
    ) -> dict[str, str | None]:
        """Store settings of the session's row (among ``SHOWN_SETTINGS``) and, in the same
        transaction, a ``settings_changed`` event of those that changed; returns them.
        ``NotFound`` for an unknown session."""
        async with self.transaction() as tx:
            await lock_session(tx.connection, session_id)
            row = (
                await tx.connection.execute(select(sessions).where(sessions.c.id == session_id))
            ).one()
            changed = {k: v for k, v in values.items() if getattr(row, k) != v}
            if changed.keys() & READING_SETTINGS:
                # Who may read a reply's restricted text: counted as a members change, so
                # the running node judges its next write by it, in force there or not yet.
                await count_members_change(tx.connection, session_id)
            if changed:
                await tx.connection.execute(
                    update(sessions).where(sessions.c.id == session_id).values(**changed)
                )
                await tx.append_events(session_id, now, [SettingsChanged(changed, by)])
        return changed

    async def delete_session(self, session_id: str, now: int) -> bool:
        async with self.transaction() as tx:
            if self.engine.dialect.name == "postgresql":
                # The lease first, as a write of the running node locks it (its fence) and
                # then the session's row: in the other order, a reply streaming there
                # deadlocked with the delete (review: 503 now and then).
                lease = await tx.connection.execute(
                    text(f"DELETE FROM session_leases WHERE session_id = :id RETURNING {XACT}"),
                    {"id": session_id},
                )
                for held in lease:  # (this node's own, as its renewal counts it: FX68)
                    tell_locked(tx.connection, session_id, int(held.xact))
            # Locks the session's row first (PostgreSQL): its deliveries stay in order.
            found = await tx.connection.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(last_event_seq=sessions.c.last_event_seq)
                .returning(sessions.c.id)
            )
            if found.first() is not None:
                await tx.outbox(session_id, [(0, now, SESSION_DELETED, {})])
                if self.engine.dialect.name == "postgresql":
                    # Every node unloads it at the commit, the one that runs it too.
                    tx.notify(CHANNEL_DELETED, session_id)
            # Children first: SQLite enforces ON DELETE CASCADE only with the pragma on.
            for table in (
                thread_doc_updates,
                thread_doc_snapshots,
                side_thread_turns,
                side_threads,
                session_events,
                summaries,
                audit_log,
                private_items,
                command_acks,
                left_clients,
                documents,
                doc_snapshots,
                doc_updates,
                entries,
                members,
                model_usage,
                quotas,
            ):
                await tx.connection.execute(delete(table).where(table.c.session_id == session_id))
            result = await tx.connection.execute(
                delete(sessions).where(sessions.c.id == session_id)
            )
        return bool(result.rowcount)

    # -- members --------------------------------------------------------------------------

    async def change_member(
        self,
        session_id: str,
        user_id: str,
        after: Member | None,
        now: int,
        judge: Judge | None,
        actor_id: str | None = None,
        display_name: str | None = None,
        distinct_name: bool = False,
        max_members: int | None = None,
        link_refusal: LinkRefusal | None = None,
        readers: ReaderJudgment | None = None,
    ) -> MemberChange:
        """Add or change (``after``) or remove (None) a member if ``judge(before, actor)``
        allows it, both rows read in the writing transaction. In that transaction, the
        tokens from members' links are judged again (``link_tokens``): in this session by
        ``link_refusal`` (given a token's member and maker as stored after the change); a
        user added is someone elsewhere now (``MemberChange.revoked``). A user added gets a
        new token epoch (their earlier tokens stay dead); a change keeps it. ``display_name``: the
        name shown for them ("" none; None keeps the one they have); ``distinct_name``:
        ``Conflict`` if it is another member's (``check_name_free``); ``max_members``:
        ``Conflict`` for a member added past it. Both are read under the session's lock, so
        concurrent changes (on any node) cannot pass them together. ``readers``: the
        ``judge`` and ``link_refusal`` made from the session's reader lists as read under
        that lock too (FX37: read before it, a member raised while a document was attached
        was judged without it, and a token from a link it reached lived on)."""
        async with self.transaction() as tx:
            connection = tx.connection
            # Counted on the lease row below, once it is known to change what a member may
            # do or read (a new name alone does not: review RQ-1, every rename made the
            # running node judge its streamed text again).
            await lock_session(connection, session_id)
            if readers is not None:
                judge, link_refusal = readers(await read_reader_lists(connection, session_id))
            if judge is None:
                raise TypeError("change_member: a judge, or reader lists to make one")
            before = await read_member(connection, session_id, user_id)
            # A member added: refused past the cap, or if their user id or name is taken.
            cap = max_members if after is not None and before is None else None
            wanted = names_to_check(
                user_id, display_name, distinct_name=distinct_name, added=cap is not None
            )
            named: list[tuple[str, str]] = []
            authors: list[str] = []
            if wanted:
                named = await members_named(connection, session_id, wanted)
                authors = await _former_authors(connection, session_id)
            if distinct_name:
                check_name_free(display_name, user_id, named, authors)
            if cap is not None:
                user_ids = await _member_ids(connection, session_id)
                check_room_for(len(user_ids), cap)
                check_added_name(user_id, display_name, named, authors, user_ids)
            if after is not None:
                require_role(await hold_role(connection, after.role), after.role)
            actor = None
            if actor_id is not None:
                same = actor_id == user_id
                actor = before if same else await read_member(connection, session_id, actor_id)
            decision = judge(before, actor)
            where = and_(members.c.session_id == session_id, members.c.user_id == user_id)
            if not decision.allowed:
                return MemberChange(decision, before, before)
            if self.engine.dialect.name == "postgresql":
                # Every node judges by it before what is committed after it (review: a
                # follower sent a removed member's socket what was posted in between).
                tx.notify(CHANNEL_SETTINGS, session_id)
            by = actor_id or ADMIN_ACTOR
            if after is None:
                await connection.execute(delete(members).where(where))
                await _member_event(tx, before, None, now, by)
                revoked = await _link_tokens(connection, session_id, None, now, link_refusal, by)
                await count_members_change(connection, session_id)
                return MemberChange(decision, before, None, revoked)
            grants, denials = tuple(sorted(after.grants)), tuple(sorted(after.denials))
            name = display_name if display_name is not None else kept_name(before)
            values = {
                "role": after.role,
                "grants": json.dumps(grants),
                "denials": json.dumps(denials),
                "display_name": name,
                **member_keys(user_id, name),
            }
            if before is not None:
                await connection.execute(update(members).where(where).values(**values))
                created, epoch = before.created_at, before.token_epoch
            else:
                created, epoch = now, secrets.token_hex(8)
                await connection.execute(
                    insert(members).values(
                        session_id=session_id,
                        user_id=user_id,
                        created_at=now,
                        token_epoch=epoch,
                        **values,
                    )
                )
            row = MemberRow(session_id, user_id, after.role, created, grants, denials, epoch, name)
            await _member_event(tx, before, row, now, by)
            added = user_id if before is None else None
            revoked = await _link_tokens(connection, session_id, added, now, link_refusal, by)
            if before is None or row.as_member() != before.as_member() or revoked:
                await count_members_change(connection, session_id)
            return MemberChange(decision, before, row, revoked)
