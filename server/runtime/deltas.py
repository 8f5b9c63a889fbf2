"""The model's text on its way to the document, in batches (``server.runtime.runner``; when
a batch is taken is ``session.pacing``'s rule)."""

from __future__ import annotations

import asyncio
import contextlib

MAX_BATCH_CHARS = 4096
DELTA_BUFFER = 1024


class Deltas:
    """The model's text on its way to the document: a bounded queue that tells when it
    holds a full batch, or the end of the stream (``None``)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=DELTA_BUFFER)
        self._chars = 0
        self._need = MAX_BATCH_CHARS  # queued characters that make the batch full
        self._ready = asyncio.Event()

    async def put(self, text: str | None) -> None:
        await self._queue.put(text)
        self._chars += len(text or "")
        if text is None or self._chars >= self._need:
            self._ready.set()

    def queued(self) -> bool:
        """True when text (or the end) is already waiting to be taken."""
        return not self._queue.empty()

    async def get(self) -> str | None:
        text = await self._queue.get()
        self._chars -= len(text or "")
        return text

    def take(self, parts: list[str], size: int) -> tuple[int, bool]:
        """Move what is queued into ``parts`` (``size`` characters so far), up to
        ``MAX_BATCH_CHARS`` in all; returns the new size, and whether the stream ended."""
        while size < MAX_BATCH_CHARS:
            try:
                more = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return size, False
            if more is None:
                return size, True
            self._chars -= len(more)
            parts.append(more)
            size += len(more)
        return size, False

    async def fill(self, seconds: float, size: int) -> bool:
        """Wait up to ``seconds`` for more text for a batch of ``size`` characters; True
        if the batch filled, or the stream ended, first."""
        self._need = MAX_BATCH_CHARS - size
        self._ready.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._ready.wait()
                return True
        return False
