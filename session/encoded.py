"""The committed session document as encoded updates, for answering sync step 1 (sans I/O).

A client's "send me what I lack" used to be answered from the live document under the
room's write lock (the live document may hold a change not yet committed), encoding the
whole document each time: four sockets asking in a loop kept the writer waiting. Here the
answer comes from bytes the server already holds: the document as parts of at most about
``chunk_bytes`` each, plus the updates committed after them (each one the room broadcast
anyway). The first client to ask after a commit folds those into the parts (merged into the
last part while it has room, in commit order), so the answer holds everything committed.

It is sent as the parts, sync updates, then the sync step 2 with the last one: a stock
client that gets no whole message for 30 s starts over, and one frame of 16 MiB took longer
than that under 4.5 Mbit/s (review RE-1). The client counts itself synced on the step 2
(y-websocket's ``synced``, the SDKs' ``ready()``), so it then holds the committed document,
not an older part of it with the rest in the frames after (review R2-2). The parts are kept
cut: a join sends them as they are, and a client that holds part of the document is sent
each part's diff against its state vector (C speed, never a read of every struct in
Python). Only a stored snapshot, and an update larger than a part, are read struct by struct
to be cut (``parley.session.ysplit``), once: they are held whole (``uncut``) until the server
cuts them off its event loop (``cut``), or an answer needs them cut.

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
from parley.session.ysplit import split_update

EMPTY_STATE_VECTOR = b"\x00"
# An update of no structs and no deletions: what a part the client holds all of diffs to.
EMPTY_UPDATE = b"\x00\x00"
DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_TAIL_UPDATES = 256
# Clients a state vector may list beyond the document's and still be read. A stock client
# lists those it got from the server and, once it wrote (refused: the server is the only
# writer), its own, one per Y.Doc. A vector listing more is answered as an empty one,
# unread: a client the document does not know changes nothing in the answer, and reading
# and diffing against 690,000 of them held the loop a third of a second a frame (review).
MAX_UNKNOWN_CLIENTS = 8


class EncodedDocument:
    """A committed document: its parts and the updates committed after them, in order."""

    def __init__(self, full: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._tail: list[bytes] = [full]
        self._tail_bytes = len(full)
        # The parts larger than a part that are not cut yet (by id: the same object).
        self._uncut: dict[int, bytes] = {}
        self._clients: int | None = None  # of the parts, counted when a client first asks

    @classmethod
    def stored(
        cls,
        snapshot: bytes | None,
        updates: Sequence[bytes],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> EncodedDocument:
        """The copy of a document loaded from its ``snapshot`` (None: none) and the
        ``updates`` stored after it: their bytes as they are, cut and folded at the first
        answer (its size known at once, the cost paid when a client asks)."""
        encoded = cls(Doc().get_update() if snapshot is None else snapshot, chunk_bytes)
        encoded._tail.extend(updates)  # folded (the snapshot cut) at the first answer
        encoded._tail_bytes += sum(map(len, updates))
        return encoded

    @property
    def size(self) -> int:
        """The bytes a new client's sync is sent now (its frames' headers aside)."""
        return self._parts_bytes + self._tail_bytes

    def committed(self, update: bytes) -> None:
        """Record an update the moment it is committed (and broadcast). Folded once its
        updates pass a part's size or their count, however long nobody asks: each fold
        costs what was written since the last, and the last part (at most a part)."""
        self._tail.append(update)
        self._tail_bytes += len(update)
        if len(self._tail) > MAX_TAIL_UPDATES or self._tail_bytes > self.chunk_bytes:
            self._fold()

    def answer(self, state_vector: bytes) -> list[bytes]:
        """The frames answering a sync step 1 with ``state_vector``: everything committed
        that the client lacks, as sync updates of at most about ``chunk_bytes`` each (an
        item larger than that whole) and the sync step 2 last. A vector listing more than
        ``MAX_UNKNOWN_CLIENTS`` clients beyond the document's is answered as an empty one,
        its entries unread (the whole document, which Yjs applies idempotently). Raises
        ``ProtocolError`` for a state vector that does not decode."""
        parts = self.parts()
        if state_vector == EMPTY_STATE_VECTOR or lists_more_clients(
            state_vector, self.clients() + MAX_UNKNOWN_CLIENTS
        ):
            return sync_frames(parts)
        try:
            missing = [get_update(part, state_vector) for part in parts]
        except Exception as exc:  # pycrdt raises plain exceptions for corrupt input
            raise ProtocolError(f"bad state vector: {exc}") from None
        return sync_frames(_grouped([m for m in missing if m != EMPTY_UPDATE], self.chunk_bytes))

    def clients(self) -> int:
        """How many clients wrote the committed document (the server's writers)."""
        if self._tail:
            self._fold()
        if self._clients is None:
            known: set[int] = set()
            for part in self._parts:
                known.update(decode_state_vector(get_state(part)))
            self._clients = len(known)
        return self._clients

    def parts(self) -> list[bytes]:
        """The whole committed document as updates of at most about ``chunk_bytes`` each,
        in commit order (the updates committed since the last call folded into them, and
        whatever is still ``uncut`` cut here and now)."""
        for update in self.uncut():
            self.cut(update, split_update(update, self.chunk_bytes))
        return self._parts

    def uncut(self) -> list[bytes]:
        """The updates held whole that an answer must have cut (a stored snapshot, an
        update larger than a part): reading one struct by struct costs up to ~80 ns a
        byte, so the server cuts them off its event loop (``split_update``) and hands the
        parts to ``cut`` before it answers."""
        if self._tail:
            self._fold()
        return list(self._uncut.values())

    def cut(self, update: bytes, parts: list[bytes]) -> bool:
        """Put ``parts`` (``split_update`` of ``update``) in the place of ``update``,
        held uncut (the same bytes, not only the same object: a copy loaded again from
        the same snapshot takes a cut made for the one before). False if none is held."""
        held = self._uncut.pop(id(update), None)
        if held is None:
            held = next((u for u in self._uncut.values() if u == update), None)
            if held is None:
                return False
            del self._uncut[id(held)]
        at = next(n for n, part in enumerate(self._parts) if part is held)
        self._parts[at : at + 1] = parts
        self._parts_bytes += sum(map(len, parts)) - len(held)
        return True

    def update(self) -> bytes:
        """The whole committed document, as one update (nothing cut for it)."""
        if self._tail:
            self._fold()
        parts = self._parts
        return parts[0] if len(parts) == 1 else merge_updates(*parts)

    def _fold(self) -> None:
        """Fold the tail into the parts: merged into the last part while it has room, then
        into new parts; an update larger than a part a part of its own, ``uncut``."""
        updates = []
        if self._parts and len(self._parts[-1]) < self.chunk_bytes:
            last = self._parts.pop()
            self._parts_bytes -= len(last)
            updates.append(last)
        updates.extend(self._tail)
        self._tail = []
        self._tail_bytes = 0
        for part in _grouped(updates, self.chunk_bytes):
            self._parts.append(part)
            self._parts_bytes += len(part)
            if len(part) > self.chunk_bytes:
                self._uncut[id(part)] = part
        self._clients = None


def _grouped(updates: list[bytes], max_bytes: int) -> list[bytes]:
    """``updates`` (in order) merged in runs of at most ``max_bytes`` together (one larger
    alone); at least one update (an empty one for none)."""
    parts: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for update in updates:
        if group and size + len(update) > max_bytes:
            parts.append(group[0] if len(group) == 1 else merge_updates(*group))
            group, size = [], 0
        group.append(update)
        size += len(update)
    if group:
        parts.append(group[0] if len(group) == 1 else merge_updates(*group))
    return parts or [EMPTY_UPDATE]


def sync_frames(parts: list[bytes]) -> list[bytes]:
    """A sync answer's frames: every part but the last as a sync update, the last as the
    sync step 2 (a client counts itself synced on it: it must come after the rest)."""
    updates = [encode_sync(SyncType.UPDATE, part) for part in parts[:-1]]
    return [*updates, encode_sync(SyncType.STEP2, parts[-1])]
