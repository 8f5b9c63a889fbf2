"""The transcript as ``GET …/transcript`` answers it, encoded once per version of each entry.

Validating and encoding every entry on every read cost 60 ms of the event loop for a
session of 1,000 entries of 4 kB (review, "bounded": a viewer's burst of reads stalled
every other client for seconds). The document hands out the same ``Entry`` object until
the entry changes (``SessionDocument.entries``), so each entry's JSON is kept beside the
object it was made from, with the author's display name, and a read joins the pieces: the
entries that changed since the last read (a streaming reply) are encoded again, nothing
else. (A document changed by another node's update builds every ``Entry`` again: those are
compared by value, which costs far less than encoding them.) What members may read is the
same for all of them (the shared document's), so one copy per room serves every reader.

The first read of a long session encodes every entry: 20,000 of them held the loop about
a second (review RN-1), so the encoding gives the loop back every ``ENCODED_PER_TURN``
entries it encodes anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from parley.server.http.models import TranscriptEntryOut
from parley.session.entries import Entry, EntryKind

# Entries validated and encoded between two turns of the event loop (about 10 ms of it).
ENCODED_PER_TURN = 200


class TranscriptBody:
    """The encoded transcript of one room (``encode``), kept between reads."""

    __slots__ = ("_body", "_pieces")

    def __init__(self) -> None:
        # entry id -> (the entry as encoded, its author's name then, its JSON)
        self._pieces: dict[str, tuple[Entry, str | None, bytes]] = {}
        self._body = b""  # the last answer: handed out again while nothing changed

    @property
    def size(self) -> int:
        """The last answer's length: what the next one will be, about."""
        return len(self._body)

    async def encode(self, entries: Sequence[Entry], names: Mapping[str, str]) -> bytes:
        """``{"messages": [...]}`` of ``entries`` in order, as ``TranscriptOut``. Two reads
        at once each make the answer of the entries they were given."""
        kept = self._pieces
        pieces: dict[str, tuple[Entry, str | None, bytes]] = {}
        changed = len(entries) != len(kept) or not self._body
        encoded = 0
        for entry in entries:
            name = None if entry.kind is EntryKind.REPLY else names.get(entry.author)
            piece = kept.get(entry.id)
            if piece is None or piece[1] != name or (piece[0] is not entry and piece[0] != entry):
                out = TranscriptEntryOut.model_validate({**entry.to_json(), "author_name": name})
                piece = (entry, name, out.model_dump_json().encode())
                changed = True
                encoded += 1
                if encoded % ENCODED_PER_TURN == 0:
                    await asyncio.sleep(0)
            elif piece[0] is not entry:  # the same, read again: known by identity next time
                piece = (entry, name, piece[2])
            pieces[entry.id] = piece
        if changed:
            self._pieces = pieces
            self._body = b'{"messages":[' + b",".join(p[2] for p in pieces.values()) + b"]}"
        return self._body
