"""The committed session document as encoded updates, for answering sync step 1 (sans I/O).

A client's "send me what I lack" used to be answered from the live document under the
room's write lock (the live document may hold a change not yet committed), encoding the
whole document each time: four sockets asking in a loop kept the writer waiting. Here the
answer comes from bytes the server already holds: one full encoding, taken once, plus the
updates committed after it (each one the room broadcast anyway). The first client to ask
after a commit folds those into the full encoding (a merge costs about what the diff each
answer makes of the document costs): one sync step 2 holds everything committed, so a client
that counts itself synced on it (y-websocket's ``synced``, the SDKs' ``ready()``) holds the
committed document then, not its older part with the rest in the frames after (review).

Its ``size`` is what answering a new client (an empty state vector) sends: the measure a
session's size limit is judged by (``SessionView.document_bytes``), known without encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from pycrdt import Doc, get_state, get_update, merge_updates

from parley.session.yprotocol import (
    ProtocolError,
    SyncType,
    decode_state_vector,
    encode_sync,
    lists_more_clients,
)

EMPTY_STATE_VECTOR = b"\x00"
MIN_FOLD_BYTES = 64 * 1024
MAX_TAIL_UPDATES = 256
# Clients a state vector may list beyond the document's and still be read. A stock client
# lists those it got from the server and, once it wrote (refused: the server is the only
# writer), its own, one per Y.Doc. A vector listing more is answered as an empty one,
# unread: a client the document does not know changes nothing in the answer, and reading
# and diffing against 690,000 of them held the loop a third of a second a frame (review).
MAX_UNKNOWN_CLIENTS = 8


class EncodedDocument:
    """A committed document: ``full`` and the updates committed after it, in order."""

    def __init__(self, full: bytes) -> None:
        self.full = full
        self._tail: list[bytes] = []
        self._tail_bytes = 0
        self._clients: int | None = None  # of ``full``, counted when a client first asks

    @classmethod
    def stored(cls, snapshot: bytes | None, updates: Sequence[bytes]) -> EncodedDocument:
        """The copy of a document loaded from its ``snapshot`` (None: none) and the
        ``updates`` stored after it: their bytes as they are, folded into one at the first
        answer (its size known at once, the cost of an encoding paid when a client asks, as
        it would be for a copy taken then)."""
        encoded = cls(Doc().get_update() if snapshot is None else snapshot)
        for update in updates:
            encoded.committed(update)
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

    def answer(self, state_vector: bytes) -> bytes:
        """The sync step 2 answering a sync step 1 with ``state_vector``: everything
        committed that the client lacks, in one frame. A vector listing more than
        ``MAX_UNKNOWN_CLIENTS`` clients beyond the document's is answered as an empty one,
        its entries unread (the whole document, which Yjs applies idempotently). Raises
        ``ProtocolError`` for a state vector that does not decode."""
        full = self.update()
        if state_vector == EMPTY_STATE_VECTOR or lists_more_clients(
            state_vector, self.clients() + MAX_UNKNOWN_CLIENTS
        ):
            return encode_sync(SyncType.STEP2, full)
        try:
            return encode_sync(SyncType.STEP2, get_update(full, state_vector))
        except Exception as exc:  # pycrdt raises plain exceptions for corrupt input
            raise ProtocolError(f"bad state vector: {exc}") from None

    def clients(self) -> int:
        """How many clients wrote the committed document (the server's writers)."""
        full = self.update()
        if self._clients is None:
            self._clients = len(decode_state_vector(get_state(full)))
        return self._clients

    def update(self) -> bytes:
        """The whole committed document, as one update (the updates committed since the
        last call folded into it)."""
        if self._tail:
            self.full = merge_updates(self.full, *self._tail)
            self._tail = []
            self._tail_bytes = 0
            self._clients = None
        return self.full

    def _fold(self) -> None:
        if len(self._tail) > 1:
            self._tail = [merge_updates(*self._tail)]
            self._tail_bytes = len(self._tail[0])
        if self._tail_bytes > max(len(self.full) // 4, MIN_FOLD_BYTES):
            self.update()
