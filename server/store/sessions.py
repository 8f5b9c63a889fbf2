"""Persistence over SQLAlchemy async Core: one class, SQLite and PostgreSQL alike.

Writes that must be atomic (a prompt with its sequence number and the CRDT update that shows
it) go through ``Store.transaction()``; everything a caller acknowledges has been committed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authz.policy import Decision
from authz.roles import Member
from server.store.group_commit import GroupCommit, insert_updates
from server.store.health import LockTimeout, StorageHealth
from server.store.sqlite_inline import Checkpointer, InlineConnection, file_path
from server.store.tables import (
    audit_log,
    doc_snapshots,
    doc_updates,
    documents,
    entries,
    members,
    model_usage,
    private_items,
    quotas,
    session_events,
    sessions,
    summaries,
)
from server.store.webhooks import Subscriptions, enqueue, version_now
from session.errors import DuplicateCommand, NotFound, Unavailable
from session.events import (
    Membership,
    SessionEvent,
    SettingsChanged,
    StoredEvent,
    membership_event,
)
from session.lifecycle import IllegalTransition, PromptStatus, prompt_predecessors
from session.reasons import Ending
from session.summary import Summary
from session.tokens import count_tokens
from session.webhook_events import SESSION_CREATED, SESSION_DELETED, webhook_data, webhook_types


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    title: str
    created_at: int
    last_seq: int
    policy: str
    model: str | None = None
    restricted_replies: str = "private"


@dataclass(frozen=True, slots=True)
class MemberRow:
    session_id: str
    user_id: str
    role: str
    created_at: int
    grants: tuple[str, ...] = ()
    denials: tuple[str, ...] = ()
    token_epoch: str = ""

    def as_member(self) -> Member:
        return Member(
            self.user_id,
            self.role,
            frozenset(self.grants),
            frozenset(self.denials),
            self.token_epoch,
        )


@dataclass(frozen=True, slots=True)
class MemberChange:
    """What ``Store.change_member`` decided, and the member before and after (as before
    when refused)."""

    decision: Decision
    before: MemberRow | None
    after: MemberRow | None


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


@dataclass(frozen=True, slots=True)
class StoredDoc:
    snapshot: bytes | None
    updates: list[bytes]
    updates_since_snapshot: int


async def _begin_immediate(connection: AsyncConnection, deadline: float) -> None:
    """SQLite file: take the write lock before the transaction's first statement, waiting
    for another process's off the loop (``InlineConnection.begin_immediate``)."""
    raw = (await connection.get_raw_connection()).driver_connection
    if isinstance(raw, InlineConnection):
        await raw.begin_immediate(deadline - asyncio.get_running_loop().time())


def _session(row: Any) -> SessionRow:
    return SessionRow(
        row.id,
        row.title,
        row.created_at,
        row.last_seq,
        row.policy,
        row.model,
        row.restricted_replies,
    )


def _member(row: Any) -> MemberRow:
    return MemberRow(
        row.session_id,
        row.user_id,
        row.role,
        row.created_at,
        tuple(json.loads(row.grants)),
        tuple(json.loads(row.denials)),
        row.token_epoch,
    )


async def lock_session(connection: AsyncConnection, session_id: str) -> None:
    """Lock the session's row for this transaction (PostgreSQL; SQLite has one writer at a
    time anyway), so its membership changes and token issues happen one after another.
    ``NotFound`` for an unknown session."""
    found = await connection.execute(
        select(sessions.c.id).where(sessions.c.id == session_id).with_for_update()
    )
    if found.first() is None:
        raise NotFound(f"no session {session_id!r}")


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
    return None if row is None else _member(row)


def _entry(row: Any) -> EntryRow:
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
    )


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


