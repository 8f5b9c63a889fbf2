"""The committed session document as encoded updates, for answering sync step 1 (sans I/O).

A client's "send me what I lack" used to be answered from the live document under the
room's write lock (the live document may hold a change not yet committed), encoding the
whole document each time: four sockets asking in a loop kept the writer waiting. Here the
answer comes from bytes the server already holds: one full encoding, taken once, plus the
updates committed after it (each one the room broadcast anyway). Folding those updates
into the full encoding is paid by askers, at most once per quarter of the document's size
written, so answering costs little more than copying what is sent.

Its ``size`` is what answering a new client (an empty state vector) sends: the measure a
session's size limit is judged by (``SessionView.document_bytes``), known without encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from pycrdt import Doc, get_update, merge_updates

from parley.session.yprotocol import ProtocolError, SyncType, encode_sync

EMPTY_STATE_VECTOR = b"\x00"
MIN_FOLD_BYTES = 64 * 1024
MAX_TAIL_UPDATES = 256


class EncodedDocument:
    """A committed document: ``full`` and the updates committed after it, in order."""

    def __init__(self, full: bytes) -> None:
        self.full = full
        self._tail: list[bytes] = []
        self._tail_bytes = 0
        # Taken from a store's log: folded whole at the first answer, so a client's sync
        # step 2 is the document, not its snapshot with the log after it as updates.
        self._fold_whole = False

    @classmethod
    def stored(cls, snapshot: bytes | None, updates: Sequence[bytes]) -> EncodedDocument:
        """The copy of a document loaded from its ``snapshot`` (None: none) and the
        ``updates`` stored after it: their bytes as they are, folded into one at the first
        answer (its size known at once, the cost of an encoding paid when a client asks, as
        it would be for a copy taken then)."""
        encoded = cls(Doc().get_update() if snapshot is None else snapshot)
        for update in updates:
            encoded.committed(update)
        encoded._fold_whole = bool(encoded._tail)
        return encoded

    @property
    def size(self) -> int:
        """The bytes a new client's sync is sent now (its frames' headers aside)."""
        return len(self.full) + self._tail_bytes

    def committed(self, update: bytes) -> None:
        """Record an update the moment it is committed (and broadcast). Folding as they
        come keeps the copy within about 1.25 times the document, however long nobody
        asks; each fold costs what was written since the last, or a quarter of that."""
        self._tail.append(update)
        self._tail_bytes += len(update)
        if len(self._tail) > MAX_TAIL_UPDATES:
            self._fold()

    def answer(self, state_vector: bytes) -> list[bytes]:
        """The frames answering a sync step 1 with ``state_vector``: a sync step 2, then
        sync updates (Yjs applies updates idempotently, so a client may get a struct twice).
        Raises ``ProtocolError`` for a state vector that does not decode."""
        self._folded()
        if state_vector == EMPTY_STATE_VECTOR:
            payload = self.full
        else:
            try:
                payload = get_update(self.full, state_vector)
            except Exception as exc:  # pycrdt raises plain exceptions for corrupt input
                raise ProtocolError(f"bad state vector: {exc}") from None
        return [encode_sync(SyncType.STEP2, payload)] + [
            encode_sync(SyncType.UPDATE, update) for update in self._tail
        ]

    def update(self) -> bytes:
        """The whole committed document, as one update."""
        self._folded()
        return merge_updates(self.full, *self._tail) if self._tail else self.full

    def _folded(self) -> None:
        """Before the copy is read: folded as it goes, or whole after a load."""
        if self._fold_whole:
            self._fold_whole = False
            if self._tail:
                self.full = merge_updates(self.full, *self._tail)
                self._tail = []
                self._tail_bytes = 0
        self._fold()

    def _fold(self) -> None:
        if len(self._tail) > 1:
            self._tail = [merge_updates(*self._tail)]
            self._tail_bytes = len(self._tail[0])
        if self._tail_bytes > max(len(self.full) // 4, MIN_FOLD_BYTES):
            self.full = merge_updates(self.full, *self._tail)
            self._tail = []
            self._tail_bytes = 0
