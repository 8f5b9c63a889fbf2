"""One write transaction of the database: the writes a session makes, as methods
(the ``SessionTx`` port, ``server.store.port``)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store import command_statements, left_clients, thread_log, thread_rows
from parley.server.store.access import insert_audit, insert_private
from parley.server.store.access_rows import PrivateItem, TokenRow
from parley.server.store.counters import ClaimedSeqs, SequenceMoved
from parley.server.store.direct_sqlite import plan_for
from parley.server.store.group_commit import insert_updates
from parley.server.store.lease_locks import LeaseLocks
from parley.server.store.link_tokens import revoke_by_stored
from parley.server.store.outbox import enqueue
from parley.server.store.rows import (
    EntryRow,
    StoredDoc,
    UsageRow,
    insert_usage_rows,
    lock_session,
    quota_limits,
    replace_usage_rows,
    usage_totals,
)
from parley.server.store.tables import client_tokens, doc_snapshots, doc_updates, sessions
from parley.server.store.update_log import squash
from parley.server.store.webhooks import Subscriptions
from parley.session.core import SideThread, ThreadTurn
from parley.session.core.effects import ThreadTurnStatus
from parley.session.errors import DuplicateCommand, SessionGone
from parley.session.events import SessionEvent
from parley.session.lifecycle import IllegalTransition, PromptStatus
from parley.session.presence import LeftClient
from parley.session.quota import Quotas
from parley.session.reasons import Ending
from parley.session.recent_acks import STORED_ACKS_KEPT_MS
from parley.session.webhook_events import webhook_data, webhook_types

# The unique (session, seq) of ``entries``, as SQLite and PostgreSQL name its violation.
_SEQ_TAKEN = re.compile(r"uq_entries_session_seq|entries\.session_id, entries\.seq")


@contextlib.contextmanager
def _seq_taken() -> Iterator[None]:
    """Around an entry's insert: the number the room allotted is taken (its count of them
    fell behind the store's), a refusal to send again (``SequenceMoved``), never a failed
    socket."""
    try:
        yield
    except IntegrityError as exc:
        if not _SEQ_TAKEN.search(str(exc.orig)):
            raise
        raise SequenceMoved(None) from exc


def _entry_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's insert values as ``COUNT_STORE_AND_INSERT`` names them."""
    return {
        "entry_id": values["id"],
        "entry_seq": values["seq"],
        "entry_kind": values["kind"],
        "entry_author": values["author"],
        "entry_command": values["command_id"],
        "entry_text": values["text"],
        "entry_status": values["status"],
        "entry_reason": values["reason"],
        "entry_reply": values["reply_id"],
        "entry_created": values["created_at"],
        "entry_started": values["started_at"],
        "entry_token": values["token_claims"],
    }


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class _Statements:
    """The transaction's connection as its writes use it (``StoreTx.connection``): the
    entry insert left for the transaction's last statement (``left_entry``: see
    ``StoreTx.insert_entry``) is run first if any other statement comes before it; the
    statements run are counted. (It holds no reference to its transaction: a cycle there
    left every write's objects to the garbage collector, whose pauses stall the loop.)"""

    def __init__(
        self,
        connection: AsyncConnection,
        direct: sqlite3.Connection | None,
        lease_locked: Callable[[str, int], None] | None = None,
    ) -> None:
        self._connection = connection
        self._direct = direct
        self._lease_locked = lease_locked
        self.left_entry: dict[str, Any] | None = None
        self.run = 0

    def lease_locked(self, session_id: str, xact: int) -> None:
        """This transaction (``xact``) locked ``session_id``'s lease row (``LeaseLocking``)."""
        if self._lease_locked is not None:
            self._lease_locked(session_id, xact)

    async def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        await self._before()
        if self._direct is not None and parameters is not None and not kwargs:
            plan = plan_for(statement, parameters, self._connection.dialect)
            if plan is not None:
                return plan.run(self._direct, parameters)
        return await self._connection.execute(statement, parameters, **kwargs)

    async def exec_driver_sql(self, *args: Any, **kwargs: Any) -> Any:
        await self._before()
        return await self._connection.exec_driver_sql(*args, **kwargs)

    async def insert_entry(self, values: dict[str, Any]) -> None:
        """Insert an entry now; ``DuplicateCommand`` if its author sent its command id
        before."""
        statement = command_statements.insert_entry(self._connection.dialect.name)
        with _seq_taken():
            inserted = (await self.execute(statement, values)).first()
        if inserted is None:
            raise DuplicateCommand(values["command_id"])

    async def _before(self) -> None:
        values, self.left_entry = self.left_entry, None
        if values is not None:  # (none left when the left entry's own insert runs)
            await self.insert_entry(values)
        self.run += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class StoreTx:
    """One database transaction; methods mirror the writes a session makes."""

    def __init__(
        self,
        connection: AsyncConnection,
        subscriptions: Subscriptions,
        direct: sqlite3.Connection | None = None,
        lease_locks: LeaseLocks | None = None,
    ) -> None:
        """``direct``: SQLite's own connection beneath ``connection``, in the same
        transaction, for the statements marked to run there (``direct_sqlite``);
        ``lease_locks``: told of each lease row it locks, and of its end (cluster mode)."""
        on_end: list[Callable[[], None]] = []
        locked = None
        if lease_locks is not None:

            def locked(session_id: str, xact: int) -> None:  # (no reference to ``self``)
                on_end.append(lease_locks.locked(session_id, xact))

        self._statements = _Statements(connection, direct, locked)
        self._connection = connection
        # Typed as the connection it stands for (it runs the same calls).
        self.connection: AsyncConnection = self._statements  # type: ignore[assignment]
        self.subscriptions = subscriptions
        # Webhook deliveries this transaction wrote: the sender is woken after the commit.
        self.outboxed = 0
        self.claimed = ClaimedSeqs()
        self.committed = False
        # PostgreSQL notifications to send with this transaction (each once, in order).
        self._notifications: dict[tuple[str, str], None] = {}
        self._on_end = on_end

    def when_ended(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction has ended, committed or rolled back (its
        locks released): the store calls it, however the transaction ends."""
        self._on_end.append(callback)

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """Around the transaction, from its start to its end (the store's): then the
        ``when_ended`` callbacks run, each once."""
        try:
            yield
        finally:
            callbacks = self._on_end[:]
            self._on_end.clear()  # (the list ``lease_locks`` appends to, not a new one)
            for callback in callbacks:
                callback()

    def notify(self, channel: str, payload: str) -> None:
        """Send ``payload`` on ``channel`` when this transaction commits (PostgreSQL's
        ``NOTIFY``); the notifications of a transaction go in one statement, just before
        its commit (``send_notifications``), however many writes asked for them."""
        self._notifications[(channel, payload)] = None

    async def send_notifications(self) -> None:
        """Hand this transaction's notifications to PostgreSQL, in one round trip (they
        are delivered when it commits). The store calls it before the commit."""
        if self._notifications:
            await self.connection.execute(command_statements.NOTIFY_ALL, self._take_notifications())

    def _take_notifications(self) -> dict[str, list[str]]:
        """The notifications queued so far, as a statement's parameters, taken off the
        queue (the statement that carries them sends them)."""
        pairs, self._notifications = list(self._notifications), {}
        return {"channels": [c for c, _ in pairs], "payloads": [p for _, p in pairs]}

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
            self.outboxed += await enqueue(
                self.connection, wanting, session_id, told, self.subscriptions.cap
            )

    async def token_revoked(self, session_id: str, token_id: str) -> bool:
        """(``SessionTx.token_revoked``.) One statement: on PostgreSQL it locks the session's
        row, then the token's, the order every revocation takes them in (``lock_session``,
        then the token's update), and answers the token as last committed (a locking read
        waits for a revocation under way and reads the row it leaves)."""
        found = await self.connection.execute(
            select(client_tokens.c.revoked_at)
            .select_from(sessions.join(client_tokens, client_tokens.c.session_id == sessions.c.id))
            .where(sessions.c.id == session_id, client_tokens.c.id == token_id)
            .with_for_update(of=[sessions, client_tokens], key_share=True)
        )
        row = found.first()
        return row is not None and row.revoked_at is not None

    async def revoke_link_tokens(
        self, session_id: str, now_ms: int, actor: str
    ) -> Sequence[TokenRow]:
        """(``SessionTx.revoke_link_tokens``.)"""
        await lock_session(self.connection, session_id)
        revoked = await revoke_by_stored(self.connection, [session_id], now_ms, actor)
        return revoked.get(session_id, [])

    def claim_seq(self, session_id: str, seq: int) -> None:
        """Claim ``seq``, the session's next sequence number, for an entry written here;
        ``append_events`` counts it."""
        self.claimed.claim(session_id, seq)

    async def append_events(
        self,
        session_id: str,
        at_ms: int,
        events: Sequence[SessionEvent],
        replies: Mapping[str, str | None] | None = None,
    ) -> list[int]:
        """Store ``events`` in this transaction with the session's next event numbers;
        returns them. The session's counters (the sequence number of the entry claimed
        here, and its events') move in one statement, whose row stays locked until the
        commit (PostgreSQL), so the numbers of one session follow the commit order
        whichever node writes: call it last.

        ``replies``: the text of each reply completed here by its id, None when it is
        restricted (``reply.completed`` webhooks carry it; the stored events never do)."""
        claimed = self.claimed.holds(session_id)
        if not events and not claimed:
            return []
        statements = command_statements
        if claimed and events:
            statement = statements.COUNT_ENTRY_AND_EVENTS
        else:
            statement = statements.COUNT_ENTRY if claimed else statements.COUNT_EVENTS
        # The subscriptions' version comes with the counters: no query of its own.
        parameters = {"session": session_id, **({"events": len(events)} if events else {})}
        found = (await self.connection.execute(statement, parameters)).first()
        data = [event.data() for event in events]
        first = self._counted(session_id, found, len(events))
        if events:
            await self.connection.execute(
                command_statements.INSERT_EVENTS,
                [
                    {
                        "session_id": session_id,
                        "seq": first + i,
                        "at_ms": at_ms,
                        "kind": event.kind,
                        "actor": event.actor,
                        "data": _json(data[i]),
                    }
                    for i, event in enumerate(events)
                ],
            )
        return await self._told(session_id, found, first, at_ms, events, data, replies)

    async def append_change(
        self,
        session_id: str,
        update: bytes,
        at_ms: int,
        events: Sequence[SessionEvent],
        replies: Mapping[str, str | None] | None = None,
        *,
        last: bool = False,
    ) -> tuple[int | None, list[int]]:
        """A write's document ``update`` (none if empty) and then ``append_events``: the
        update's id and the events' numbers. On PostgreSQL the update, the counters and
        the events are one statement (one round trip), with the entry left by
        ``insert_entry`` if there is one, which also sends the notifications queued so far
        (``notify``); call it last, as ``append_events``. ``last``: no statement follows
        it in this transaction; if none came before either, it runs as a transaction of
        its own (no BEGIN and COMMIT round trips: one in all for the write)."""
        counts = bool(events) or self.claimed.holds(session_id)
        if not update or not counts or self._connection.dialect.name != "postgresql":
            update_id = await self.append_update(session_id, update) if update else None
            return update_id, await self.append_events(session_id, at_ms, events, replies)
        data = [event.data() for event in events]
        parameters = {
            "session": session_id,
            "entries": int(self.claimed.holds(session_id)),
            "events": len(events),
            "update": update,
            "at_ms": at_ms,
            "kinds": [event.kind for event in events],
            "actors": [event.actor for event in events],
            "data": [_json(item) for item in data],
            "version": -1,
            **self._take_notifications(),
        }
        # PostgreSQL: the write's new entry, inserted by the statement that counts and
        # stores the write (one round trip) if no other statement came before.
        entry, self._statements.left_entry = self._statements.left_entry, None
        statement = command_statements.COUNT_AND_STORE
        if entry is not None:
            statement = command_statements.COUNT_STORE_AND_INSERT
            parameters.update(_entry_parameters(entry))
        # Alone only if no statement comes after it: none before, none queued after, and
        # no webhook delivery to write as of the subscriptions known here (the statement
        # stores nothing if they changed since: then again, in a transaction).
        types = [t for i, e in enumerate(events) for t in webhook_types(e.kind, data[i])]
        known = self.subscriptions.version_wanting_none(session_id, types)
        alone = None
        if last and self._statements.run == 0 and known is not None:
            alone = await self._unbegun()
        if alone is not None and types:
            parameters["version"] = known
        with _seq_taken():
            found = (await self._run(statement, parameters, alone)).first()
            if alone is not None and types and found[0] is None and found[2] != known:
                alone, parameters["version"] = None, -1
                found = (await self._run(statement, parameters)).first()
        if entry is not None:
            self._stored_entry(entry, found)
        if alone is not None and found[0] is not None:
            self.committed = True
        first = self._counted(session_id, found, len(events))
        numbers = await self._told(session_id, found, first, at_ms, events, data, replies)
        return int(found[3]), numbers

    async def _unbegun(self) -> Any:
        """The driver's connection, if nothing has begun on it (SQLAlchemy's asyncpg
        adapter sends BEGIN before the first statement of a transaction, and none in
        autocommit): a statement may run alone there. None otherwise, and for any other
        driver (whose autocommit this does not know)."""
        if self._connection.dialect.driver != "asyncpg":
            return None
        driver = (await self._connection.get_raw_connection()).dbapi_connection
        return driver if getattr(driver, "_transaction", True) is None else None

    async def _run(self, statement: Any, parameters: Any, alone: Any = None) -> Any:
        """Run ``statement`` and return its result; ``alone`` (an unbegun driver
        connection): as a transaction of its own (no BEGIN before it, and the commit after
        it sends nothing): what it stored is committed once it returns."""
        if alone is not None:
            alone.autocommit = True
        try:
            return await self._statements.execute(statement, parameters)
        finally:
            if alone is not None:
                alone.autocommit = False

    def _stored_entry(self, entry: Mapping[str, Any], found: Any) -> None:
        """``COUNT_STORE_AND_INSERT`` stored nothing unless the entry went in: say why."""
        if found[5] is not None:
            return
        if found[6]:
            raise DuplicateCommand(entry["command_id"])
        if found[7] is not None:  # the counter is not where the room thought
            self.claimed.forget(entry["session_id"])
            raise SequenceMoved(int(found[7]))
        raise SessionGone(entry["session_id"])

    def _counted(self, session_id: str, found: Any, events: int) -> int:
        """The counters as moved (``found``: last seq, last event seq, ...; None or NULL:
        no such session): check the claimed sequence number; the first of ``events``
        event numbers taken."""
        if found is None or found[0] is None:
            raise SessionGone(session_id)
        if self.claimed.holds(session_id):
            self.claimed.counted(session_id, int(found[0]))
        return int(found[1]) - events + 1

    async def _told(
        self,
        session_id: str,
        found: Any,
        first: int,
        at_ms: int,
        events: Sequence[SessionEvent],
        data: Sequence[dict[str, Any]],
        replies: Mapping[str, str | None] | None,
    ) -> list[int]:
        """The webhook deliveries of events stored from number ``first`` (``found`` holds
        the subscriptions' version, read with the counters); returns the events' numbers."""
        if not events:
            return []
        told = [
            (first + i, at_ms, told, webhook_data(told, data[i], replies or {}))
            for i, event in enumerate(events)
            for told in webhook_types(event.kind, data[i])
        ]
        await self.outbox(session_id, told, int(found[2]))
        return list(range(first, first + len(events)))

    async def insert_entry(self, row: EntryRow, *, last: bool = False) -> None:
        """Insert ``row``; ``DuplicateCommand`` if its author sent its command id before
        (the insert does nothing then, and the transaction stays usable).

        ``last`` (a command id not seen before, as far as the caller knows): on PostgreSQL
        the insert may be left to the write's last statement (``append_change``), which
        then does nothing else if the command id was sent before, or to just before the
        next other statement; the ``DuplicateCommand`` comes from there."""
        values = {
            "id": row.id,
            "session_id": row.session_id,
            "seq": row.seq,
            "kind": row.kind,
            "author": row.author,
            "command_id": row.command_id,
            "text": row.text,
            "status": row.status,
            "reason": row.reason,
            "reply_id": row.reply_id,
            "created_at": row.created_at,
            "started_at": row.started_at,
            "token_claims": row.token_claims,
        }
        left = self._statements
        if last and left.left_entry is None and self._connection.dialect.name == "postgresql":
            left.left_entry = values
            return
        await left.insert_entry(values)

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
        result = await self.connection.execute(
            command_statements.set_entry_status(status), {"entry": entry_id, **values}
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

    async def append_updates(
        self, rows: Sequence[tuple[str, bytes]], *, last: bool = False
    ) -> list[int]:
        """Several sessions' updates in one statement; their ids, in the order given.
        ``last``: no statement follows it in this transaction; if none came before either,
        it runs as a transaction of its own (PostgreSQL: one round trip in all)."""
        if not rows:
            return []
        statement, parameters = insert_updates(rows)
        alone = None
        if last and self._statements.run == 0:
            alone = await self._unbegun()
        result = await self._run(statement, parameters, alone)
        if alone is not None:
            self.committed = True
        return [int(row[0]) for row in result]

    async def write_snapshot(
        self, session_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        """Replace the snapshot and drop the updates it covers, in this transaction."""
        snapshot = {
            "session_id": session_id,
            "data": data,
            "last_update_id": last_update_id,
            "created_at": now,
        }
        await squash(self.connection, doc_snapshots, doc_updates, "session_id", snapshot)

    async def quotas(self, session_id: str) -> Quotas:
        return await quota_limits(self.connection, session_id)

    async def tokens_used(self, session_id: str, day: str) -> dict[str, int]:
        rows = await usage_totals(self.connection, session_id, day)
        return {user_id: tokens_in + tokens_out for user_id, tokens_in, tokens_out, _ in rows}

    async def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        await insert_usage_rows(self.connection, rows)

    async def replace_usage(self, rows: Sequence[UsageRow]) -> None:
        await replace_usage_rows(self.connection, rows)

    async def insert_audit(
        self, session_id: str, at: int, kind: str, actor: str, data: dict[str, Any]
    ) -> None:
        await insert_audit(self.connection, session_id, at, kind, actor, data)

    async def insert_command_ack(
        self, session_id: str, author: str, command_id: str, fingerprint: str, reply: str, now: int
    ) -> None:
        """Keep a command's ack (``command_acks``), and let go of the session's acks older
        than ``STORED_ACKS_KEPT_MS``; ``DuplicateCommand`` if its author sent the id before."""
        statement = command_statements.insert_command_ack(self._connection.dialect.name)
        values = {
            "session_id": session_id,
            "author": author,
            "command_id": command_id,
            "fingerprint": fingerprint,
            "reply": reply,
            "created_at": now,
        }
        if (await self.connection.execute(statement, values)).first() is None:
            raise DuplicateCommand(command_id)
        before = now - STORED_ACKS_KEPT_MS
        prune = command_statements.PRUNE_COMMAND_ACKS
        await self.connection.execute(prune, {"session_id": session_id, "before": before})

    async def insert_private(self, session_id: str, item: PrivateItem, now: int) -> None:
        await insert_private(self.connection, session_id, item, now)

    async def keep_left_clients(
        self, session_id: str, left: Sequence[LeftClient], now: int
    ) -> None:
        await left_clients.keep(self.connection, session_id, left, now)

    async def insert_thread(self, session_id: str, thread: SideThread) -> None:
        await thread_rows.insert_thread(self.connection, session_id, thread)

    async def set_thread_status(self, session_id: str, thread_id: str, status: str) -> None:
        await thread_rows.set_thread_status(self.connection, session_id, thread_id, status)

    async def delete_thread(self, session_id: str, thread_id: str) -> None:
        await thread_log.delete_log(self.connection, thread_id)
        await thread_rows.delete_thread(self.connection, session_id, thread_id)

    async def append_thread_updates(self, rows: Sequence[tuple[str, str, bytes]]) -> list[int]:
        return await thread_log.append(self.connection, rows)

    async def write_thread_snapshot(
        self, session_id: str, thread_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        await thread_log.write_snapshot(
            self.connection, session_id, thread_id, data, last_update_id, now
        )

    async def load_thread_doc(self, session_id: str, thread_id: str) -> StoredDoc:
        return await thread_log.load(self.connection, thread_id)

    async def insert_thread_turn(self, session_id: str, turn: ThreadTurn) -> None:
        await thread_rows.insert_turn(self.connection, session_id, turn)

    async def set_thread_turn_status(self, session_id: str, settle: ThreadTurnStatus) -> None:
        await thread_rows.set_turn_status(self.connection, settle)
