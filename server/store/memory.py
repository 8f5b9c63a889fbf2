"""The ``SessionStore`` port in memory: the store of the core and writer tests.

It keeps the database adapter's promises (``server.store.port``), checked against it by one
contract test: a transaction works on copies of the sessions it writes and puts them in
place only when its block ends without an exception, so a failed write leaves nothing and
a read never sees a write under way; transactions run one at a time, like SQLite's.

``unavailable``: while set (to why), every transaction and read is refused with
``Unavailable`` (a database that went away).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.authz.tokens import ADMIN_ACTOR
from parley.server.store.group_commit import GroupCommit
from parley.server.store.memory_access import MemoryAccess
from parley.server.store.rows import (
    EntryRow,
    MemberChange,
    MemberRow,
    SessionRow,
    StoredDoc,
    UsageRow,
    check_added_name,
    check_name_free,
    check_room_for,
    kept_name,
    names_to_check,
)
from parley.server.store.usage import UserUsage
from parley.server.store.writer_turns import WriterTurns
from parley.session import presence
from parley.session.core.thread_state import SideThread
from parley.session.errors import Unavailable
from parley.session.events import Membership, StoredEvent, membership_event
from parley.session.presence import LeftClient
from parley.session.quota import Quotas
from parley.session.summary import Summary, chained

if TYPE_CHECKING:
    from parley.server.store.port import SessionStore


from parley.server.store.memory_tables import MemoryTables, MemoryTx, SessionRows


class MemoryStore:
    """Every session's rows in memory (lost with the process)."""

    def __init__(self) -> None:
        self._tables = MemoryTables()
        self._writer = WriterTurns()
        self.group = GroupCommit(self)
        self.leaves_entries = False
        self.access = MemoryAccess(self)
        self.unavailable: str | None = None

    @asynccontextmanager
    async def transaction(
        self,
        what: str = "write",
        *,
        lock_timeout_s: float | None = None,
        group_round: bool = False,
    ) -> AsyncIterator[MemoryTx]:
        await self._writer.acquire(round_=group_round)
        try:
            if self.unavailable is not None:
                raise Unavailable(f"{self.unavailable}; nothing was stored")
            tx = MemoryTx(self._tables)
            yield tx
            tx.claimed.require_settled()
            tx.commit()
            tx.committed = True
        finally:
            self._writer.release()

    def _read(self, session_id: str) -> SessionRows | None:
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
        distinct_name: bool = False,
        max_members: int | None = None,
        link_refusal: Any = None,
    ) -> MemberChange:
        """As ``Store.change_member`` (no client tokens here: ``link_refusal`` unused)."""
        async with self.transaction() as tx:
            s = tx.session(session_id)
            before = s.members.get(user_id)
            cap = max_members if after is not None and before is None else None
            # Every member is a candidate here (``members_named`` finds the few in SQL).
            named = [(m.user_id, m.display_name) for m in s.members.values()]
            authors: set[str] = set()
            if names_to_check(
                user_id, display_name, distinct_name=distinct_name, added=cap is not None
            ):
                authors = {e.author for e in s.entries.values()} - s.members.keys()
            if distinct_name:
                check_name_free(display_name, user_id, named, authors)
            if cap is not None:
                check_room_for(len(s.members), cap)
                check_added_name(user_id, display_name, named, authors, s.members.keys())
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

            event = membership_event(user_id, shown(before), shown(row), actor_id or ADMIN_ACTOR)
            if event is not None and (before or row) is not None:
                await tx.append_events(session_id, now, [event])
            return MemberChange(decision, before, row)

    async def get_member(self, session_id: str, user_id: str) -> MemberRow | None:
        s = self._read(session_id)
        return None if s is None else s.members.get(user_id)

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

    async def command_ids(self, session_id: str) -> list[tuple[str, str]]:
        s = self._read(session_id)
        return [] if s is None else [*s.commands, *s.acks]

    async def command_ack(
        self, session_id: str, author: str, command_id: str
    ) -> tuple[str, str] | None:
        s = self._read(session_id)
        kept = None if s is None else s.acks.get((author, command_id))
        return None if kept is None else (kept[0], kept[1])

    async def left_clients(self, session_id: str, now: int) -> list[LeftClient]:
        s = self._read(session_id)
        since = (now - round(presence.KEEP_LEFT_S * 1000)) / 1000
        kept = [] if s is None else [i for i in s.left.values() if i.at >= since]
        newest = sorted(kept, key=lambda i: (i.at, i.client_id), reverse=True)
        return newest[: presence.MAX_LEFT_KEPT]

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
        stored = [] if s is None else s.summaries
        return chained(stored)

    # -- usage and quotas -----------------------------------------------------------------

    async def load_threads(
        self,
        session_id: str,
        owner: str | None = None,
        *,
        thread_id: str | None = None,
        texts: bool = True,
    ) -> list[SideThread]:
        s = self._read(session_id)
        if s is None:
            return []
        mine = [
            t
            for t in s.threads.values()
            if (owner is None or t.owner == owner) and thread_id in (None, t.id)
        ]
        if not texts:
            mine = [replace(t, turns=tuple(replace(u, text="") for u in t.turns)) for t in mine]
        return sorted(mine, key=lambda t: (t.created_at, t.id))

    async def load_thread_doc(self, session_id: str, thread_id: str) -> StoredDoc:
        s = self._read(session_id)
        log = None if s is None else s.thread_logs.get(thread_id)
        return StoredDoc(None, [], 0) if log is None else log.stored()

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        if rows:
            async with self.transaction() as tx:
                await tx.replace_usage(rows)

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
