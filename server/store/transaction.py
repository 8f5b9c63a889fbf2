"""One write transaction of the database: the writes a session makes, as methods
(the ``SessionTx`` port, ``server.store.port``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store import command_statements, thread_log, thread_rows
from parley.server.store.access import insert_audit, insert_private
from parley.server.store.access_rows import PrivateItem
from parley.server.store.counters import ClaimedSeqs, SequenceMoved
from parley.server.store.group_commit import insert_updates
from parley.server.store.outbox import enqueue
from parley.server.store.rows import (
    EntryRow,
    StoredDoc,
    UsageRow,
    insert_usage_rows,
    quota_limits,
    usage_totals,
)
from parley.server.store.tables import doc_snapshots, doc_updates, sessions
from parley.server.store.update_log import squash
from parley.server.store.webhooks import Subscriptions
from parley.session.core import SideThread, ThreadTurn
from parley.session.errors import DuplicateCommand
from parley.session.events import SessionEvent
from parley.session.lifecycle import IllegalTransition, PromptStatus
from parley.session.quota import Quotas
from parley.session.reasons import Ending
from parley.session.webhook_events import webhook_data, webhook_types

# The unique (session, seq) of ``entries``, as SQLite and PostgreSQL name its violation.
_SEQ_TAKEN = re.compile(r"uq_entries_session_seq|entries\.session_id, entries\.seq")


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class StoreTx:
    """One database transaction; methods mirror the writes a session makes."""

    def __init__(self, connection: AsyncConnection, subscriptions: Subscriptions) -> None:
        self.connection = connection
        self.subscriptions = subscriptions
        # Webhook deliveries this transaction wrote: the sender is woken after the commit.
        self.outboxed = 0
        self.claimed = ClaimedSeqs()
        self.committed = False
        # PostgreSQL notifications to send with this transaction (each once, in order).
        self._notifications: dict[tuple[str, str], None] = {}

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
            self.outboxed += await enqueue(self.connection, wanting, session_id, told)

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
    ) -> tuple[int | None, list[int]]:
        """A write's document ``update`` (none if empty) and then ``append_events``: the
        update's id and the events' numbers. On PostgreSQL the update, the counters and
        the events are one statement (one round trip), which also sends the notifications
        queued so far (``notify``); call it last, as ``append_events``."""
        counts = bool(events) or self.claimed.holds(session_id)
        if not update or not counts or self.connection.dialect.name != "postgresql":
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
            **self._take_notifications(),
        }
        statement = command_statements.COUNT_AND_STORE
        found = (await self.connection.execute(statement, parameters)).first()
        first = self._counted(session_id, found, len(events))
        assert found is not None  # ``_counted`` raised otherwise
        numbers = await self._told(session_id, found, first, at_ms, events, data, replies)
        return int(found[3]), numbers

    def _counted(self, session_id: str, found: Any, events: int) -> int:
        """The counters as moved (``found``: last seq, last event seq, ...): check the
        claimed sequence number; the first of ``events`` event numbers taken."""
        if found is None:
            raise LookupError(session_id)
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

    async def insert_entry(self, row: EntryRow) -> None:
        """Insert ``row``; ``DuplicateCommand`` if its author sent its command id before
        (the insert does nothing then, and the transaction stays usable)."""
        statement = command_statements.insert_entry(self.connection.dialect.name)
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
        }
        try:
            inserted = (await self.connection.execute(statement, values)).first()
        except IntegrityError as exc:
            if not _SEQ_TAKEN.search(str(exc.orig)):
                raise
            # The number the room allotted is taken (its count of them fell behind the
            # store's): a refusal to send again, never a failed socket.
            raise SequenceMoved(None) from exc
        if inserted is None:
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

    async def insert_audit(
        self, session_id: str, at: int, kind: str, actor: str, data: dict[str, Any]
    ) -> None:
        await insert_audit(self.connection, session_id, at, kind, actor, data)

    async def insert_private(self, session_id: str, item: PrivateItem, now: int) -> None:
        await insert_private(self.connection, session_id, item, now)

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

    async def set_thread_turn_status(
        self, session_id: str, turn_id: str, status: str, reason_code: str | None
    ) -> None:
        await thread_rows.set_turn_status(self.connection, turn_id, status, reason_code)