class StoreTx:
    """One database transaction; methods mirror the writes a session makes."""

    def __init__(self, connection: AsyncConnection, subscriptions: Subscriptions) -> None:
        self.connection = connection
        self.subscriptions = subscriptions
        # Webhook deliveries this transaction wrote: the sender is woken after the commit.
        self.outboxed = 0

    async def outbox(
        self,
        session_id: str,
        told: Sequence[tuple[int, int, str, dict[str, Any]]],
        version: int | None = None,
    ) -> None:
        """Write the webhook deliveries of ``told`` (event seq, at ms, webhook type, data)
        in this transaction; ``version``: the subscriptions' version, if already read."""
        if told:
            wanting = await self.subscriptions.current(self.connection, version)
            self.outboxed += await enqueue(self.connection, wanting, session_id, told)

    async def next_seq(self, session_id: str) -> int:
        result = await self.connection.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(last_seq=sessions.c.last_seq + 1)
            .returning(sessions.c.last_seq)
        )
        seq = result.scalar_one_or_none()
        if seq is None:
            raise LookupError(session_id)
        return int(seq)

    async def append_events(
        self,
        session_id: str,
        at_ms: int,
        events: Sequence[SessionEvent],
        replies: Mapping[str, str | None] | None = None,
    ) -> list[int]:
        """Store ``events`` in this transaction with the session's next event numbers;
        returns them. The counter's row stays locked until the commit (PostgreSQL), so the
        numbers of one session follow the commit order whichever node writes.

        ``replies``: the text of each reply completed here by its id, None when it is
        restricted (``reply.completed`` webhooks carry it; the stored events never do)."""
        if not events:
            return []
        # The subscriptions' version comes with the counter: no query of its own.
        result = await self.connection.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(last_event_seq=sessions.c.last_event_seq + len(events))
            .returning(sessions.c.last_event_seq, version_now())
        )
        found = result.first()
        if found is None:
            raise LookupError(session_id)
        last, version = int(found[0]), int(found[1])
        first = last - len(events) + 1
        data = [event.data() for event in events]
        await self.connection.execute(
            insert(session_events),
            [
                {
                    "session_id": session_id,
                    "seq": first + i,
                    "at_ms": at_ms,
                    "kind": event.kind,
                    "actor": event.actor,
                    "data": json.dumps(data[i], separators=(",", ":")),
                }
                for i, event in enumerate(events)
            ],
        )
        told = [
            (first + i, at_ms, told, webhook_data(told, data[i], replies or {}))
            for i, event in enumerate(events)
            for told in webhook_types(event.kind, data[i])
        ]
        await self.outbox(session_id, told, version)
        return list(range(first, first + len(events)))

    async def insert_entry(self, row: EntryRow) -> None:
        """Insert ``row``; ``DuplicateCommand`` if its author sent its command id before
        (the insert does nothing then, and the transaction stays usable)."""
        upsert = pg_insert if self.connection.dialect.name == "postgresql" else sqlite_insert
        statement = (
            upsert(entries)
            .values(
                id=row.id,
                session_id=row.session_id,
                seq=row.seq,
                kind=row.kind,
                author=row.author,
                command_id=row.command_id,
                text=row.text,
                status=row.status,
                reason=row.reason,
                reply_id=row.reply_id,
                created_at=row.created_at,
            )
            .on_conflict_do_nothing(index_elements=["session_id", "author", "command_id"])
            .returning(entries.c.id)
        )
        if (await self.connection.execute(statement)).first() is None:
            raise DuplicateCommand(row.command_id)

    async def set_entry_status(
        self,
        entry_id: str,
        status: PromptStatus,
        *,
        ending: Ending | None = None,
        reply_id: str | None = None,
        started_at: int | None = None,
        finished_at: int | None = None,
    ) -> None:
        """Move a prompt's row to ``status``, only from a status the lifecycle table allows
        before it (``IllegalTransition`` otherwise: crash recovery reads this column)."""
        values: dict[str, Any] = {"status": status.value}
        if ending is not None:
            values["reason"] = ending.reason
            values["reason_code"] = ending.code.value
        if reply_id is not None:
            values["reply_id"] = reply_id
        if started_at is not None:
            values["started_at"] = started_at
        if finished_at is not None:
            values["finished_at"] = finished_at
        allowed = [old.value for old in prompt_predecessors(status)]
        result = await self.connection.execute(
            update(entries)
            .where(entries.c.id == entry_id, entries.c.status.in_(allowed))
            .values(**values)
        )
        if result.rowcount != 1:
            raise IllegalTransition(f"prompt {entry_id} cannot become {status} from its row")

    async def set_policy(self, session_id: str, policy: str) -> None:
        await self.connection.execute(
            update(sessions).where(sessions.c.id == session_id).values(policy=policy)
        )

    async def append_update(self, session_id: str, data: bytes) -> int:
        (update_id,) = await self.append_updates([(session_id, data)])
        return update_id

    async def append_updates(self, rows: Sequence[tuple[str, bytes]]) -> list[int]:
        """Several sessions' updates in one statement; their ids, in the order given."""
        if not rows:
            return []
        statement, parameters = insert_updates(rows)
        result = await self.connection.execute(statement, parameters)  # type: ignore[call-overload]
        return [int(row[0]) for row in result]

    async def write_snapshot(
        self, session_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        """Replace the snapshot and drop the updates it covers, in this transaction."""
        await self.connection.execute(
            delete(doc_snapshots).where(doc_snapshots.c.session_id == session_id)
        )
        await self.connection.execute(
            insert(doc_snapshots).values(
                session_id=session_id, data=data, last_update_id=last_update_id, created_at=now
            )
        )
        await self.connection.execute(
            delete(doc_updates).where(
                and_(doc_updates.c.session_id == session_id, doc_updates.c.id <= last_update_id)
            )
        )


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lock_timeout_s: float = 5.0,
        health: StorageHealth | None = None,
    ) -> None:
        self.engine = engine
        # SQLite lets one transaction write at a time, and its calls run in the event
        # loop's thread (server.store.sqlite_inline): a second writer would block the loop in
        # SQLite's busy handler while the first, needing the loop, could not finish.
        # Writers queue here instead, first come, first served. PostgreSQL locks rows,
        # not the database: no queue there.
        self._writers: asyncio.Lock | None = (
            asyncio.Lock() if engine.dialect.name == "sqlite" else None
        )
        # SQLite: how long a write may wait, from its call, for its turn and for the
        # write lock another process may hold; past it the write is refused.
        self.lock_timeout_s = lock_timeout_s
        self.health = health or StorageHealth()
        self.group = GroupCommit(self)
        path = file_path(engine.url) if engine.dialect.name == "sqlite" else None
        self.checkpointer = Checkpointer(path) if path else None
        # Called after a commit that wrote webhook deliveries (the sender's wake-up).
        self.on_outbox: Callable[[], None] | None = None
        # The event webhook subscriptions every event write here matches against.
        self.subscriptions = Subscriptions()

    @asynccontextmanager
    async def transaction(
        self, what: str = "write", *, lock_timeout_s: float | None = None
    ) -> AsyncIterator[StoreTx]:
        """A write transaction; database faults surface as ``Unavailable`` (and are told to
        ``health``). ``what`` names the write in the refusal log; ``lock_timeout_s``
        replaces the store's own budget.

        Do not open one inside another: on SQLite the second would wait for the first."""
        budget = self.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async with self._turn(deadline), self.engine.connect() as connection:
                if self._writers is not None:
                    await _begin_immediate(connection, deadline)
                async with connection.begin():
                    tx = StoreTx(connection, self.subscriptions)
                    yield tx
            if self.checkpointer is not None:
                self.checkpointer.wrote()
            if tx.outboxed and self.on_outbox is not None:
                self.on_outbox()
        except (OperationalError, DBAPIError, OSError, sqlite3.Error) as exc:
            if isinstance(exc, IntegrityError):
                raise
            self.health.refuse(exc, what)
            if isinstance(exc, LockTimeout):
                raise Unavailable(
                    "another process holds the database's write lock; nothing was stored"
                ) from exc
            raise Unavailable("the database is unavailable; nothing was stored") from exc
        self.health.wrote()

    @asynccontextmanager
    async def _turn(self, deadline: float) -> AsyncIterator[None]:
        """SQLite: this process's writers one at a time, each waiting until ``deadline``."""
        if self._writers is None:
            yield
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._writers.acquire()
        except TimeoutError:
            raise LockTimeout("the writes before this one held the database too long") from None
        try:
            yield
        finally:
            self._writers.release()

    async def probe_write(self, lock_timeout_s: float) -> None:
        """Write without changing anything (``/readyz`` while writes fail): ``Unavailable``
        unless the database takes writes now."""
        async with self.transaction("probe", lock_timeout_s=lock_timeout_s) as tx:
            await tx.connection.exec_driver_sql(
                "UPDATE alembic_version SET version_num = version_num"
            )

    async def close(self) -> None:
        """Finish the group commit's rounds, checkpoint, then close every connection."""
        await self.group.close()
        if self.checkpointer is not None:
            await self.checkpointer.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as connection:
                yield connection
        except (OperationalError, DBAPIError, OSError) as exc:
            raise Unavailable("the database is unavailable") from exc

    async def ping(self) -> None:
        async with self.read() as connection:
            await connection.execute(select(1))

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
            if changed:
                await tx.connection.execute(
                    update(sessions).where(sessions.c.id == session_id).values(**changed)
                )
                await tx.append_events(session_id, now, [SettingsChanged(changed, by)])
        return changed

    async def get_session(self, session_id: str) -> SessionRow | None:
        async with self.read() as connection:
            row = (
                await connection.execute(select(sessions).where(sessions.c.id == session_id))
            ).first()
        return None if row is None else _session(row)

    async def list_sessions(self, *, limit: int, offset: int) -> list[SessionRow]:
        async with self.read() as connection:
            rows = await connection.execute(
                select(sessions)
                .order_by(sessions.c.created_at, sessions.c.id)
                .limit(limit)
                .offset(offset)
            )
            return [_session(row) for row in rows]

    async def count_sessions(self) -> int:
        async with self.read() as connection:
            return int(
                (await connection.execute(select(func.count()).select_from(sessions))).scalar_one()
            )

    async def delete_session(self, session_id: str, now: int) -> bool:
        async with self.transaction() as tx:
            # Locks the session's row first (PostgreSQL): its deliveries stay in order.
            found = await tx.connection.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(last_event_seq=sessions.c.last_event_seq)
                .returning(sessions.c.id)
            )
            if found.first() is not None:
                await tx.outbox(session_id, [(0, now, SESSION_DELETED, {})])
            # Children first: SQLite enforces ON DELETE CASCADE only with the pragma on.
            for table in (
                session_events,
                summaries,
                audit_log,
                private_items,
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
        judge: Callable[[MemberRow | None, MemberRow | None], Decision],
        actor_id: str | None = None,
    ) -> MemberChange:
        """Add or change (``after``) or remove (None) a member if ``judge(before, actor)``
        allows it, both rows read in the writing transaction. A user added gets a new token
        epoch (their earlier tokens stay dead); a change keeps it."""
        async with self.transaction() as tx:
            connection = tx.connection
            await lock_session(connection, session_id)
            before = await read_member(connection, session_id, user_id)
            actor = None
            if actor_id is not None:
                same = actor_id == user_id
                actor = before if same else await read_member(connection, session_id, actor_id)
            decision = judge(before, actor)
            where = and_(members.c.session_id == session_id, members.c.user_id == user_id)
            if not decision.allowed:
                return MemberChange(decision, before, before)
            by = actor_id or "admin"
            if after is None:
                await connection.execute(delete(members).where(where))
                await _member_event(tx, before, None, now, by)
                return MemberChange(decision, before, None)
            grants, denials = tuple(sorted(after.grants)), tuple(sorted(after.denials))
            values = {
                "role": after.role,
                "grants": json.dumps(grants),
                "denials": json.dumps(denials),
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
            row = MemberRow(session_id, user_id, after.role, created, grants, denials, epoch)
            await _member_event(tx, before, row, now, by)
            return MemberChange(decision, before, row)

    async def list_members(self, session_id: str) -> list[MemberRow]:
        async with self.read() as connection:
            rows = await connection.execute(
                select(members)
                .where(members.c.session_id == session_id)
                .order_by(members.c.created_at, members.c.user_id)
            )
            return [_member(row) for row in rows]

    async def get_member(self, session_id: str, user_id: str) -> MemberRow | None:
        async with self.read() as connection:
            return await read_member(connection, session_id, user_id)

    async def entry_by_command(
        self, session_id: str, author: str, command_id: str
    ) -> EntryRow | None:
        async with self.read() as connection:
            row = (
                await connection.execute(
                    select(entries).where(
                        and_(
                            entries.c.session_id == session_id,
                            entries.c.author == author,
                            entries.c.command_id == command_id,
                        )
                    )
                )
            ).first()
        return None if row is None else _entry(row)

    async def entries_with_status(self, session_id: str, statuses: Sequence[str]) -> list[EntryRow]:
        async with self.read() as connection:
            rows = await connection.execute(
                select(entries)
                .where(and_(entries.c.session_id == session_id, entries.c.status.in_(statuses)))
                .order_by(entries.c.seq)
            )
            return [_entry(row) for row in rows]

    async def sessions_with_status(self, statuses: Sequence[str]) -> list[str]:
        async with self.read() as connection:
            rows = await connection.execute(
                select(entries.c.session_id).where(entries.c.status.in_(statuses)).distinct()
            )
            return [row.session_id for row in rows]

    # -- semantic events ------------------------------------------------------------------

    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """The session's events numbered above ``after_seq``, oldest first, at most
        ``limit`` of them."""
        async with self.read() as connection:
            rows = await connection.execute(
                select(session_events)
                .where(
                    and_(
                        session_events.c.session_id == session_id, session_events.c.seq > after_seq
                    )
                )
                .order_by(session_events.c.seq)
                .limit(limit)
            )
            return [
                StoredEvent(
                    row.session_id,
                    int(row.seq),
                    int(row.at_ms),
                    row.kind,
                    row.actor,
                    json.loads(row.data),
                )
                for row in rows
            ]

    # -- the CRDT document ----------------------------------------------------------------

    async def load_doc(self, session_id: str) -> StoredDoc:
        async with self.read() as connection:
            snap = (
                await connection.execute(
                    select(doc_snapshots.c.data).where(doc_snapshots.c.session_id == session_id)
                )
            ).first()
            rows = await connection.execute(
                select(doc_updates.c.data)
                .where(doc_updates.c.session_id == session_id)
                .order_by(doc_updates.c.id)
            )
            updates = [bytes(row.data) for row in rows]
        return StoredDoc(
            snapshot=None if snap is None else bytes(snap.data),
            updates=updates,
            updates_since_snapshot=len(updates),
        )

    # -- summaries ------------------------------------------------------------------------

    async def add_summary(
        self,
        session_id: str,
        summary: Summary,
        *,
        added: frozenset[str],
        model: str,
        input_tokens: int,
        output_tokens: int,
        now: int,
    ) -> None:
        """Store ``summary``, which extends the session's newest by the entries ``added``."""
        async with self.transaction() as tx:
            ordinal = (
                await tx.connection.execute(
                    select(func.coalesce(func.max(summaries.c.ordinal), 0)).where(
                        summaries.c.session_id == session_id
                    )
                )
            ).scalar_one()
            await tx.connection.execute(
                insert(summaries).values(
                    id=summary.id,
                    session_id=session_id,
                    ordinal=int(ordinal) + 1,
                    from_seq=summary.from_seq,
                    to_seq=summary.to_seq,
                    covers=json.dumps(sorted(added)),
                    text=summary.text,
                    model=model,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    created_at=now,
                )
            )

    async def load_summaries(self, session_id: str) -> list[Summary]:
        """The session's summaries, oldest first, each with everything it covers."""
        async with self.read() as connection:
            rows = await connection.execute(
                select(summaries)
                .where(summaries.c.session_id == session_id)
                .order_by(summaries.c.ordinal)
            )
            found: list[Summary] = []
            covers: frozenset[str] = frozenset()
            for row in rows:
                covers = covers | frozenset(json.loads(row.covers))
                found.append(
                    Summary(
                        id=row.id,
                        from_seq=row.from_seq,
                        to_seq=row.to_seq,
                        covers=covers,
                        text=row.text,
                        tokens=count_tokens(row.text),
                    )
                )
        return found
