"""The in-memory store's rows: a session's (``SessionRows``), all of them (``MemoryTables``),
and one transaction over them (``MemoryTx``: it writes copies, put in place on commit)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from parley.server.store.access_rows import AuditRow, DocumentRow, PrivateItem, TokenRow, ToolRow
from parley.server.store.counters import ClaimedSeqs
from parley.server.store.rows import (
    EntryRow,
    MemberRow,
    SessionRow,
    StoredDoc,
    UsageRow,
)
from parley.session import presence
from parley.session.core.effects import ThreadTurnStatus
from parley.session.core.thread_state import SideThread, ThreadTurn
from parley.session.core.threads import settled
from parley.session.errors import Conflict, DuplicateCommand, SessionGone
from parley.session.events import SessionEvent, StoredEvent
from parley.session.lifecycle import IllegalTransition, PromptStatus, prompt_predecessors
from parley.session.presence import LeftClient
from parley.session.quota import Quotas
from parley.session.reasons import Ending
from parley.session.recent_acks import STORED_ACKS_KEPT_MS
from parley.session.summary import Summary

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True)
class ThreadLog:
    """A side-thread's document: its snapshot (with the id of the last update it covers)
    and the updates after it. Replaced, never changed, so a copy of the session shares it."""

    snapshot: bytes | None = None
    snapshot_id: int = 0
    updates: tuple[tuple[int, bytes], ...] = ()

    def stored(self, after: int = 0) -> StoredDoc:
        snapshot = self.snapshot if self.snapshot_id > after else None
        start = after if snapshot is None else max(after, self.snapshot_id)
        updates = [(i, u) for i, u in self.updates if i > start]
        last = updates[-1][0] if updates else start
        return StoredDoc(snapshot, [u for _, u in updates], len(updates), last)


@dataclass(slots=True)
class SessionRows:
    """One session's rows. A transaction writes a copy (``copy``), never these."""

    row: SessionRow
    last_event_seq: int = 0
    entries: dict[str, EntryRow] = field(default_factory=dict)
    commands: dict[tuple[str, str], str] = field(default_factory=dict)
    events: list[StoredEvent] = field(default_factory=list)
    updates: list[tuple[int, bytes]] = field(default_factory=list)
    snapshot: bytes | None = None
    summaries: list[tuple[Summary, frozenset[str]]] = field(default_factory=list)
    members: dict[str, MemberRow] = field(default_factory=dict)
    private: dict[str, PrivateItem] = field(default_factory=dict)
    audit: list[AuditRow] = field(default_factory=list)
    usage: list[UsageRow] = field(default_factory=list)
    quotas: Quotas = field(default_factory=Quotas)
    tokens: dict[str, TokenRow] = field(default_factory=dict)
    documents: dict[str, DocumentRow] = field(default_factory=dict)
    threads: dict[str, SideThread] = field(default_factory=dict)  # each with its turns
    thread_logs: dict[str, ThreadLog] = field(default_factory=dict)
    # (author, command id) -> (fingerprint, ack, written at) of commands with no entry.
    acks: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)
    # Awareness client id -> its latest leaving (``left_clients``).
    left: dict[int, LeftClient] = field(default_factory=dict)

    def copy(self) -> SessionRows:
        return SessionRows(
            self.row,
            self.last_event_seq,
            dict(self.entries),
            dict(self.commands),
            list(self.events),
            list(self.updates),
            self.snapshot,
            list(self.summaries),
            dict(self.members),
            dict(self.private),
            list(self.audit),
            list(self.usage),
            self.quotas,
            dict(self.tokens),
            dict(self.documents),
            dict(self.threads),
            dict(self.thread_logs),
            dict(self.acks),
            dict(self.left),
        )


@dataclass(slots=True)
class MemoryTables:
    sessions: dict[str, SessionRows] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)
    tools: dict[str, ToolRow] = field(default_factory=dict)
    entry_sessions: dict[str, str] = field(default_factory=dict)  # entry id: its session
    last_update_id: int = 0
    last_audit_id: int = 0


