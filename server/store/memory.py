"""The ``SessionStore`` port in memory: the store of the core and writer tests.

It keeps the database adapter's promises (``server.store.port``), checked against it by one
contract test: a transaction works on copies of the sessions it writes and puts them in
place only when its block ends without an exception, so a failed write leaves nothing and
a read never sees a write under way; transactions run one at a time, like SQLite's.

``unavailable``: while set (to why), every transaction and read is refused with
``Unavailable`` (a database that went away).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.store.access import AuditRow, DocumentRow, PrivateItem, TokenRow, ToolRow
from parley.server.store.counters import ClaimedSeqs
from parley.server.store.group_commit import GroupCommit
from parley.server.store.memory_access import MemoryAccess
from parley.server.store.rows import (
    EntryRow,
    MemberChange,
    MemberRow,
    SessionRow,
    StoredDoc,
    kept_name,
)
from parley.server.store.usage import UsageRow, UserUsage
from parley.session.core.thread_state import SideThread, ThreadTurn
from parley.session.errors import Conflict, DuplicateCommand, Unavailable
from parley.session.events import Membership, SessionEvent, StoredEvent, membership_event
from parley.session.lifecycle import IllegalTransition, PromptStatus, prompt_predecessors
from parley.session.quota import Quotas
from parley.session.reasons import Ending
from parley.session.summary import Summary
from parley.session.tokens import count_tokens

if TYPE_CHECKING:
    from parley.server.store.port import SessionStore


@dataclass(slots=True)
class _Session:
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

    def copy(self) -> _Session:
        return _Session(
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
        )


@dataclass(slots=True)
class _Tables:
    sessions: dict[str, _Session] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)
    tools: dict[str, ToolRow] = field(default_factory=dict)
    entry_sessions: dict[str, str] = field(default_factory=dict)  # entry id: its session
    last_update_id: int = 0
    last_audit_id: int = 0


class MemoryTx:
    """One transaction over ``_Tables``: the sessions it writes are copies until ``commit``."""

    def __init__(self, tables: _Tables) -> None:
        self._tables = tables
        self._written: dict[str, _Session] = {}
        self._entry_sessions: dict[str, str] = {}
        self.last_update_id = tables.last_update_id
        self.last_audit_id = tables.last_audit_id
        self.roles = dict(tables.roles)
        self.tools = dict(tables.tools)
        self.claimed = ClaimedSeqs()
        self.committed = False

    def session(self, session_id: str) -> _Session:
        """The session as this transaction writes it; ``LookupError`` if there is none."""
        written = self._written.get(session_id)
        if written is None:
            stored = self._tables.sessions.get(session_id)
            if stored is None:
                raise LookupError(session_id)
            written = self._written[session_id] = stored.copy()
        return written

    def create(self, row: SessionRow) -> None:
        if row.id in self._tables.sessions or row.id in self._written:
            raise Conflict(f"session {row.id!r} exists")
        self._written[row.id] = _Session(row)

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
        claimed = self.claimed.take(session_id)
        if not events and not claimed:
            return []
        s = self.session(session_id)
        if claimed:
            s.row = replace(s.row, last_seq=s.row.last_seq + claimed)
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

    async def insert_entry(self, row: EntryRow) -> None:
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

    async def append_updates(self, rows: Sequence[tuple[str, bytes]]) -> list[int]:
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

    async def insert_thread_turn(self, session_id: str, turn: ThreadTurn) -> None:
        threads = self.session(session_id).threads
        thread = threads[turn.thread_id]  # a foreign key: the thread must be there
        if any(t.id == turn.id for t in thread.turns):
            raise Conflict(f"side-thread turn {turn.id!r} exists")
        turns = sorted((*thread.turns, turn), key=lambda t: t.index)
        threads[thread.id] = replace(thread, turns=tuple(turns))

    async def set_thread_turn_status(
        self, session_id: str, turn_id: str, status: str, reason_code: str | None
    ) -> None:
        threads = self.session(session_id).threads
        for thread in list(threads.values()):
            if any(t.id == turn_id for t in thread.turns):
                turns = tuple(
                    replace(t, status=status, reason_code=reason_code) if t.id == turn_id else t
                    for t in thread.turns
                )
                threads[thread.id] = replace(thread, turns=turns)


class MemoryStore:
    """Every session's rows in memory (lost with the process)."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._writer = asyncio.Lock()
        self.group = GroupCommit(self)
        self.access = MemoryAccess(self)
        self.unavailable: str | None = None

    @asynccontextmanager
    async def transaction(
        self, what: str = "write", *, lock_timeout_s: float | None = None
    ) -> AsyncIterator[MemoryTx]:
        async with self._writer:
            if self.unavailable is not None:
                raise Unavailable(f"{self.unavailable}; nothing was stored")
            tx = MemoryTx(self._tables)
            yield tx
            tx.claimed.require_settled()
            tx.commit()
            tx.committed = True

    def _read(self, session_id: str) -> _Session | None:
        if self.unavailable is not None:
            raise Unavailable(self.unavailable)
        return self._tables.sessions.get(session_id)

    async def close(self) -> None:
        await self.group.close()

    # -- sessions and members (the admin's writes) -----------------------------------------

    async def create_session(
        self, session_id: str, title: str, policy: str, now: int
    ) -> SessionRow:
        row = SessionRow(session_id, title, now, 0, policy)
        async with self.transaction() as tx:
            tx.create(row)
        return row

    async def get_session(self, session_id: str) -> SessionRow | None:
        s = self._read(session_id)
        return None if s is None else s.row

    async def change_member(
        self,
        session_id: str,
        user_id: str,
        after: Member | None,
        now: int,
        judge: Callable[[MemberRow | None, MemberRow | None], Decision],
        actor_id: str | None = None,
        display_name: str | None = None,
    ) -> MemberChange:
        """As ``Store.change_member``."""
        async with self.transaction() as tx:
            s = tx.session(session_id)
            before = s.members.get(user_id)
            actor = None if actor_id is None else s.members.get(actor_id)
            decision = judge(before, actor)
            if not decision.allowed:
                return MemberChange(decision, before, before)
            row = None
            if after is None:
                s.members.pop(user_id, None)
            else:
                created, epoch = (
                    (now, secrets.token_hex(8))
                    if before is None
                    else (before.created_at, before.token_epoch)
                )
                grants, denials = tuple(sorted(after.grants)), tuple(sorted(after.denials))
                name = display_name if display_name is not None else kept_name(before)
                row = MemberRow(
                    session_id, user_id, after.role, created, grants, denials, epoch, name
                )
                s.members[user_id] = row

            def shown(m: MemberRow | None) -> Membership | None:
                return None if m is None else Membership(m.role, m.grants, m.denials)

            event = membership_event(user_id, shown(before), shown(row), actor_id or "admin")
            if event is not None and (before or row) is not None:
                await tx.append_events(session_id, now, [event])
            return MemberChange(decision, before, row)

    async def list_members(self, session_id: str) -> list[MemberRow]:
        s = self._read(session_id)
        rows = [] if s is None else list(s.members.values())
        return sorted(rows, key=lambda m: (m.created_at, m.user_id))

    # -- entries, events, the document, summaries -------------------------------------------

    async def entry_by_command(
        self, session_id: str, author: str, command_id: str
    ) -> EntryRow | None:
        s = self._read(session_id)
        entry_id = None if s is None else s.commands.get((author, command_id))
        return None if s is None or entry_id is None else s.entries[entry_id]

    async def entries_with_status(self, session_id: str, statuses: Sequence[str]) -> list[EntryRow]:
        s = self._read(session_id)
        rows = [] if s is None else [e for e in s.entries.values() if e.status in statuses]
        return sorted(rows, key=lambda e: e.seq)

    async def sessions_with_status(self, statuses: Sequence[str]) -> list[str]:
        return [
            session_id
            for session_id, s in self._tables.sessions.items()
            if any(e.status in statuses for e in s.entries.values())
        ]

    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        s = self._read(session_id)
        return [] if s is None else [e for e in s.events if e.seq > after_seq][:limit]

    async def load_doc(self, session_id: str) -> StoredDoc:
        s = self._read(session_id)
        updates = [] if s is None else [u for _, u in s.updates]
        return StoredDoc(None if s is None else s.snapshot, updates, len(updates))

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
        async with self.transaction() as tx:
            tx.session(session_id).summaries.append((summary, added))

    async def load_summaries(self, session_id: str) -> list[Summary]:
        s = self._read(session_id)
        found: list[Summary] = []
        covers: frozenset[str] = frozenset()
        for summary, added in [] if s is None else s.summaries:
            covers = covers | added
            found.append(replace(summary, covers=covers, tokens=count_tokens(summary.text)))
        return found

    # -- usage and quotas -----------------------------------------------------------------

    async def load_threads(self, session_id: str) -> list[SideThread]:
        s = self._read(session_id)
        if s is None:
            return []
        return sorted(s.threads.values(), key=lambda t: (t.created_at, t.id))

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        if rows:
            async with self.transaction() as tx:
                for row in rows:
                    tx.session(row.session_id).usage.append(row)

    async def usage_by_user(
        self, session_id: str, day: str, user_id: str | None = None
    ) -> list[UserUsage]:
        s = self._read(session_id)
        totals: dict[str, tuple[int, int, int]] = {}
        for row in [] if s is None else s.usage:
            if row.day == day and user_id in (None, row.user_id):
                i, o, n = totals.get(row.user_id, (0, 0, 0))
                totals[row.user_id] = (i + row.input_tokens, o + row.output_tokens, n + 1)
        return [UserUsage(u, *totals[u]) for u in sorted(totals)]

    async def quotas(self, session_id: str) -> Quotas:
        s = self._read(session_id)
        return Quotas() if s is None else s.quotas

    async def set_quotas(self, session_id: str, limits: Quotas) -> None:
        async with self.transaction() as tx:
            tx.session(session_id).quotas = limits


if TYPE_CHECKING:

    def _is_a_session_store(store: MemoryStore) -> SessionStore:
        return store  # mypy checks the adapter against the port here
