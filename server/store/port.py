"""The store as the session runtime sees it: the ``SessionStore`` port.

The room, its runner, the effect writer and the command door (``server.runtime``) use
exactly these methods, so they take any adapter: ``server.store.sessions.Store`` (SQLite or
PostgreSQL) or ``server.store.memory.MemoryStore`` (in memory; the core and writer tests).
Both keep the same promises, checked by one contract test (``tests/server/store``):

- a transaction commits all its writes or none (an exception leaves nothing behind);
- sequence numbers and event numbers are per session, one more each time, in commit order;
- an author's command id is stored once (``DuplicateCommand`` the second time);
- a prompt's status moves only as the lifecycle table allows (``IllegalTransition``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from parley.authz.policy import Readers
from parley.server.store.access_rows import DocumentRow, PrivateItem, TokenRow, ToolRow
from parley.server.store.rows import EntryRow, MemberRow, SessionRow, StoredDoc, UsageRow
from parley.server.store.usage import UserUsage
from parley.session.core.effects import ThreadTurnStatus
from parley.session.core.thread_state import SideThread, ThreadTurn
from parley.session.events import SessionEvent, StoredEvent
from parley.session.lifecycle import PromptStatus
from parley.session.presence import LeftClient
from parley.session.quota import Quotas
from parley.session.reasons import Ending
from parley.session.summary import Summary

if TYPE_CHECKING:
    from parley.server.store.group_commit import Outcome, Stored


class SessionTx(Protocol):
    """One write transaction: the writes a session makes."""

    # True once the transaction committed (what follows it, such as closing the connection,
    # may still be interrupted: the change is kept).
    committed: bool

    async def token_revoked(self, session_id: str, token_id: str) -> bool:
        """Whether client token ``token_id`` of the session is revoked as stored as of this
        transaction's commit: a revocation committed before it is seen, and one not yet
        committed comes after it (the session's row and the token's are locked to the
        commit, as a revocation locks them: PostgreSQL; SQLite has one writer at a time).
        An unknown token: False."""
        ...

    async def revoke_link_tokens(
        self, session_id: str, now_ms: int, actor: str
    ) -> Sequence[TokenRow]:
        """This transaction stored a reader list (text kept with its readers: a webhook
        tool's answer, say): revoke the session's tokens from members' links that its
        reader lists, as stored with it, leave refused (audited as ``actor``'s); returns
        them (``link_tokens.revoke_by_stored``; review RA-2)."""
        ...

    def claim_seq(self, session_id: str, seq: int) -> None:
        """Claim ``seq`` as the session's next sequence number, for an entry written in this
        transaction; ``append_events`` counts it (``SequenceMoved`` if it was not next)."""
        ...

    async def append_events(
        self,
        session_id: str,
        at_ms: int,
        events: Sequence[SessionEvent],
        replies: Mapping[str, str | None] | None = None,
    ) -> list[int]:
        """Store ``events`` with the session's next event numbers, and count the sequence
        number claimed in this transaction; returns the events' numbers. Call it last
        (``LookupError``: no such session)."""
        ...

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
        """A write's document ``update`` (none if empty), then ``append_events``: the
        update's id (None: none stored) and the events' numbers. Call it last (``last``:
        nothing follows it in the transaction)."""
        ...

    async def insert_entry(self, row: EntryRow, *, last: bool = False) -> None:
        """``DuplicateCommand`` if the author stored this command id before (nothing is
        written then, and the transaction stays usable). ``last``: the insert may wait for
        the write's last statement (``append_change``), which raises it then."""
        ...

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
        """``IllegalTransition`` unless the lifecycle table allows it from the row's status."""
        ...

    async def set_policy(self, session_id: str, policy: str) -> None: ...

    async def append_update(self, session_id: str, data: bytes) -> int: ...

    async def append_updates(
        self, rows: Sequence[tuple[str, bytes]], *, last: bool = False
    ) -> list[int]:
        """Several sessions' document updates; their ids (increasing), in the order given."""
        ...

    async def write_snapshot(
        self, session_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        """Replace the snapshot and drop the updates up to ``last_update_id``."""
        ...

    async def insert_audit(
        self, session_id: str, at: int, kind: str, actor: str, data: dict[str, Any]
    ) -> None: ...

    async def insert_private(self, session_id: str, item: PrivateItem, now: int) -> None: ...

    async def insert_command_ack(
        self, session_id: str, author: str, command_id: str, fingerprint: str, reply: str, now: int
    ) -> None:
        """Keep the ack of a command that stores no entry (or only side-thread rows:
        ``kept_as_ack``); ``DuplicateCommand`` if its author sent the id before. Acks older
        than ``STORED_ACKS_KEPT_MS`` may go."""
        ...

    async def keep_left_clients(
        self, session_id: str, left: Sequence[LeftClient], now: int
    ) -> None:
        """Keep which member each awareness client id of ``left`` was (``left_clients``),
        each replacing an older leaving of its client id, never a later one. The session's
        kept older than ``KEEP_LEFT_S`` (of ``now``, ms) may go, and of each member in
        ``left`` those past their newest ``MAX_LEFT_PER_MEMBER``. The transaction raises
        ``NotFound`` if the session was deleted meanwhile."""
        ...

    async def quotas(self, session_id: str) -> Quotas:
        """The session's quotas, read in this transaction (a run's start reads them)."""
        ...

    async def tokens_used(self, session_id: str, day: str) -> dict[str, int]:
        """Each member's tokens (input plus output) on ``day``, read in this transaction."""
        ...

    async def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        """Model calls' usage (a run's, stored with its finish); an estimated reply's only
        if it has no usage yet."""
        ...

    async def replace_usage(self, rows: Sequence[UsageRow]) -> None:
        """Model calls' usage counted by the node that made them, in place of what a
        recovery estimated for their replies."""
        ...

    # Side-threads (``session.core.threads``): rows beside the session, never in its document.
    async def insert_thread(self, session_id: str, thread: SideThread) -> None:
        """A new side-thread (its turns are inserted one by one)."""
        ...

    async def set_thread_status(self, session_id: str, thread_id: str, status: str) -> None: ...

    async def delete_thread(self, session_id: str, thread_id: str) -> None:
        """Remove a side-thread and its turns."""
        ...

    async def insert_thread_turn(self, session_id: str, turn: ThreadTurn) -> None: ...

    async def append_thread_updates(self, rows: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Side-threads' document updates (session id, thread id, update); their ids
        (increasing), in the order given."""
        ...

    async def write_thread_snapshot(
        self, session_id: str, thread_id: str, data: bytes, last_update_id: int, now: int
    ) -> None:
        """Replace the thread's snapshot and drop its updates up to ``last_update_id``."""
        ...

    async def load_thread_doc(self, session_id: str, thread_id: str) -> StoredDoc:
        """The thread's document as this transaction sees it (its own writes included)."""
        ...

    async def set_thread_turn_status(self, session_id: str, settle: ThreadTurnStatus) -> None:
        """A side-thread prompt's new status, with its ``reason_code`` and ``retry_at``."""
        ...


class Transactional(Protocol):
    def transaction(
        self,
        what: str = "write",
        *,
        lock_timeout_s: float | None = None,
        group_round: bool = False,
    ) -> AbstractAsyncContextManager[SessionTx]:
        """A write transaction; its faults surface as ``Unavailable``. Do not nest them.
        ``group_round``: a round of the group commit, which goes before the other writes
        waiting (``server.store.writer_turns``)."""
        ...


class UpdateGroup(Protocol):
    """Streamed document updates of many sessions, committed a round at a time
    (``server.store.group_commit.GroupCommit``)."""

    def submit(
        self,
        session_id: str,
        update: bytes,
        fence: Any,
        thread_id: str | None = None,
        on_stored: Stored | None = None,
    ) -> Outcome:
        """``thread_id``: the update is of that side-thread's document; ``on_stored``:
        called with its id once stored, before the waiter wakes."""
        ...


class RuntimeAccess(Protocol):
    """What the runtime reads and writes of permissions' rows."""

    async def private_items(self, session_id: str) -> list[PrivateItem]: ...

    async def revoked_tokens(self, session_id: str, now: int) -> dict[str, TokenRow]: ...

    async def audit(
        self, session_id: str, at: int, kind: str, actor: str, data: dict[str, Any]
    ) -> None: ...

    async def list_documents(self, session_id: str, *, texts: bool = True) -> list[DocumentRow]: ...

    async def get_document(self, session_id: str, document_id: str) -> DocumentRow | None: ...

    async def reader_lists(self, session_id: str) -> set[Readers]: ...

    async def list_roles(self) -> dict[str, frozenset[str]]: ...

    async def list_tools(self) -> list[ToolRow]: ...


class SessionStore(Transactional, Protocol):
    """The store of sessions, as the runtime uses it."""

    @property
    def access(self) -> RuntimeAccess: ...

    @property
    def group(self) -> UpdateGroup: ...

    # Whether a write's new entry may be left for its last statement (PostgreSQL:
    # ``SessionTx.insert_entry(last=True)``); elsewhere it is always inserted at once.
    leaves_entries: bool

    async def get_session(self, session_id: str) -> SessionRow | None: ...

    async def list_members(self, session_id: str) -> list[MemberRow]: ...

    async def get_member(self, session_id: str, user_id: str) -> MemberRow | None: ...

    async def entry_by_command(
        self, session_id: str, author: str, command_id: str
    ) -> EntryRow | None: ...

    async def entries_with_status(self, session_id: str, statuses: Sequence[str]) -> list[EntryRow]:
        """The session's entries in one of ``statuses``, by sequence number."""
        ...

    async def command_ids(self, session_id: str) -> list[tuple[str, str]]:
        """(author, command id) of every entry of the session, and of every command ack
        kept (``command_ack``)."""
        ...

    async def command_ack(
        self, session_id: str, author: str, command_id: str
    ) -> tuple[str, str] | None:
        """The fingerprint and the ack kept of ``author``'s command ``command_id`` that
        stored no entry (``SessionTx.insert_command_ack``), if kept."""
        ...

    async def left_clients(self, session_id: str, now: int) -> list[LeftClient]:
        """The session's awareness client ids that left within ``KEEP_LEFT_S`` of ``now``
        (ms), with their members (``SessionTx.keep_left_clients``), newest first, at most
        ``MAX_LEFT_KEPT``."""
        ...

    async def sessions_with_status(self, statuses: Sequence[str]) -> list[str]: ...

    async def events_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[StoredEvent]: ...

    async def load_doc(self, session_id: str) -> StoredDoc: ...

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
        """Keep ``summary``, which adds the entries ``added`` to the summary it extends
        (``summary.extends``; None: it starts a chain)."""
        ...

    async def load_threads(
        self,
        session_id: str,
        owner: str | None = None,
        *,
        thread_id: str | None = None,
        texts: bool = True,
    ) -> list[SideThread]:
        """The session's side-threads (``owner``'s alone, if named: what one member
        reads costs their own side-threads; ``thread_id``'s alone, if named), oldest
        first, each with its turns in order (their texts left out without ``texts``)."""
        ...

    async def load_thread_doc(self, session_id: str, thread_id: str) -> StoredDoc:
        """A side-thread's document: its snapshot and the updates after it."""
        ...

    async def load_summaries(self, session_id: str) -> list[Summary]:
        """Oldest first, each with everything it covers: what it added and what the
        summary it extends covers (``session.summary.chained``), as it was made."""
        ...

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        """Usage stored on its own (not with a run's finish): in place of an estimate."""
        ...

    async def usage_by_user(
        self, session_id: str, day: str, user_id: str | None = None
    ) -> list[UserUsage]: ...

    async def quotas(self, session_id: str) -> Quotas: ...

    async def set_quotas(self, session_id: str, limits: Quotas) -> None: ...
