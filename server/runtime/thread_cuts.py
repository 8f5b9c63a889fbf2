"""Sync answers from an encoded copy of a committed document (``session.encoded``), with
what it holds whole cut in a worker thread.

An update the copy holds whole (a stored snapshot, one update larger than a part) is read
struct by struct in Python to be cut (``split_update``): 14.9 MB of 60,000 short messages
held the event loop for 1.2 s of CPU (review RE-1). The session's writer and each
side-thread's document held for its sockets answer the same way: the cut made in a
thread, once, shared by every answer waiting for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from parley.session.encoded import EncodedDocument
from parley.session.ysplit import split_update


class ThreadCuts:
    """The cuts of one document's encoded copies, one at a time (``cut``)."""

    def __init__(self) -> None:
        # The cut under way in a thread: of which update, and its parts to come.
        self._cutting: tuple[bytes, asyncio.Future[list[bytes]]] | None = None

    async def cut(self, copy: Callable[[], EncodedDocument]) -> None:
        """Cut what the copy there is now (``copy()``) holds whole, in a thread; its
        parts go to the copy there is once the cut is done (the same bytes, if it was
        replaced meanwhile by one read again). ``ProtocolError`` for an update that does
        not decode (``split_update``)."""
        while uncut := copy().uncut():
            update = uncut[0]
            if self._cutting is None or self._cutting[0] is not update:
                work = asyncio.to_thread(split_update, update, copy().chunk_bytes)
                self._cutting = (update, asyncio.ensure_future(work))
            cutting = self._cutting
            try:
                parts = await asyncio.shield(cutting[1])
            finally:
                if self._cutting is cutting and cutting[1].done():
                    self._cutting = None
            # False if the copy was replaced meanwhile by one without it: cut its own next.
            copy().cut(update, parts)

    async def answer(self, copy: Callable[[], EncodedDocument], state_vector: bytes) -> list[bytes]:
        """The frames answering a sync step 1 with ``state_vector`` from the copy there is
        once cut (``EncodedDocument.answer``: ``ProtocolError`` for a state vector that
        does not decode)."""
        await self.cut(copy)
        return copy().answer(state_vector)
