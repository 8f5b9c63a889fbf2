"""Frames written straight into uvicorn's WebSocket protocol, beneath ASGI.

Through ASGI a frame costs a task switch (the socket's sender task wakes), Starlette's
state checks and uvicorn's ``send`` coroutine; fanned out to hundreds of sockets per token,
that was most of the server's time. Under uvicorn's sans-I/O WebSocket protocol (the one
``parley serve`` runs) ``send`` does its work synchronously: it frames the message with the
``websockets`` protocol object and writes it to the transport. ``DirectWriter`` makes the
same two calls without the coroutine. Frames still go through the protocol object, so its
state (closing handshake, pings) stays right, and nothing is written once it is closing.

The frames a socket is sent in one turn of the event loop go to the transport in one
write, once the turn's callbacks have run (``flush``): a command's document update and
its ack were two writes, and each write to a socket is a system call that on loopback
also runs the receiving side's TCP (17% of the server's CPU under ``bench.webhook_load``).
Anything that writes past the writer flushes it first (``Connection.close``), so frames
keep their order; a socket that closed before the turn ended gets nothing more.

Under any other ASGI server ``beneath`` finds nothing and ``Connection`` keeps its outbox
and sender task. ``DirectSendMiddleware`` finds the protocol: the ``send`` callable an
ASGI server hands the app is that object's bound method.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.frames import Frame, Opcode
from websockets.protocol import State

SCOPE_KEY = "parley.direct_writer"


def binary_frame(payload: bytes) -> bytes:
    """A server's binary frame of ``payload`` (unmasked, no extension), as bytes."""
    return Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


# SO_LINGER on, zero seconds: closing sends a reset and the kernel frees the socket's
# buffers at once, instead of holding them while it keeps offering them to a dead peer.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class TurnFlush:
    """Calls each ``flush`` registered during a turn of the event loop once, after the
    turn's callbacks (one ``call_soon`` for all of them)."""

    __slots__ = ("_due", "_loop")

    def __init__(self) -> None:
        self._due: list[Callable[[], object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def later(self, flush: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        if not self._due or self._loop is not loop:
            # A list left by a loop that stopped before its turn ended is that loop's.
            self._due = []
            self._loop = loop
            loop.call_soon(self._run)
        self._due.append(flush)

    def _run(self) -> None:
        due, self._due = self._due, []
        for flush in due:
            flush()


TURN_FLUSH = TurnFlush()


class DirectWriter:
    __slots__ = ("_corked", "_protocol", "_unfinished", "_written", "backlogged")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        # Frames written this turn, not yet handed to the transport (``flush``).
        self._corked: list[bytes] | None = None
        self._written = 0  # bytes this writer handed to the transport
        # Where each frame the kernel has not wholly taken starts, in ``_written`` terms;
        # made at the first backlog (an empty deque is 0.7 kB, on every idle socket).
        self._unfinished: deque[int] | None = None
        # The kernel did not take all of the last write (so there is a backlog to watch).
        self.backlogged = False

    @classmethod
    def beneath(cls, send: Send) -> DirectWriter | None:
        """The writer for the protocol behind ``send``, if it is one this knows."""
        protocol = getattr(send, "__self__", None)
        conn = getattr(protocol, "conn", None)
        if not all(
            hasattr(protocol, name) for name in ("transport", "close_sent", "disconnected")
        ) or not all(hasattr(conn, name) for name in ("send_binary", "send_text", "data_to_send")):
            return None
        return cls(protocol)

    @property
    def open(self) -> bool:
        protocol = self._protocol
        return (
            protocol.conn.state is State.OPEN
            and not (protocol.disconnected or protocol.close_sent)
            and not protocol.transport.is_closing()
        )

    def write(self, message: bytes | str, frame: bytes | None = None) -> bool:
        """Frame ``message`` for the transport; False if the socket is closing. The frame
        waits for ``flush``, which the caller has called after the turn when ``corked``
        was false before the write (a turn's frames go in one write). ``frame``:
        ``message`` already framed (``binary_frame``), for a broadcast that frames once
        for every socket; used when the connection has no extension that would change
        the bytes (Parley turns compression off)."""
        if not self.open:
            return False
        conn = self._protocol.conn
        if frame is None or conn.extensions:
            if isinstance(message, bytes):
                conn.send_binary(message)
            else:
                conn.send_text(message.encode())
            frame = b"".join(conn.data_to_send())
        if self._corked is None:
            self._corked = [frame]
        else:
            self._corked.append(frame)
        return True

    @property
    def corked(self) -> bool:
        return self._corked is not None

    def flush(self) -> bool:
        """Hand this turn's frames to the transport in one write; False if the socket
        closed meanwhile (nothing goes after its close frame)."""
        corked, self._corked = self._corked, None
        if corked is None:
            return True
        if not self.open:
            return False
        frame = corked[0] if len(corked) == 1 else b"".join(corked)
        transport = self._protocol.transport
        transport.write(frame)
        self.backlogged = bool(transport.get_write_buffer_size())
        if self.backlogged:
            if self._unfinished is None:
                self._unfinished = deque()
            self._unfinished.append(self._written)
        else:
            self._unfinished = None
        self._written += len(frame)
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (the client is not reading), and
        this turn's."""
        return int(self._protocol.transport.get_write_buffer_size()) + self._corked_bytes()

    def _corked_bytes(self) -> int:
        return 0 if self._corked is None else sum(map(len, self._corked))

    def held(self) -> int:
        """Bytes the process holds for this socket: every frame the kernel has not wholly
        taken. (uvloop keeps a frame whole until its last byte is sent, so a 4 MiB sync
        the kernel took all but 300 KiB of still holds 4 MiB; asyncio keeps a copy of the
        rest, so this is at most a frame too many there.)"""
        buffered: int = self._protocol.transport.get_write_buffer_size()
        corked = self._corked_bytes()
        unfinished = self._unfinished
        if not buffered:
            self._unfinished = None
            return corked
        if not unfinished:  # only what the protocol wrote by itself (a ping) waits
            return buffered + corked
        taken = self._written - buffered
        while len(unfinished) > 1 and unfinished[1] <= taken:
            unfinished.popleft()
        return max(buffered, self._written - unfinished[0]) + corked

    def taken(self) -> int:
        """Grows as the kernel takes this writer's bytes (frames the protocol writes by
        itself, pings and the close frame, make it dip first)."""
        return self._written - int(self._protocol.transport.get_write_buffer_size())

    def backed_up(self) -> bool:
        """Past the transport's high-water mark: one more frame would wait for the client
        (a close sent through ASGI waits until the client has read the rest)."""
        transport = self._protocol.transport
        return bool(self.buffered() > transport.get_write_buffer_limits()[1])

    def abort(self) -> None:
        """Drop the connection and whatever is still buffered for it, in the process and
        in the kernel (a reset, not a close that waits for the client to read)."""
        self._corked = None
        transport = self._protocol.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        transport.abort()


class DirectSendMiddleware:
    """Puts a ``DirectWriter`` for each WebSocket in its scope (``SCOPE_KEY``), when the
    server's protocol allows one. Must see the server's own ``send``: install it outermost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = DirectWriter.beneath(send)
        await self.app(scope, receive, send)