class MemoryTx:
    """One transaction over ``MemoryTables``: the sessions it writes are copies until ``commit``."""

    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables
        self._written: dict[str, SessionRows] = {}
        self._entry_sessions: dict[str, str] = {}
        self.last_update_id = tables.last_update_id
        self.last_audit_id = tables.last_audit_id
        self.roles = dict(tables.roles)
        self.tools = dict(tables.tools)
        self.claimed = ClaimedSeqs()
        self.committed = False

    def session(self, session_id: str) -> SessionRows:
        """The session as this transaction writes it; ``LookupError`` if there is none."""
        written = self._written.get(session_id)
        if written is None:
            stored = self._tables.sessions.get(session_id)
            if stored is None:
                raise SessionGone(session_id)
            written = self._written[session_id] = stored.copy()
        return written

    async def token_revoked(self, session_id: str, token_id: str) -> bool:
        stored = self._tables.sessions.get(session_id)
        token = None if stored is None else stored.tokens.get(token_id)
        return token is not None and token.revoked

    async def revoke_link_tokens(
        self, session_id: str, now_ms: int, actor: str
    ) -> Sequence[TokenRow]:
        return ()  # no tokens from links here: no invite is exchanged against this store

    def create(self, row: SessionRow) -> None:
        if row.id in self._tables.sessions or row.id in self._written:
            raise Conflict(f"session {row.id!r} exists")
        self._written[row.id] = SessionRows(row)

    def commit(self) -> None:
        tables = self._tables
        tables.sessions.update(self._written)
        tables.entry_sessions.update(self._entry_sessions)
        tables.last_update_id = self.last_update_id
        tables.last_audit_id = self.last_audit_id
        tables.roles = self.roles
        tables.tools = self.tools

    def claim_seq(self, session_id: str, seq: int) -> None:
        self.claimed.claim(session_id, seq)

    async def append_events(
        self,
        session_id: str,
        at_ms: int,
        events: Sequence[SessionEvent],
        replies: Mapping[str, str | None] | None = None,
    ) -> list[int]:
        claimed = self.claimed.holds(session_id)
        if not events and not claimed:
            return []
        s = self.session(session_id)
        if claimed:
            s.row = replace(s.row, last_seq=s.row.last_seq + 1)
            self.claimed.counted(session_id, s.row.last_seq)
        if not events:
            return []
        first = s.last_event_seq + 1
        for i, event in enumerate(events):
            data = json.loads(json.dumps(event.data()))  # as the database gives it back
            s.events.append(
                StoredEvent(session_id, first + i, at_ms, event.kind, event.actor, data)
            )
        s.last_event_seq += len(events)
        return list(range(first, first + len(events)))

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
        update_id = await self.append_update(session_id, update) if update else None
        return update_id, await self.append_events(session_id, at_ms, events, replies)

    async def insert_entry(self, row: EntryRow, *, last: bool = False) -> None:
        s = self.session(row.session_id)
        key = (row.author, row.command_id)
        if key in s.commands:
            raise DuplicateCommand(row.command_id)
        s.commands[key] = row.id
        s.entries[row.id] = row
        self._entry_sessions[row.id] = row.session_id

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
        allowed = {old.value for old in prompt_predecessors(status)}
        session_id = self._entry_sessions.get(entry_id) or self._tables.entry_sessions.get(entry_id)
        if session_id is not None:
            s = self.session(session_id)
            row = s.entries[entry_id]
            if row.status in allowed:
                reason = row.reason if ending is None else ending.reason
                reply_id = reply_id or row.reply_id
                s.entries[entry_id] = replace(
                    row, status=status.value, reason=reason, reply_id=reply_id
                )
                return
        raise IllegalTransition(f"prompt {entry_id} cannot become {status} from its row")

    async def set_policy(self, session_id: str, policy: str) -> None:
        s = self.session(session_id)
        s.row = replace(s.row, policy=policy)

    async def append_update(self, session_id: str, data: bytes) -> int:
        (update_id,) = await self.append_updates([(session_id, data)])
        return update_id

    async def append_updates(
        self, rows: Sequence[tuple[str, bytes]], *, last: bool = False
    ) -> list[int]:
        ids = []
        for session_id, data in rows:
            self.last_update_id += 1
            self.session(session_id).updates.append((self.last_update_id, data))
            ids.append(self.last_update_id)
        return ids

    async def write_snapshot(
        self, session_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        s = self.session(session_id)
        s.snapshot = data
        s.updates = [(i, u) for i, u in s.updates if i > last_update_id]

    async def insert_audit(
        self, session_id: str, at: int, kind: str, actor: str, data: dict[str, Any]
    ) -> None:
        self.last_audit_id += 1
        stored = json.loads(json.dumps(data))
        self.session(session_id).audit.append(AuditRow(self.last_audit_id, at, kind, actor, stored))

    async def insert_private(self, session_id: str, item: PrivateItem, now: int) -> None:
        self.session(session_id).private[item.entry_id] = item

    async def insert_command_ack(
        self, session_id: str, author: str, command_id: str, fingerprint: str, reply: str, now: int
    ) -> None:
        s = self.session(session_id)
        if (author, command_id) in s.acks:
            raise DuplicateCommand(command_id)
        before = now - STORED_ACKS_KEPT_MS
        s.acks = {k: v for k, v in s.acks.items() if v[2] >= before}
        s.acks[(author, command_id)] = (fingerprint, reply, now)

    async def keep_left_clients(
        self, session_id: str, left: Sequence[LeftClient], now: int
    ) -> None:
        """As ``StoreTx.keep_left_clients`` (in ms, as stored)."""
        s = self.session(session_id)
        for item in left:
            item = replace(item, at=round(item.at * 1000) / 1000)
            known = s.left.get(item.client_id)
            if known is None or known.at <= item.at:
                s.left[item.client_id] = item
        before = (now - round(presence.KEEP_LEFT_S * 1000)) / 1000
        newest = sorted(s.left.values(), key=lambda i: (i.at, i.client_id), reverse=True)
        named = {item.user_id for item in left}
        counted: dict[str, int] = {}
        for item in newest:
            counted[item.user_id] = counted.get(item.user_id, 0) + 1
            past = item.user_id in named and counted[item.user_id] > presence.MAX_LEFT_PER_MEMBER
            if item.at < before or past:
                del s.left[item.client_id]

    async def quotas(self, session_id: str) -> Quotas:
        s = self._written.get(session_id) or self._tables.sessions.get(session_id)
        return Quotas() if s is None else s.quotas

    async def tokens_used(self, session_id: str, day: str) -> dict[str, int]:
        s = self._written.get(session_id) or self._tables.sessions.get(session_id)
        used: dict[str, int] = {}
        for row in [] if s is None else s.usage:
            if row.day == day:
                used[row.user_id] = used.get(row.user_id, 0) + row.input_tokens + row.output_tokens
        return used

    async def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        counted = {
            (r.session_id, u.reply_id) for r in rows for u in self.session(r.session_id).usage
        }
        for row in rows:
            if not row.estimated or (row.session_id, row.reply_id) not in counted:
                self.session(row.session_id).usage.append(row)

    async def replace_usage(self, rows: Sequence[UsageRow]) -> None:
        for row in rows:
            usage = self.session(row.session_id).usage
            usage[:] = [u for u in usage if u.reply_id != row.reply_id]
        await self.insert_usage(rows)

    async def insert_thread(self, session_id: str, thread: SideThread) -> None:
        threads = self.session(session_id).threads
        if thread.id in threads:
            raise Conflict(f"side-thread {thread.id!r} exists")
        threads[thread.id] = replace(thread, turns=())

    async def set_thread_status(self, session_id: str, thread_id: str, status: str) -> None:
        threads = self.session(session_id).threads
        if thread_id in threads:
            threads[thread_id] = replace(threads[thread_id], status=status)

    async def delete_thread(self, session_id: str, thread_id: str) -> None:
        self.session(session_id).threads.pop(thread_id, None)
        self.session(session_id).thread_logs.pop(thread_id, None)

    async def append_thread_updates(self, rows: Sequence[tuple[str, str, bytes]]) -> list[int]:
        ids = []
        for session_id, thread_id, data in rows:
            s = self.session(session_id)
            if thread_id not in s.threads:  # a foreign key: the thread must be there
                raise LookupError(thread_id)
            self.last_update_id += 1
            log = s.thread_logs.get(thread_id, ThreadLog())
            updates = (*log.updates, (self.last_update_id, data))
            s.thread_logs[thread_id] = replace(log, updates=updates)
            ids.append(self.last_update_id)
        return ids

    async def write_thread_snapshot(
        self, session_id: str, thread_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        s = self.session(session_id)
        log = s.thread_logs.get(thread_id, ThreadLog())
        kept = tuple((i, u) for i, u in log.updates if i > last_update_id)
        s.thread_logs[thread_id] = ThreadLog(data, last_update_id, kept)

    async def load_thread_doc(self, session_id: str, thread_id: str) -> StoredDoc:
        return self.session(session_id).thread_logs.get(thread_id, ThreadLog()).stored()

    async def insert_thread_turn(self, session_id: str, turn: ThreadTurn) -> None:
        threads = self.session(session_id).threads
        thread = threads[turn.thread_id]  # a foreign key: the thread must be there
        if any(t.id == turn.id for t in thread.turns):
            raise Conflict(f"side-thread turn {turn.id!r} exists")
        turns = sorted((*thread.turns, turn), key=lambda t: t.index)
        threads[thread.id] = replace(thread, turns=tuple(turns))

    async def set_thread_turn_status(self, session_id: str, settle: ThreadTurnStatus) -> None:
        threads = self.session(session_id).threads
        for thread in list(threads.values()):
            if thread.turn(settle.turn_id) is not None:
                threads[thread.id] = settled(thread, settle)
