"""Uvicorn's sans-I/O WebSocket protocol, leaner on every idle socket.

``parley serve`` holds thousands of idle sockets, and uvicorn's ``WebSocketsSansIOProtocol``
spends about 8 kB on each beyond the protocol object itself (bench:
``python -m bench.connection_memory``): an ``asyncio.Queue`` for received messages (four
deques of 0.7 kB each, though uvicorn pauses reading after every message, so it never holds
more than a few), an ``asyncio.Event`` for write flow control (one more deque) and the
handshake's request and response with their headers, kept for the socket's lifetime.
``LeanWebSocketProtocol`` is the same protocol with a one-reader mailbox and a flag-and-
future event in their place, and lets go of the handshake once it is done. Limits are
untouched: the size limit, pings, the close handshake and read pausing are uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class Mailbox:
    """What the protocol uses of ``asyncio.Queue``: ``put_nowait``, ``empty`` and ``get``
    for its one reader (the ASGI app's ``receive``). Unbounded, as uvicorn's queue is."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("a WebSocket's messages have one reader")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """What the protocol uses of ``asyncio.Event``; its future is made only while a writer
    waits (the transport paused writing), not on every socket."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = True
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Mailbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # Read only to answer the handshake (``handle_connect``, then ``send`` on accept).
            # The request's headers go too: websockets' parser keeps the request itself
            # for the socket's lifetime (a local of its suspended generator), and the
            # app reads the headers from the scope, which has its own copy.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]
