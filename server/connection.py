"""One client socket: frames written straight to it, or a bounded outbox drained by one
sender task.

Under ``parley serve`` (uvicorn's sans-I/O WebSocket protocol) each frame is written to the
socket as it is sent (``server.direct_send``); a client that stops reading backs up its
transport, and past ``send_buffer_max_bytes`` it is cut off. Under another ASGI server a
client that stops reading fills its outbox; past the limit it is disconnected with 1013
(try again later). Either way it reconnects and resyncs from the CRDT state, and nobody
else waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketState

from authz.tokens import ClientClaims
from server.direct_send import DirectWriter
from server.settings import Settings
from session.commands import error_reply
from session.errors import ParleyError
from session.ratelimit import AbuseCounter, Rate, TokenBucket

log = logging.getLogger("parley.connection")

CLOSE_SLOW_CONSUMER = 1013
CLOSE_GOING_AWAY = 1001


@dataclass(slots=True)
class ConnectionLimits:
    commands: TokenBucket
    updates: TokenBucket
    abuse: AbuseCounter

    @classmethod
    def from_settings(cls, settings: Settings, now: float) -> ConnectionLimits:
        return cls(
            commands=TokenBucket(Rate(settings.commands_per_second, settings.commands_burst), now),
            updates=TokenBucket(Rate(settings.updates_per_second, settings.updates_burst), now),
            abuse=AbuseCounter(settings.abuse_refusals, settings.abuse_window_s),
        )


@dataclass(eq=False)
class Connection:
    websocket: WebSocket
    user_id: str
    outbox_limit: int
    # Frames written as they are sent (``server.direct_send``), in place of the outbox.
    direct: DirectWriter | None = None
    buffer_limit: int = 8 * 1024 * 1024
    # Stock Yjs clients cannot parse text frames: send JSON only to a socket that sent some.
    speaks_json: bool = False
    awareness_ids: set[int] = field(default_factory=set)
    # The token the socket was opened with (revoking it closes the socket).
    claims: ClientClaims | None = None
    limits: ConnectionLimits | None = None
    closed: bool = False
    close_code: int | None = None
    _reason: str = ""
    on_overflow: Callable[[], None] | None = None
    # Set once the socket is closed (or given up on): the endpoint then stops reading.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _closer: asyncio.Task[None] | None = field(init=False, default=None)
    _outbox: asyncio.Queue[bytes | str | None] = field(init=False)
    _sender: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._outbox = asyncio.Queue(maxsize=self.outbox_limit)

    def start(self) -> None:
        if self.direct is None:
            self._sender = asyncio.create_task(self._drain(), name=f"sender:{self.user_id}")

    def send(self, message: bytes | str, frame: bytes | None = None) -> bool:
        """Send a message (``frame``: the same, framed already); False (and the socket is
        being closed) if the client fell behind."""
        if self.closed:
            return False
        if self.direct is not None:
            return self._write(self.direct, message, frame)
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._slow_consumer()
            return False
        return True

    def _write(self, direct: DirectWriter, message: bytes | str, frame: bytes | None) -> bool:
        if direct.buffered() > self.buffer_limit:
            self._slow_consumer()
            return False
        if not direct.write(message, frame):  # the socket is closing under us
            self.closed = True
            self.finished.set()
            return False
        return True

    def _slow_consumer(self) -> None:
        log.warning("slow consumer disconnected", extra={"user_id": self.user_id})
        if self.direct is None:
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer: resync on reconnect")
            return
        # Its backlog sits in the transport, ahead of where a close frame would go: drop
        # the connection with it (the client sees 1006, reconnects and resyncs).
        self.closed = True
        self.close_code = CLOSE_SLOW_CONSUMER
        if self.on_overflow is not None:
            self.on_overflow()
        self.direct.abort()
        self.finished.set()

    def send_error(self, error: ParleyError) -> None:
        """Report an error that belongs to no command, to clients that read JSON."""
        if self.speaks_json:
            self.send(error_reply(None, error))

    def close(self, code: int, reason: str = "") -> None:
        """Close after what is already queued; a slow consumer's backlog is dropped instead."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._reason = reason
        if code == CLOSE_SLOW_CONSUMER and self.on_overflow is not None:
            self.on_overflow()
        if code != CLOSE_SLOW_CONSUMER and self._sender is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait(None)
                return
        # The sender may be stuck writing to a client that does not read: abandon it.
        if self._sender is not None:
            self._sender.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._close_socket())

    async def _close_socket(self) -> None:
        try:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self.websocket.close(self.close_code or 1000, self._reason)
        finally:
            self.finished.set()

    async def _drain(self) -> None:
        try:
            while True:
                message = await self._outbox.get()
                if message is None:
                    break
                if isinstance(message, bytes):
                    await self.websocket.send_bytes(message)
                else:
                    await self.websocket.send_text(message)
        except Exception:
            self.closed = True
            self.finished.set()
            return
        await self._close_socket()

    async def wait_closed(self) -> None:
        # gather(return_exceptions=True) collects the tasks' own errors and cancellations
        # but still lets a cancellation of the caller through.
        tasks = [t for t in (self._sender, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def queued(self) -> int:
        return self._outbox.qsize()
