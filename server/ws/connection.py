"""One client socket: frames written straight to it, or a bounded outbox drained by one
sender task.

Under ``parley serve`` (uvicorn's sans-I/O WebSocket protocol) each frame is written to the
socket as it is sent (``server.ws.direct_send``); a client that stops reading backs up its
transport. Under another ASGI server it fills its outbox instead. Either way the bytes it
has not taken are bounded three times: per socket (``send_buffer_max_bytes``), across the
process (``send_buffer_total_max_bytes``) and in time (``send_stall_timeout_s``; see
``server.ws.send_budget``). A client past any of them is dropped: its backlog is freed at
once, the client reconnects and resyncs from the CRDT state, and nobody else waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from starlette.websockets import WebSocket, WebSocketState

from parley.authz.tokens import ClientClaims
from parley.server.http.retry_hint import close_reason, retry_reason
from parley.server.settings import Settings
from parley.server.ws.direct_send import DirectWriter
from parley.server.ws.inbound import InboundMeter
from parley.server.ws.send_budget import DropReason, SendBudget
from parley.session.closes import CloseCode
from parley.session.commands import error_reply
from parley.session.errors import ErrorCode, ParleyError
from parley.session.ratelimit import AbuseCounter, Cost, Rate, Spend, TokenBucket
from parley.session.yprotocol import encode_command_frame

log = logging.getLogger("parley.connection")

# The close reason a dropped client gets, when a close frame can still reach it.
DROP_REASONS = {
    DropReason.SOCKET_LIMIT: "slow consumer: send buffer full; resync on reconnect",
    DropReason.TOTAL_LIMIT: "server send buffers full; retry later",
    DropReason.STALLED: "slow consumer: stopped reading; resync on reconnect",
    DropReason.CLOSING: "slow consumer: closed with unread data",
}
# What the outbox holds: a message, or a sync answer's frames, sent one after another.
_Outgoing = bytes | str | tuple[bytes, ...]
# One message (not a sync answer's frames), as ``isinstance`` reads it: a tuple made once,
# where ``bytes | str`` would make a union at every write of the fan-out.
_ONE_MESSAGE = (bytes, str)
# The most a close waits for an ASGI server other than ``parley serve``'s to send it.
CLOSE_WAIT_S = 5.0


@functools.lru_cache(maxsize=64)
def _rate(per_second: float, burst: float) -> Rate:
    """One ``Rate`` (frozen) for every socket's bucket of the same settings."""
    return Rate(per_second, burst)


@dataclass(slots=True)
class ConnectionLimits:
    commands: TokenBucket
    updates: TokenBucket
    abuse: AbuseCounter
    # The one spend budgeted per socket rather than per member: full resyncs. A bucket, not
    # a ``Budgets`` by kind of spend for one kind (its two dictionaries and a key were
    # 0.5 kB on every socket; issue #22).
    syncs: TokenBucket

    @classmethod
    def from_settings(cls, settings: Settings, now: float) -> ConnectionLimits:
        syncs = _rate(settings.sync_requests_per_minute / 60, settings.sync_requests_burst)
        return cls(
            commands=TokenBucket(_rate(settings.commands_per_second, settings.commands_burst), now),
            updates=TokenBucket(_rate(settings.updates_per_second, settings.updates_burst), now),
            abuse=AbuseCounter(settings.abuse_refusals, settings.abuse_window_s),
            syncs=TokenBucket(syncs, now),
        )

    def cut_off(self, connection: Connection, why: str, now: float) -> bool:
        """Count a refusal of ``connection``'s frame; refused again and again (``abuse``),
        close it 4429 with ``why`` and when to come back (``retry_reason``: once the
        refusals that cut it off have left the window they are counted in; the SDKs
        reconnect then rather than never, stock clients take a 44xx as final whatever it
        says). True if it was closed."""
        if not self.abuse.refused(now):
            return False
        reason = retry_reason(why, self.abuse.window_s, ErrorCode.RATE_LIMITED)
        connection.close(CloseCode.ABUSE, reason)
        return True

    def allow(self, cost: Cost, now: float) -> bool:
        """Whether this socket's own budget allows ``cost`` (spends it if so); a spend not
        budgeted per socket is allowed here."""
        return cost.spend is not Spend.SYNC_REQUESTS or self.syncs.allow(now, cost.amount)


