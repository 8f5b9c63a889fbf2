"""A loaded session: its document, its queue, its sockets, and the one writer of both.

Every change to the document happens inside ``_writing()``: under the room's lock, in one
database transaction that stores the CRDT update (and the relational rows beside it), and
only after the commit is the update broadcast. If the commit fails, the in-memory document
is reloaded from the store, so nothing un-stored is ever shown to anyone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, TransactionEvent, merge_updates

from authz.roles import Capability, Role, may, may_cancel, require
from server.connection import Connection
from server.settings import Settings
from server.store import DuplicateCommand, EntryRow, Store, StoreTx
from session.commands import (
    CancelCommand,
    CommandError,
    Limits,
    MessageCommand,
    PromptCommand,
    ack,
    error_reply,
    parse_command,
)
from session.errors import Conflict, Forbidden, NotFound, ParleyError, QueueFull, Unavailable
from session.lifecycle import PromptStatus, ReplyStatus
from session.model import Usage
from session.presence import Presence
from session.queue import OrderingQueue, PendingPrompt, QueueLimits
from session.schema import MESSAGE_STATUS, EntryKind, SessionDocument
from session.yprotocol import (
    DeleteSet,
    SyncType,
    delete_set_of,
    encode_sync,
    is_noop_update,
    normalise_delete_set,
)

log = logging.getLogger("parley.room")

CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
RESTART_REASON = "interrupted: the server stopped while this prompt ran"


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Write:
    tx: StoreTx
    after_commit: list[Callable[[], object]] = field(default_factory=list)


class SessionRoom:
    def __init__(
        self,
        session_id: str,
        *,
        store: Store,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.settings = settings
        self.clock = clock
        self.limits = Limits(
            max_text_chars=settings.max_prompt_chars, max_frame_chars=settings.max_ws_message_bytes
        )
        self.queue = OrderingQueue(
            QueueLimits(settings.max_pending_per_user, settings.max_pending_per_session)
        )
        self.members: dict[str, Role] = {}
        self.connections: set[Connection] = set()
        self.doc = SessionDocument(Doc())
        self.presence = Presence(settings.max_awareness_state_bytes)
        self.refused_writes = 0
        self.wakeup = asyncio.Event()
        self.closed = False
        self.last_active = clock()
        self._lock = asyncio.Lock()
        self._captured: list[bytes] | None = None
        self._since_snapshot = 0
        self._deletes: DeleteSet | None = None
        self._subscription: Any = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- loading --------------------------------------------------------------------------

    async def load(self, title: str) -> None:
        """Restore the document from its update log and the queue from the entries table."""
        await self._load_doc()
        self.members = {
            m.user_id: Role(m.role) for m in await self.store.list_members(self.session_id)
        }
        if "session_id" not in self.doc.meta:
            async with self._writing():
                self.doc.init_meta(self.session_id, title)
        waiting = await self.store.entries_with_status(
            self.session_id, [PromptStatus.QUEUED.value, PromptStatus.RUNNING.value]
        )
        for row in waiting:
            if row.status == PromptStatus.RUNNING.value:
                await self.finish_prompt(
                    row.id,
                    PromptStatus.FAILED,
                    RESTART_REASON,
                    reply_status=ReplyStatus.INTERRUPTED,
                )
        self.queue = OrderingQueue(
            self.queue.limits,
            [
                PendingPrompt(row.id, row.seq, row.author)
                for row in waiting
                if row.status == PromptStatus.QUEUED.value
            ],
        )

    async def _load_doc(self) -> None:
        stored = await self.store.load_doc(self.session_id)
        doc: Doc[Any] = Doc()
        if stored.snapshot is not None:
            doc.apply_update(stored.snapshot)
        for update in stored.updates:
            doc.apply_update(update)
        if self._subscription is not None:
            self.doc.doc.unobserve(self._subscription)
        self.doc = SessionDocument(doc)
        self._subscription = doc.observe(self._capture)
        self._since_snapshot = stored.updates_since_snapshot
        self._deletes = None

    def _capture(self, event: TransactionEvent) -> None:
        if self._captured is None:
            raise RuntimeError("the session document changed outside a write")
        self._captured.append(event.update)

    # -- the one writer -------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[_Write]:
        """Serialize a change: store its rows and CRDT update, commit, then broadcast."""
        async with self._lock:
            captured: list[bytes] = []
            self._captured = captured
            try:
                async with self.store.transaction() as tx:
                    write = _Write(tx)
                    yield write
                    update = b""
                    if captured:
                        update = captured[0] if len(captured) == 1 else merge_updates(*captured)
                        await self._persist_update(tx, update)
            except BaseException:
                self._captured = None
                if captured:
                    # The change never reached the store: forget it, so nobody sees it.
                    await self._load_doc()
                raise
            self._captured = None
            for callback in write.after_commit:
                callback()
            if update:
                self._deletes = None
                self.broadcast(encode_sync(SyncType.UPDATE, update))
        self.last_active = self.clock()

    async def _persist_update(self, tx: StoreTx, update: bytes) -> None:
        update_id = await tx.append_update(self.session_id, update)
        self._since_snapshot += 1
        if self._since_snapshot >= self.settings.snapshot_every_updates:
            await tx.write_snapshot(
                self.session_id, self.doc.doc.get_update(), update_id, self.now_ms()
            )
            self._since_snapshot = 0

    def broadcast(self, message: bytes) -> None:
        for connection in list(self.connections):
            connection.send(message)

    # -- commands -------------------------------------------------------------------------

    async def handle_command(self, connection: Connection, frame: str) -> str:
        """Run one JSON command and return its single reply (ack or error)."""
        try:
            command = parse_command(frame, self.limits)
        except CommandError as exc:
            return error_reply(exc.command_id, exc)
        try:
            role = self.role_of(connection.user_id)
            if isinstance(command, PromptCommand):
                return await self.submit_prompt(connection.user_id, role, command)
            if isinstance(command, MessageCommand):
                return await self.post_message(connection.user_id, role, command)
            return await self.cancel(connection.user_id, role, command)
        except ParleyError as exc:
            return error_reply(command.id, exc)

    def role_of(self, user_id: str) -> Role:
        role = self.members.get(user_id)
        if role is None:
            raise Forbidden("you are not a member of this session")
        return role

    async def submit_prompt(self, user_id: str, role: Role, command: PromptCommand) -> str:
        require(role, Capability.PROMPT)
        entry_id = new_id()
        try:
            async with self._writing() as write:
                try:
                    self.queue.admit(user_id)
                except QueueFull:
                    previous = await self._previous_ack(user_id, command.id)
                    if previous is not None:
                        return previous
                    raise
                seq = await self._store_entry(
                    write.tx,
                    entry_id,
                    EntryKind.PROMPT,
                    user_id,
                    command.id,
                    command.text,
                    PromptStatus.QUEUED.value,
                )
                self.doc.add_prompt(
                    id=entry_id,
                    seq=seq,
                    author=user_id,
                    text=command.text,
                    created_at=self.now_ms(),
                )
                prompt = PendingPrompt(entry_id, seq, user_id)
                write.after_commit.append(lambda: self.queue.push(prompt))
        except DuplicateCommand:
            return await self._previous_ack_or_fail(user_id, command.id)
        self.wakeup.set()
        return ack(command.id, seq=seq, prompt_id=entry_id)

    async def post_message(self, user_id: str, role: Role, command: MessageCommand) -> str:
        require(role, Capability.POST_MESSAGE)
        entry_id = new_id()
        try:
            async with self._writing() as write:
                seq = await self._store_entry(
                    write.tx,
                    entry_id,
                    EntryKind.MESSAGE,
                    user_id,
                    command.id,
                    command.text,
                    MESSAGE_STATUS,
                )
                self.doc.add_message(
                    id=entry_id,
                    seq=seq,
                    author=user_id,
                    text=command.text,
                    created_at=self.now_ms(),
                )
        except DuplicateCommand:
            return await self._previous_ack_or_fail(user_id, command.id)
        return ack(command.id, seq=seq, message_id=entry_id)

    async def _store_entry(
        self,
        tx: StoreTx,
        entry_id: str,
        kind: EntryKind,
        author: str,
        command_id: str,
        text: str,
        status: str,
    ) -> int:
        seq = await tx.next_seq(self.session_id)
        await tx.insert_entry(
            EntryRow(
                id=entry_id,
                session_id=self.session_id,
                seq=seq,
                kind=kind.value,
                author=author,
                command_id=command_id,
                text=text,
                status=status,
                reason=None,
                reply_id=None,
                created_at=self.now_ms(),
            )
        )
        return seq

    async def _previous_ack(self, user_id: str, command_id: str) -> str | None:
        """The ack a resent command got the first time, if it was stored."""
        row = await self.store.entry_by_command(self.session_id, user_id, command_id)
        if row is None:
            return None
        if row.kind == EntryKind.PROMPT.value:
            return ack(command_id, seq=row.seq, prompt_id=row.id)
        return ack(command_id, seq=row.seq, message_id=row.id)

    async def _previous_ack_or_fail(self, user_id: str, command_id: str) -> str:
        previous = await self._previous_ack(user_id, command_id)
        if previous is None:
            raise Conflict(f"command id {command_id!r} is already in use")
        return previous

    async def cancel(self, user_id: str, role: Role, command: CancelCommand) -> str:
        if not self.doc.has_entry(command.prompt_id):
            raise NotFound(f"no prompt {command.prompt_id!r} in this session")
        entry = self.doc.entry(command.prompt_id)
        if entry.kind is not EntryKind.PROMPT:
            raise NotFound(f"{command.prompt_id!r} is not a prompt")
        if not may_cancel(role, issuer=user_id, author=entry.author):
            raise Forbidden("only the prompt's author or an owner may cancel it")
        reason = f"cancelled by {user_id}"
        async with self._writing() as write:
            if self.queue.is_pending(entry.id):
                await self._store_finish(write.tx, entry.id, PromptStatus.CANCELLED, reason)
                self.doc.finish_prompt(entry.id, PromptStatus.CANCELLED, reason)
                write.after_commit.append(lambda: self.queue.remove(entry.id))
                return ack(command.id, seq=entry.seq, prompt_id=entry.id)
        run = self.active_run
        if run is None or run.prompt.id != entry.id:
            status = self.doc.entry(entry.id).status
            raise Conflict(f"prompt {entry.id!r} is {status}; it can no longer be cancelled")
        await run.cancel(reason)
        return ack(command.id, seq=entry.seq, prompt_id=entry.id)

    # -- prompt lifecycle (used by the runner) --------------------------------------------

    active_run: ActiveRun | None = None

    async def _store_finish(
        self, tx: StoreTx, prompt_id: str, status: PromptStatus, reason: str | None
    ) -> None:
        await tx.set_entry_status(prompt_id, status.value, reason=reason, finished_at=self.now_ms())

    async def finish_prompt(
        self,
        prompt_id: str,
        status: PromptStatus,
        reason: str | None = None,
        *,
        reply_status: ReplyStatus | None = None,
        after_commit: Callable[[], object] | None = None,
    ) -> None:
        async with self._writing() as write:
            await self._store_finish(write.tx, prompt_id, status, reason)
            self.doc.finish_prompt(prompt_id, status, reason, reply_status=reply_status)
            if after_commit is not None:
                write.after_commit.append(after_commit)

    async def start_prompt(self, prompt: PendingPrompt, reply_author: str) -> str | None:
        """Mark the next prompt running and open its reply; None if it may not run."""
        reply_id = new_id()
        role = self.members.get(prompt.author)
        if role is None or not may(role, Capability.PROMPT):
            await self.finish_prompt(
                prompt.id,
                PromptStatus.FAILED,
                "forbidden: the author may no longer prompt in this session",
                after_commit=lambda: self.queue.remove(prompt.id),
            )
            return None
        async with self._writing() as write:
            await write.tx.set_entry_status(
                prompt.id,
                PromptStatus.RUNNING.value,
                reply_id=reply_id,
                started_at=self.now_ms(),
            )
            self.doc.start_reply(
                prompt_id=prompt.id,
                reply_id=reply_id,
                author=reply_author,
                created_at=self.now_ms(),
            )
            write.after_commit.append(lambda: self.queue.start(prompt.id))
        return reply_id

    async def append_reply(self, reply_id: str, text: str) -> None:
        async with self._writing():
            self.doc.append_reply_text(reply_id, text)

    # -- sync and awareness ---------------------------------------------------------------

    async def sync_step2_for(self, state_vector: bytes) -> bytes:
        """What a client lacks, from committed state only (taken under the write lock)."""
        async with self._lock:
            return encode_sync(SyncType.STEP2, self.doc.doc.get_update(state_vector))

    def is_noop(self, update: bytes) -> bool:
        """True when a client update would change nothing (clients may not write)."""
        state = self.doc.doc.get_state()
        if self._deletes is None:
            full = self.doc.doc.get_update()
            self._deletes = normalise_delete_set(delete_set_of(full, state))
        return is_noop_update(update, state, self._deletes)

    # -- membership -----------------------------------------------------------------------

    def set_member(self, user_id: str, role: Role | None) -> None:
        """Apply a membership change made over REST to live sockets."""
        if role is None:
            self.members.pop(user_id, None)
            for connection in list(self.connections):
                if connection.user_id == user_id:
                    connection.close(CLOSE_FORBIDDEN, "membership revoked")
            return
        self.members[user_id] = role
        for connection in self.connections:
            if connection.user_id == user_id:
                connection.role = role

    def is_idle(self) -> bool:
        return not self.connections and len(self.queue) == 0 and self.active_run is None


@dataclass(eq=False)
class ActiveRun:
    """The prompt running now, and the handle to stop it."""

    prompt: PendingPrompt
    reply_id: str
    task: asyncio.Task[Usage | None] | None = None
    cancel_reason: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def cancel(self, reason: str, wait_s: float = 5.0) -> None:
        """Stop the model call (its stream is closed) and wait until the reply is marked."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            if self.task is not None:
                self.task.cancel()
        try:
            async with asyncio.timeout(wait_s):
                await self.finished.wait()
        except TimeoutError:
            raise Unavailable("the run did not stop in time; try again") from None
