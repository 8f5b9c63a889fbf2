"""Frames written straight into uvicorn's WebSocket protocol, beneath ASGI.

Through ASGI a frame costs a task switch (the socket's sender task wakes), Starlette's
state checks and uvicorn's ``send`` coroutine; fanned out to hundreds of sockets per token,
that was most of the server's time. Under uvicorn's sans-I/O WebSocket protocol (the one
``parley serve`` runs) ``send`` does its work synchronously: it frames the message with the
``websockets`` protocol object and writes it to the transport. ``DirectWriter`` makes the
same two calls without the coroutine. Frames still go through the protocol object, so its
state (closing handshake, pings) stays right, and nothing is written once it is closing.

Under any other ASGI server ``beneath`` finds nothing and ``Connection`` keeps its outbox
and sender task. ``DirectSendMiddleware`` finds the protocol: the ``send`` callable an
ASGI server hands the app is that object's bound method.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.frames import Frame, Opcode
from websockets.protocol import State

SCOPE_KEY = "parley.direct_writer"


def binary_frame(payload: bytes) -> bytes:
    """A server's binary frame of ``payload`` (unmasked, no extension), as bytes."""
    return Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


class DirectWriter:
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

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
        conn = self._protocol.conn
        if frame is not None and not conn.extensions:
            self._protocol.transport.write(frame)
        else:
            if isinstance(message, bytes):
                conn.send_binary(message)
            else:
                conn.send_text(message.encode())
            self._protocol.transport.write(b"".join(conn.data_to_send()))
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (the client is not reading)."""
        return int(self._protocol.transport.get_write_buffer_size())

    def abort(self) -> None:
        """Drop the connection and whatever is still buffered for it."""
        self._protocol.transport.abort()


class DirectSendMiddleware:
    """Puts a ``DirectWriter`` for each WebSocket in its scope (``SCOPE_KEY``), when the
    server's protocol allows one. Must see the server's own ``send``: install it outermost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = DirectWriter.beneath(send)
        await self.app(scope, receive, send)