class CommandChannel(Enum):
    TEXT = "text"
    BINARY = "binary"


@dataclass(eq=False, slots=True)
class Connection:
    websocket: WebSocket
    user_id: str
    outbox_limit: int
    # Frames written as they are sent (``server.ws.direct_send``), in place of the outbox.
    direct: DirectWriter | None = None
    buffer_limit: int = 8 * 1024 * 1024
    # The process-wide budget of unsent bytes (None: this socket's own limits only).
    budget: SendBudget | None = None
    # How this socket last sent a command, and so how it gets JSON: text frames, or binary
    # command frames (``encode_command_frame``); None: a stock Yjs client that sent none,
    # which would fail on either, so it is sent no JSON at all.
    channel: CommandChannel | None = None
    awareness_ids: set[int] = field(default_factory=set)
    # Presence bytes this socket may send back free: stock clients echo every state they
    # are sent (``server.ws.admission.charged``); credited with what it is sent.
    echo_credit: int = 0
    echo_mark: int = 0  # the session's presence bytes sent when last credited
    echo_own_mark: int = 0  # its member's own states' bytes by then (no echo credit)
    told_no_presence: bool = False  # refused a state for lack of ``be_present`` (told once)
    told_not_an_object: bool = False  # refused a state that is no object (told once)
    told_read_only: bool = False  # refused a document update (told once)
    wrote: bool = False  # sent a document write, dropped (counted and logged once)
    told_presence_budget: bool = False  # a state past the presence budget (told once)
    # The token the socket was opened with (revoking it closes the socket).
    claims: ClientClaims | None = None
    limits: ConnectionLimits | None = None
    # Its member's budget of bytes read, where the handler counts them (``receive``):
    # under ``parley serve`` the protocol beneath does, and this is None.
    inbound: InboundMeter | None = None
    closed: bool = False
    close_code: CloseCode | None = None
    _reason: str = ""
    on_drop: Callable[[DropReason], None] | None = None
    # True once the socket is closed (or given up on); its ``reader`` is then stopped. Not
    # an ``asyncio.Event`` and a task waiting on it: those cost about 2 kB on every idle
    # socket.
    finished: bool = False
    dropped: DropReason | None = None
    _closer: asyncio.Task[None] | None = field(init=False, default=None)
    # Only without a direct writer: an idle socket under ``parley serve`` holds no queue
    # (an ``asyncio.Queue`` is about 3 kB even empty).
    _outbox: asyncio.Queue[_Outgoing | None] | None = field(init=False, default=None)
    _sender: asyncio.Task[None] | None = field(init=False, default=None)
    _queued_bytes: int = field(init=False, default=0)  # in the outbox
    _in_flight: int = field(init=False, default=0)  # handed to the ASGI server, not done
    _sent_bytes: int = field(init=False, default=0)  # through the ASGI server
    # The size of the sync answer still draining (``send_sync``): what follows it may
    # queue up to the socket's limit on top of it.
    _sync_allowance: int = field(init=False, default=0)
    _sync_end: int = field(init=False, default=0)  # ``taken()`` once the client has it all
    # The task running the socket's handler (``server.ws.admission.serve``), cancelled when
    # the connection finishes from our side: a slow or revoked client may never send the
    # frame that would end its read. ``reader_stopped``: that cancel was asked for.
    reader: asyncio.Task[object] | None = field(init=False, default=None)
    reader_stopped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.direct is None:
            self._outbox = asyncio.Queue(maxsize=self.outbox_limit)

    def start(self) -> None:
        if self.direct is None:
            self._sender = asyncio.create_task(self._drain(), name=f"sender:{self.user_id}")

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            if self.reader is not None:
                # On the loop's next pass, never from within the reader itself: a task that
                # cancels itself gets the cancel at its next await, wherever that is.
                asyncio.get_running_loop().call_soon(self._stop_reader)

    def _stop_reader(self) -> None:
        reader = self.reader
        if reader is not None:  # still in the handler (``serve`` clears it when it ends)
            self.reader_stopped = True
            reader.cancel()

    def send(self, message: bytes | str, frame: bytes | None = None) -> bool:
        """Send a message (``frame``: the same, framed already); False (and the socket is
        being dropped) if the client fell behind or the process cannot hold it."""
        return self._admit(len(message)) and self._write(message, frame)

    def _admit(self, size: int) -> bool:
        """Whether ``size`` more bytes (one message's, or a sync answer's frames together;
        their frames' headers aside) may go to this socket; if not, it is being dropped."""
        if self.closed:
            return False
        if self.direct is None:
            unsent = self._queued_bytes + self._in_flight
        else:  # the kernel took all of the last frame: nothing to look up
            unsent = self.direct.held() if self.direct.backlogged else 0
        # A frame into an empty backlog goes whatever its size (the first sync of a big
        # session is one answer); the process cap and the stall deadline still hold for it.
        if self._sync_allowance and (not unsent or self.taken() >= self._sync_end):
            self._sync_allowance = 0  # the client took the sync answer: the plain limit
        if unsent and unsent + size > self.buffer_limit + self._sync_allowance:
            self.drop(DropReason.SOCKET_LIMIT)
            return False
        return self.budget is None or self.budget.admit(self, size)

    def _write(self, message: bytes | str | Sequence[bytes], frame: bytes | None = None) -> bool:
        """Hand an admitted message to the socket (or its outbox): one message, or a sync
        answer's frames (a sequence), which go together and count as one until the last
        is taken."""
        budget = self.budget
        direct = self.direct
        if direct is not None:
            if isinstance(message, _ONE_MESSAGE):
                written = direct.write(message, frame)
            else:
                written = direct.write_together(message)
            if not written:  # the socket is closing under us
                self.closed = True
                self._finish()
                return False
            # Most frames go straight into the kernel: nothing to watch. A watched socket
            # that has drained is seen by the budget's next look.
            if budget is not None and direct.backlogged:
                budget.note(self)
            return True
        outbox = self._outbox
        assert outbox is not None  # there is one whenever there is no direct writer
        if not isinstance(message, _ONE_MESSAGE):
            message = tuple(message)
        try:
            outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.drop(DropReason.SOCKET_LIMIT)
            return False
        self._queued_bytes += _size(message)
        if budget is not None:
            budget.note(self)
        return True

    @property
    def answered_sync(self) -> bool:
        """Whether the socket was sent a sync answer (its first one makes it synced)."""
        return self._sync_end > 0

    def send_sync(self, frames: Sequence[bytes]) -> bool:
        """Send a sync answer's frames, which together may be as large as the document.
        They are judged together, as the one frame they were (review RE-1): the socket's
        limit and the process cap admit all of them or none (past the cap, a stalled socket
        goes first for the whole answer, not for the one frame that tips it over), they are
        handed over in one write, nothing between them (pycrdt, which the Python SDK uses,
        applied a live update that came between them wrongly), and they count as unsent
        until the last of them is taken, as the one frame did. While they drain,
        what follows them (presence, the session's updates) is held to the socket's limit
        on top of them, not counted against that limit with them (review: a stock client
        joining an 8 MiB session was dropped by the next frame, again at every retry)."""
        total = sum(map(len, frames))
        if not (self._admit(total) and self._write(frames)):
            return False
        self._sync_allowance = max(self._sync_allowance, total)
        self._sync_end = self.taken() + self.unsent()
        return True

    def unsent(self) -> int:
        """Bytes sent to this socket and not yet taken by its client (or its server)."""
        if self.direct is not None:
            return self.direct.held()
        return self._queued_bytes + self._in_flight

    def taken(self) -> int:
        if self.direct is not None:
            return self.direct.taken()
        return self._sent_bytes

    def drop(self, reason: DropReason) -> None:
        """Give up on a client that does not take what it is sent: its backlog is freed now
        and nothing waits for it. A close frame (1013, with the reason) goes only where it
        would not queue behind unread data; otherwise the connection is reset."""
        if self.dropped is None:
            self.dropped = reason
            log.warning(
                "slow consumer dropped",
                extra={"user_id": self.user_id, "reason": reason.value, "unsent": self.unsent()},
            )
            if self.on_drop is not None:
                self.on_drop(reason)
        if self.budget is not None:
            self.budget.forget(self)
        if not self.closed and self.unsent() == 0:
            self.close(CloseCode.TRY_AGAIN, DROP_REASONS[reason])
            return
        self.closed = True
        if self.close_code is None:
            self.close_code = CloseCode.TRY_AGAIN
            self._reason = DROP_REASONS[reason]
        if self.direct is not None:
            self.direct.abort()
            self._finish()
            return
        # The sender may be stuck writing to a client that does not read: abandon it, and
        # what it still had to send.
        if self._sender is not None:
            self._sender.cancel()
        outbox = self._outbox
        while outbox is not None and not outbox.empty():
            outbox.get_nowait()
        self._queued_bytes = self._in_flight = 0
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close_socket())

    def send_json(self, text: str) -> bool:
        """Send a JSON message on the socket's command channel; False if it has none."""
        if self.channel is None:
            return False
        if self.channel is CommandChannel.BINARY:
            return self.send(encode_command_frame(text))
        return self.send(text)

    def send_error(self, error: ParleyError) -> None:
        """Report an error that belongs to no command, to clients that read JSON."""
        self.send_json(error_reply(None, error))

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Close after what is already queued. The client has until the stall deadline to
        take it; one that is far behind already is dropped instead."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._reason = close_reason(reason)
        if self.direct is not None and self.direct.backed_up():
            # A close frame sent through ASGI would wait for the client to read the rest.
            self.drop(DropReason.CLOSING)
            return
        if self._sender is not None and self._outbox is not None:
            try:
                self._outbox.put_nowait(None)
            except asyncio.QueueFull:
                self.drop(DropReason.SOCKET_LIMIT)
            return
        self._closer = asyncio.get_running_loop().create_task(self._close_socket())

    async def _close_socket(self) -> None:
        try:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_WAIT_S):
                        await self.websocket.close(
                            self.close_code or CloseCode.NORMAL, self._reason
                        )
                if self.budget is not None and self.dropped is None:
                    self.budget.note(self)  # the close frame may wait behind a backlog
        finally:
            self._finish()

    async def _drain(self) -> None:
        outbox = self._outbox
        assert outbox is not None
        try:
            while True:
                message = await outbox.get()
                if message is None:
                    break
                size = _size(message)
                self._queued_bytes -= size
                self._in_flight = size  # a sync answer's frames: until the last went
                if isinstance(message, str):
                    await self.websocket.send_text(message)
                elif isinstance(message, bytes):
                    await self.websocket.send_bytes(message)
                else:
                    for frame in message:
                        await self.websocket.send_bytes(frame)
                self._in_flight = 0
                self._sent_bytes += size
        except Exception:
            self.closed = True
            self._finish()
            return
        await self._close_socket()

    async def wait_closed(self) -> None:
        # gather(return_exceptions=True) collects the tasks' own errors and cancellations
        # but still lets a cancellation of the caller through.
        tasks = [t for t in (self._sender, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def queued(self) -> int:
        return 0 if self._outbox is None else self._outbox.qsize()


def broadcast(connections: Iterable[Connection], message: bytes, frame: bytes) -> None:
    """Send ``message`` (``frame``: the same, framed once) to each of ``connections``, as
    ``Connection.send`` would, for less. A socket with nothing for ``send`` to judge (a
    direct writer whose kernel took all it was sent, no sync answer's allowance pending,
    room under the process's cap for the frame) is handed the frame in one call
    (``DirectWriter.write_frame``), and watched by the budget if the kernel did not take
    it all; every other socket, and one whose writer finds it closing, goes the whole way
    through ``send`` (its limit, the budget's ranking, the close codes). Per socket and
    frame that is a few attribute reads against ``send``'s seven calls (issue #22)."""
    size = len(message)
    for connection in connections:
        direct = connection.direct
        if direct is None or direct.backlogged or connection.closed or connection._sync_allowance:
            connection.send(message, frame)
            continue
        budget = connection.budget
        if (
            budget is not None and budget.total + size > budget.total_max_bytes
        ) or not direct.write_frame(frame):
            connection.send(message, frame)
        elif direct.backlogged and budget is not None:
            budget.note(connection)


def _size(message: _Outgoing) -> int:
    """The bytes of an outbox entry (a sync answer's frames together), headers aside."""
    return len(message) if isinstance(message, _ONE_MESSAGE) else sum(map(len, message))
