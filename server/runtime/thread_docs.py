"""A side-thread's document, live on the node that runs its session, and what its owner's
sockets are sent of it.

The document (``session.core.thread_doc``) is built from the thread as stored when a
socket first opens it (with the run in flight, if any), then follows every change the
room makes to the thread: each change is one update, sent at once to the thread's sockets
alone. Clients only read it: their updates are judged (``ServerWrites``), never applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pycrdt import TransactionEvent

from parley.session.core.thread_doc import ThreadDocument
from parley.session.encoded import EMPTY_STATE_VECTOR
from parley.session.read_only import ServerWrites
from parley.session.yprotocol import ProtocolError, SyncType, encode_sync

Send = Callable[[str, bytes], None]  # (thread id, y-websocket message) to its sockets


class LiveThreadDoc:
    """The document of side-thread ``thread_id``; ``send`` reaches its sockets."""

    def __init__(
        self, thread_id: str, document: ThreadDocument, send: Send, max_delete_ranges: int
    ) -> None:
        self.thread_id = thread_id
        self.document = document
        self.send = send
        self.writes = ServerWrites(max_delete_ranges)
        self._captured: list[bytes] = []
        self._subscription: Any = document.doc.observe(self._capture)

    def _capture(self, event: TransactionEvent) -> None:
        self._captured.append(event.update)

    def change(self, mutate: Callable[[ThreadDocument], None]) -> None:
        """Change the document (``mutate``) and send what changed to the thread's sockets."""
        try:
            mutate(self.document)
        finally:
            captured, self._captured = self._captured, []
            state = self.document.doc.get_state()
            for update in captured:
                self.writes.committed(update, state)
                self.send(self.thread_id, encode_sync(SyncType.UPDATE, update))

    def sync_answer(self, state_vector: bytes) -> bytes:
        """The sync step 2 answering a client's step 1: what it lacks (``ProtocolError``
        for a state vector that does not decode)."""
        if state_vector == EMPTY_STATE_VECTOR:
            return encode_sync(SyncType.STEP2, self.document.doc.get_update())
        try:
            return encode_sync(SyncType.STEP2, self.document.doc.get_update(state_vector))
        except Exception as exc:  # pycrdt raises plain exceptions for corrupt input
            raise ProtocolError(f"bad state vector: {exc}") from None

    def is_noop(self, update: bytes) -> bool:
        return self.writes.is_noop(self.document.doc, update)
