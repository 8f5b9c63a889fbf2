"""Frames written straight into uvicorn's WebSocket protocol, beneath ASGI.

Through ASGI a frame costs a task switch (the socket's sender task wakes), Starlette's
state checks and uvicorn's ``send`` coroutine; fanned out to hundreds of sockets per token,
that was most of the server's time. Under uvicorn's sans-I/O WebSocket protocol (the one
``parley serve`` runs) ``send`` does its work synchronously: it frames the message with the
``websockets`` protocol object and writes it to the transport. ``DirectWriter`` makes the
same two calls without the coroutine. Frames still go through the protocol object, so its
state (closing handshake, pings) stays right, and nothing is written once it is closing.

Under any other ASGI server ``beneath`` finds nothing and ``Connection`` keeps its outbox
and sender task. ``server.ws.socket_routes`` finds the protocol: the ``send`` callable an
ASGI server hands the app is that object's bound method.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from starlette.types import Send
from websockets.frames import Frame, Opcode
from websockets.protocol import State

SCOPE_KEY = "parley.direct_writer"


def binary_frame(payload: bytes) -> bytes:
    """A server's binary frame of ``payload`` (unmasked, no extension), as bytes."""
    return Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


# SO_LINGER on, zero seconds: closing sends a reset and the kernel frees the socket's
# buffers at once, instead of holding them while it keeps offering them to a dead peer.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class DirectWriter:
    __slots__ = ("_protocol", "_unfinished", "_written", "answered_at", "backlogged")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._written = 0  # bytes this writer handed to the transport
        # Where each frame the kernel has not wholly taken starts, in ``_written`` terms;
        # made at the first backlog (an empty deque is 0.7 kB, on every idle socket).
        self._unfinished: deque[int] | None = None
        # The kernel did not take all of the last write (so there is a backlog to watch).
        self.backlogged = False
        # When (the loop's clock) the client last answered a keep-alive ping, set by the
        # protocol (``uvicorn_protocol``): here, not on the protocol, whose attributes are
        # kept under 30 (its module docstring).
        self.answered_at = -math.inf

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
        """Frame ``message`` and hand it to the transport; False if the socket is closing.
        ``frame``: ``message`` already framed (``binary_frame``), for a broadcast that
        frames once for every socket; used when the connection has no extension that
        would change the bytes (Parley turns compression off)."""
        if not self.open:
            return False
        if frame is None or self._protocol.conn.extensions:
            frame = self._framed(message)
        self._put(frame)
        return True

    def write_frame(self, frame: bytes) -> bool:
        """``write`` of a message framed already (``binary_frame``), in one call: the
        fan-out's lean path (``server.ws.connection.broadcast``). False, with nothing
        written, where ``write`` has more to judge: an extension that changes the bytes, or
        a socket that is closing."""
        if self._protocol.conn.extensions or not self.open:
            return False
        self._put(frame)
        return True

    def write_together(self, messages: Sequence[bytes]) -> bool:
        """Frame each of ``messages`` and hand the frames to the transport in one write
        (nothing between them), held as one until the kernel took the last byte (``held``):
        a sync answer in several frames is counted as the one frame it was (review RE-1);
        False if the socket is closing."""
        if not self.open:
            return False
        self._put(b"".join(map(self._framed, messages)))
        return True

    def _framed(self, message: bytes | str) -> bytes:
        conn = self._protocol.conn
        if isinstance(message, bytes):
            conn.send_binary(message)
        else:
            conn.send_text(message.encode())
        return b"".join(conn.data_to_send())

    def _put(self, data: bytes) -> None:
        transport = self._protocol.transport
        transport.write(data)
        self.backlogged = bool(transport.get_write_buffer_size())
        if self.backlogged:
            if self._unfinished is None:
                self._unfinished = deque()
            self._unfinished.append(self._written)
        else:
            self._unfinished = None
        self._written += len(data)

    def keep_alive(self, message: bytes) -> None:
        """Send ``message`` beside each keep-alive ping (``PARLEY_WS_PING_INTERVAL_S``), if
        the protocol beneath sends pings of its own (``parley serve``'s does)."""
        if hasattr(self._protocol, "keepalive_message"):
            self._protocol.keepalive_message = message

    def meter_reading(self, meter: Any) -> bool:
        """Have the protocol beneath count what it reads against ``meter`` (an
        ``InboundMeter``) and pause reading past it; False if it cannot (not
        ``parley serve``'s)."""
        attach = getattr(self._protocol, "meter_reading", None)
        if attach is None:
            return False
        attach(meter)
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (the client is not reading)."""
        return int(self._protocol.transport.get_write_buffer_size())

    def held(self) -> int:
        """Bytes the process holds for this socket: every write (a frame, or a sync
        answer's frames together) the kernel has not wholly taken. (uvloop keeps a write
        whole until its last byte is sent, so a 4 MiB sync the kernel took all but 300 KiB
        of still holds 4 MiB; asyncio keeps a copy of the rest, so this is at most a write
        too many there.)"""
        buffered: int = self._protocol.transport.get_write_buffer_size()
        unfinished = self._unfinished
        if not buffered:
            self._unfinished = None
            return 0
        if not unfinished:  # only what the protocol wrote by itself (a ping) waits
            return buffered
        taken = self._written - buffered
        while len(unfinished) > 1 and unfinished[1] <= taken:
            unfinished.popleft()
        return max(buffered, self._written - unfinished[0])

    def taken(self) -> int:
        """Grows as the kernel takes this writer's bytes (frames the protocol writes by
        itself, pings and the close frame, make it dip first)."""
        return self._written - self.buffered()

    def backed_up(self) -> bool:
        """Past the transport's high-water mark: one more frame would wait for the client
        (a close sent through ASGI waits until the client has read the rest)."""
        transport = self._protocol.transport
        return bool(transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1])

    def abort(self) -> None:
        """Drop the connection and whatever is still buffered for it (``reset``)."""
        reset(self._protocol.transport)


def reset(transport: Any) -> None:
    """Drop a connection and whatever is still buffered for it, in the process and in the
    kernel: a reset, not a close that waits for the client to read."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()
