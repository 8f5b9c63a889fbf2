"""Uvicorn's sans-I/O WebSocket protocol, leaner on every idle socket.

``parley serve`` holds thousands of idle sockets, and uvicorn's ``WebSocketsSansIOProtocol``
spends about 8 kB on each beyond the protocol object itself (bench:
``python -m bench.connection_memory``): an ``asyncio.Queue`` for received messages (four
deques of 0.7 kB each, though uvicorn pauses reading after every message, so it never holds
more than a few), an ``asyncio.Event`` for write flow control (one more deque) and the
handshake's request and response with their headers, kept for the socket's lifetime.
``LeanWebSocketProtocol`` is the same protocol with a one-reader mailbox and a flag-and-
future event in their place, and lets go of the handshake once it is done.

Two more cuts (issue #22):

- *The object's own attributes.* uvicorn sets 38 on each protocol, 12 of them the same for
  every socket of a server (its config, app, loop, logger, the server's sets of
  connections and tasks, the ping settings; not its default headers, a new list every
  second for the date). Python keeps an object's attributes in a compact table whose keys
  its class shares only up to 30 names; from the 30th the object gets a whole dictionary
  of its own, 1.6 kB against 0.3 kB (measured: 1,000 objects with 29 attributes 329 kB,
  with 30 1,649 kB). Those 12 live once per server here (``PerServer``), so a socket's
  own are 28.
- *The keepalive's timers.* uvicorn sets a loop timer for every socket's next ping and
  another for its pong (about 300 B while pending, and the ping one always is). Here both
  wait in the half-second ticks the sockets' deadlines share (``server.ws.deadlines``).

Limits are uvicorn's (the size limit, pings and their timeout, the close handshake and read
pausing; a ping is sent and its pong awaited up to half a second late), with more: every
frame a client sends is counted (``server.ws.frame_limits``), a client's pings are rate
limited and their pongs wait behind a bounded backlog. And once admitted, a socket counts
the bytes it reads against its member's budget (``server.ws.inbound``), and stops reading
while the member is past it. Reading is then paused for either of two reasons, a message
the app has not taken yet (uvicorn's ``read_paused``) or the budget (the meter ``holds``
the socket), and resumes only when neither holds it. A ping sent while the member was held
back may wait behind the bytes the socket has not read: it counts as answered (``on_tick``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import resource
import struct
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame

from parley.server.http.error_body import error_body
from parley.server.ws.deadlines import ticks_of
from parley.server.ws.direct_send import SCOPE_KEY, DirectWriter, reset
from parley.server.ws.frame_limits import FrameLimitedProtocol
from parley.server.ws.inbound import InboundMeter
from parley.session.errors import BadRequest, ParleyError
from parley.session.ratelimit import Rate, TokenBucket

T = TypeVar("T")

log = logging.getLogger("parley.ws")

# What may wait for a client before a pong it is owed is dropped instead (bytes), and how
# often it may ping.
PONG_BACKLOG_BYTES = 64 * 1024
PING_RATE = Rate(per_second=1.0, burst=20)
# How long a connection may wait for its first request, a request's head may take to arrive,
# and then its body (``LeanHttpProtocol``).
IDLE_FIRST_S = 60.0
HEAD_TIMEOUT_S = 10.0
# A request head at most (its URL and headers; uvicorn's other parser, h11, allows 16 KiB).
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 256
# Requests a connection may queue behind the one being answered (HTTP pipelining): uvicorn
# queues every request of a read, and read on after each answer, so a client that wrote
# requests without reading the answers grew the server by hundreds of MB (review).
MAX_PIPELINED = 16


def _most_waiting() -> int:
    """How many connections may wait for a request head at once, process-wide: a quarter
    of the file descriptors the process may open (64 to 4,096)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if soft == resource.RLIM_INFINITY else max(64, min(4096, soft // 4))


MAX_WAITING = _most_waiting()


class HeadTooLarge(Exception):
    """Raised from the parser's callback: httptools stops, uvicorn answers 400 and closes."""


BODY_TIMEOUT_S = 30.0
MIN_BODY_RATE = 1024.0  # bytes a second, on average over a body's reading
# A body's pieces (what httptools calls back with: a chunk of a chunked body, or the part of
# one a read holds): past ``MAX_BODY_PIECES`` of under ``MIN_PIECE_BYTES`` on average, 400.
# The limits bound a body's bytes, and each piece costs a Python call: one-byte chunks
# ("1\r\na\r\n") cost a million calls a MiB (review RD-3).
MAX_BODY_PIECES = 1024
MIN_PIECE_BYTES = 64
# A request answered before its body ended: what more it sends is dropped for up to this
# long and this many bytes, then its connection is closed (``LeanHttpProtocol.linger``).
LINGER_S = 2.0
LINGER_BYTES = 64 * 1024 * 1024
_PONG_HEADER = b"\x8a"  # a server's pong frame: FIN and opcode 10, as websockets writes it


class Mailbox:
    """What the protocol uses of ``asyncio.Queue``: ``put_nowait``, ``empty`` and ``get``
    for its one reader (the ASGI app's ``receive``). Unbounded, as uvicorn's queue is.
    ``emptied``: called when ``get`` takes the last message (the protocol resumes reading).
    ``meter``: the budget of the bytes the socket reads, its member's, once admitted
    (here, not on the protocol, whose attributes are kept under 30: the module's
    docstring)."""

    __slots__ = ("_items", "_waiter", "emptied", "meter")

    def __init__(self, emptied: Callable[[], None] | None = None) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self.emptied = emptied
        self.meter: InboundMeter | None = None

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
        item = self._items.pop(0)
        if not self._items and self.emptied is not None:
            self.emptied()
        return item


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


class Served:
    """The attributes every socket of one server has alike, kept once (``PerServer``)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}


# One ``Served`` per uvicorn server (its ``ServerState``, which ``Served`` does not hold).
_SERVED: weakref.WeakKeyDictionary[ServerState, Served] = weakref.WeakKeyDictionary()


class PerServer(Generic[T]):
    """An attribute the protocol's ``__init__`` sets to the same value on every socket of a
    server: stored once on the socket's ``Served``, not in the socket's own attributes."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, protocol: Any, owner: type | None = None) -> T:
        value: T = protocol._served.values[self.name]
        return value

    def __set__(self, protocol: Any, value: T) -> None:
        current = protocol._served.values.setdefault(self.name, value)
        # ``is`` first: the server's set of connections compared by value is a walk of it.
        if current is not value and current != value:
            raise RuntimeError(f"{self.name} differs between sockets of one server")


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    # Set in uvicorn's ``__init__`` from the config, the server and the loop.
    config: PerServer[Config] = PerServer()
    app: PerServer[Any] = PerServer()
    loop: PerServer[asyncio.AbstractEventLoop] = PerServer()
    logger: PerServer[Any] = PerServer()
    root_path: PerServer[str] = PerServer()
    asgi_version: PerServer[Any] = PerServer()
    app_state: PerServer[dict[str, Any]] = PerServer()
    connections: PerServer[set[Any]] = PerServer()
    tasks: PerServer[set[asyncio.Task[None]]] = PerServer()
    close_timeout: PerServer[float] = PerServer()
    ping_interval: PerServer[float | None] = PerServer()
    ping_timeout: PerServer[float | None] = PerServer()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        served = _SERVED.get(server_state)
        if served is None:
            served = _SERVED[server_state] = Served()
        self._served = served
        self._beat: int | None = None  # the tick of the next ping, or of its pong's deadline
        # Sent beside every ping (``DirectWriter.keep_alive``): a stock Yjs client counts
        # only messages, not pings, and drops a socket silent for 30 s.
        self.keepalive_message: bytes | None = None
        super().__init__(config, server_state, app_state, _loop)
        conn = self.conn  # uvicorn's, made as uvicorn makes it: the same again, counting frames
        self.conn = FrameLimitedProtocol(
            extensions=conn.available_extensions,
            max_size=(conn.max_message_size, conn.max_fragment_size),
            logger=conn.logger,
        )
        self.queue = Mailbox(self._resume_reading)  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]

    def receive(self) -> Coroutine[Any, Any, Any]:
        # uvicorn's ``receive`` awaits the queue, then resumes reading once it is empty; the
        # mailbox does both (``emptied``), and its coroutine is awaited in this one's place:
        # one frame fewer waiting on every idle socket.
        return self.queue.get()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        # The app is done with the socket: its cycles (the writer in the scope, the
        # mailbox's wake-up) are broken, so its objects go now, not at the collector's
        # next pass, which stops the loop for every socket (a reconnect storm).
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope.pop(SCOPE_KEY, None)
        mailbox: Mailbox = self.queue  # type: ignore[assignment]
        mailbox.emptied = None

    def _resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self._held_back():
                self.transport.resume_reading()

    # The member's budget of bytes read (``server.ws.inbound``).

    def meter_reading(self, meter: InboundMeter) -> None:
        """Count what this socket reads from now on against ``meter`` (its member's)."""
        mailbox: Mailbox = self.queue  # type: ignore[assignment]
        mailbox.meter = meter

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        meter: InboundMeter | None = self.queue.meter  # type: ignore[attr-defined]
        if meter is not None and meter.over(len(data)) and not self.transport.is_closing():
            # What was read is handled; the rest waits in the kernel, and then the client.
            self.transport.pause_reading()
            meter.hold(self)

    def _held_back(self) -> bool:
        meter: InboundMeter | None = self.queue.meter  # type: ignore[attr-defined]
        return meter is not None and meter.holds(self)

    def release_reading(self) -> None:
        """The member's budget is paid back: read on, unless a message waits for the app.
        The time it was held does not count against the idle timeout."""
        transport = self.transport
        if not self.read_paused and not transport.is_closing():
            transport.resume_reading()
        writer = self.scope.get(SCOPE_KEY)
        if isinstance(writer, DirectWriter):
            writer.answered_at = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        meter: InboundMeter | None = self.queue.meter  # type: ignore[attr-defined]
        if meter is not None:
            meter.forget(self)
        super().connection_lost(exc)

    # The keepalive, in the shared ticks: ``ping_timer`` and ``pong_timer`` stay None, and
    # one place in a tick is either the next ping (no ping pending) or the pong's deadline.

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None
        self._wait_beat(max(0.0, self.ping_interval - self.last_ping_rtt))

    def send_keepalive_ping(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        if self.keepalive_message is not None:
            self.conn.send_binary(self.keepalive_message)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.ping_timeout is not None:
            self._wait_beat(self.ping_timeout)
        else:
            self.pending_ping_payload = None  # no pong awaited: the next ping follows
            self.schedule_ping()

    def handle_pong(self, event: Frame) -> None:
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            # Unsolicited, or the answer to a ping before the one in flight: charged as a
            # ping (empty pongs as fast as TCP took them froze the node; review RD-1).
            if not self._ping_allowed():
                log.info("connection reset: too many pongs", extra={"client": self.client})
                reset(self.transport)
            return
        now = self.loop.time()
        self.last_ping_rtt = now - self.ping_sent_at
        self.pending_ping_payload = None
        self.schedule_ping()
        # A sign of life the socket's idle timeout counts (``SocketDeadlines``).
        writer = self.scope.get(SCOPE_KEY)
        if isinstance(writer, DirectWriter):
            writer.answered_at = now

    def stop_keepalive(self) -> None:
        self._drop_beat()
        super().stop_keepalive()

    def on_tick(self) -> None:
        self._beat = None
        if self.pending_ping_payload is None:
            self.send_keepalive_ping()
        elif self._held_since(self.ping_sent_at):
            # Its pong may wait behind what the server has not read: alive (it was sending),
            # pinged again (with the keep-alive message a stock client needs to hear).
            writer = self.scope.get(SCOPE_KEY)
            if isinstance(writer, DirectWriter):
                writer.answered_at = self.loop.time()
            self.pending_ping_payload = None
            self.send_keepalive_ping()
        else:
            self.keepalive_timeout()

    def _held_since(self, when: float) -> bool:
        """Whether the member's budget held this socket's reading back at ``when`` or
        since."""
        meter: InboundMeter | None = self.queue.meter  # type: ignore[attr-defined]
        return meter is not None and (meter.holds(self) or meter.short_at >= when)

    def _wait_beat(self, delay: float) -> None:
        self._drop_beat()
        loop = self.loop
        self._beat = ticks_of(loop).add(self, loop.time() + delay, loop)

    def _drop_beat(self) -> None:
        if self._beat is not None:
            ticks_of(self.loop).discard(self, self._beat)
            self._beat = None

    # A client's pings: each owes a pong, which uvicorn writes whether or not the client
    # reads. A client that pinged as fast as it could and read nothing held 260 MB of pongs
    # per connection, with no token (review, "bounded"). A pong waits behind at most
    # ``PONG_BACKLOG_BYTES`` (past it the ping goes unanswered: RFC 6455 lets a pong answer
    # the latest ping only), and pings past ``PING_RATE`` reset the connection.

    def handle_ping(self) -> None:
        queued = self.conn.data_to_send()  # the pong, and what came before it in the read
        if not self._ping_allowed():
            log.info("connection reset: too many pings", extra={"client": self.client})
            reset(self.transport)
            return
        if self.transport.get_write_buffer_size() > PONG_BACKLOG_BYTES:
            # The pongs go unanswered; a close answering the client's, say, still goes.
            queued = [frame for frame in queued if frame[:1] != _PONG_HEADER]
        if queued:
            self.transport.write(b"".join(queued))

    def _ping_allowed(self) -> bool:
        """Within ``PING_RATE`` (its bucket made at the first ping: idle sockets hold none)."""
        now = self.loop.time()
        pings: TokenBucket | None = getattr(self, "_pings", None)
        if pings is None:
            pings = self._pings = TokenBucket(PING_RATE, now)
        return pings.allow(now)

    def handle_parser_exception(self) -> None:
        """A frame websockets could not parse, or one past a limit (``frame_limits``): the
        protocol failed the connection, and it is closed now, not read on."""
        refusal = self.conn.parser_exc
        if isinstance(refusal, ParleyError):
            log.info("socket closed: %s", refusal.message, extra={"client": self.client})
        if self.conn.close_sent is None:
            # Before the handshake was answered (frames sent with the upgrade request): no
            # close frame may go, and uvicorn's handling would fail on the missing one.
            reset(self.transport)
            return
        super().handle_parser_exception()
        if self.close_timer is not None:  # the app closed it first (a bad token, 4401)
            self.close_timer.cancel()
            self.close_timer = None
        if self.transport.get_write_buffer_size():
            reset(self.transport)  # a client that sends without reading

    def keepalive_timeout(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return  # closing already (uvicorn's does nothing then either)
        super().keepalive_timeout()  # a close, which would wait for the client to read
        if self.transport.get_write_buffer_size():
            reset(self.transport)

    def _close_or_reset(self) -> None:
        """The closing handshake's deadline passed: close, or reset a client that is not
        reading (a close would hold what it was sent until it does)."""
        if self.transport.get_write_buffer_size():
            reset(self.transport)
        else:
            self.transport.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        timer = self.close_timer
        if timer is not None and message.get("type") == "websocket.close":
            timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_or_reset)
            if self._held_back():  # uvicorn resumed reading for the client's close
                self.transport.pause_reading()
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # Read only to answer the handshake (``handle_connect``, then ``send`` on accept).
            # The request's headers go too: websockets' parser keeps the request itself
            # for the socket's lifetime (a local of its suspended generator), and the
            # app reads the headers from the scope, which has its own copy.
            self.request.headers.clear()
            self.request.path = ""  # with its query string: the token
            self.request = self.response = None  # type: ignore[assignment]


class LeanHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, dropped whole once it hands its connection to a
    WebSocket protocol. Its parser calls back into it (a reference cycle that uvicorn
    breaks in ``connection_lost``, which an upgraded connection never reaches here): left
    to the garbage collector, each socket's upgrade added 30 objects to its next pass.

    Each request's scope carries a way to reset its connection (``RESET_EXTENSION``): an
    answer the client stops taking is dropped with it (``server.http.bounded``). The
    ``send`` the app sees is wrapped by middleware, so the transport is out of its reach."""

    # A request must arrive in time: a connection's first within ``IDLE_FIRST_S`` (then it
    # is closed: a browser opens some ahead of use, and closes its own unused ones after
    # 10 s), its head within ``HEAD_TIMEOUT_S`` of its first byte; its body with no
    # ``BODY_TIMEOUT_S`` without a byte and at ``MIN_BODY_RATE`` on average, counting only
    # the time the server reads it (not while uvicorn holds the body back itself: a
    # request pipelined behind another, a body the app has not read yet, an ``Expect:
    # 100-continue`` not answered yet; reading resumed, the clock goes on: ``_WatchedFlow``).
    # uvicorn waits without end until a first request is complete (its keep-alive timer
    # starts after a response), so connections that sent nothing, or a byte now and then,
    # were held for good and a client holding enough of them took every file descriptor
    # (review, "bounded").
    _deadline: asyncio.TimerHandle | None = None
    _body_due: float | None = None  # the body's deadline, when later than ``_deadline``
    _begun = False  # a request's first byte came (a connection that sent none is closed)
    _body: _BodyClock | None = None  # while a body arrives
    # A request head's bytes (its URL and headers) and headers so far: uvicorn keeps every
    # header in a list and httptools caps neither, so one request of 60 MB of tiny header
    # lines took a gigabyte and stalled every other client for a second (review,
    # "bounded"). Past ``MAX_HEAD_BYTES`` or ``MAX_HEADERS`` it is answered 400, closed.
    _head_bytes = 0
    _header_count = 0
    # The bytes of the reads in a row in which the parser called back nothing: httptools
    # gathers one header (or a chunked body's trailer) across reads, quadratically, and
    # calls back only at its end (a 100 MB header took 10 s of CPU; review of the limit).
    _silent_bytes = 0
    _progressed = False
    # The process's connections waiting for a request head (opened, or idle between two
    # requests), oldest first: past ``MAX_WAITING`` the oldest is closed. Each had a
    # deadline but there was no count: 19,990 that sent nothing took every file descriptor
    # for their 60 s, and every other client was refused (review, "bounded"). A client
    # sends its request as it connects; one closed while idle opens another.
    # Those that never sent one go first, then those kept alive between two requests (a
    # client's pooled connection: closing it races with a request written on it).
    _waiting: ClassVar[dict[LeanHttpProtocol, None]] = {}
    _kept_alive: ClassVar[dict[LeanHttpProtocol, None]] = {}

    def _wait(self) -> None:
        (LeanHttpProtocol._kept_alive if self._begun else LeanHttpProtocol._waiting)[self] = None
        fresh, kept = LeanHttpProtocol._waiting, LeanHttpProtocol._kept_alive
        while len(fresh) + len(kept) > MAX_WAITING:
            oldest = next(iter(fresh or kept))
            oldest._unwait()
            oldest.transport.close()

    def _unwait(self) -> None:
        LeanHttpProtocol._waiting.pop(self, None)
        LeanHttpProtocol._kept_alive.pop(self, None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _WatchedFlow(transport, self)
        self._arm(IDLE_FIRST_S)
        self._wait()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._linger_on(len(data))
            return
        self._progressed = False
        super().data_received(data)
        if self._progressed:
            self._silent_bytes = 0
        elif not self.transport.is_closing():
            self._silent_bytes += len(data)
            if self._silent_bytes > MAX_HEAD_BYTES:
                self.send_400_response(f"a header or trailer over {MAX_HEAD_BYTES} bytes")

    def on_url(self, url: bytes) -> None:
        self._progressed = True
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progressed = True
        self._header_count += 1
        self._count_head(len(name) + len(value))
        if self._header_count > MAX_HEADERS:
            self._refusal = f"more than {MAX_HEADERS} headers"
            raise HeadTooLarge(self._refusal)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = f"a request head over {MAX_HEAD_BYTES} bytes"
            raise HeadTooLarge(self._refusal)

    # The parser's own refusals, answered before the app: in the app's error shape (review:
    # uvicorn's were text/plain, and a client reading ``error.code`` found none).
    _refusal: str | None = None  # why a callback stopped the parser (uvicorn says "invalid")

    def send_400_response(self, msg: str) -> None:
        """Answer 400 ``bad_request`` as the app's errors are (``rest.error_response``),
        and close: the request could not be parsed. Nothing on a connection already
        closing (answered, or reset): a 400 would follow its answer."""
        if self.transport.is_closing():
            return
        why = self._refusal or msg
        error = BadRequest(f"malformed HTTP request: {why}")
        body = json.dumps(error_body(error.code.value, error.message))
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body.encode("ascii"),
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

    def on_message_begin(self) -> None:
        self._progressed = True
        if len(self.pipeline) >= MAX_PIPELINED:
            # Its answers are not being read: reset, not answered (a 400 would be written
            # in the middle of the answer in flight).
            log.info("connection reset: too many requests pipelined", extra={"client": self.client})
            reset(self.transport)
            raise HeadTooLarge(f"more than {MAX_PIPELINED} requests pipelined")
        self._head_bytes = self._header_count = 0
        super().on_message_begin()
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[RESET_EXTENSION] = Reset(self.transport)
        if not self._begun or self._deadline is None:
            self._arm(HEAD_TIMEOUT_S)
        self._begun = True

    # A connection is kept for the next request only if its request's body had all come
    # when the answer began: uvicorn kept one answered early (a 401, a 413) and read the
    # rest of its body, whatever its length, so one-byte chunks after a 413 held the loop
    # for as long as the client sent them (review RD-3). Each request's cycle is made not
    # to keep its connection (``connection: close``, closed once answered) until its body
    # ends; then, unless its answer has begun, it keeps it as the request asked.
    _keep_alive: bool | None = None  # what the request asked for, until its body ends

    # A request answered before its body ended is closed once the client has had time to
    # take its answer: until then what it still sends is read and dropped, unparsed, at the
    # cost of a read, not of a parser callback per chunk. Closed at once, a client still
    # writing its body (httpx, a browser: they read the answer once the body is written)
    # got a reset in place of the 413. Closed when the client closes, after ``LINGER_S``,
    # or past ``LINGER_BYTES``, whichever comes first (nginx's lingering close).
    _lingering: int | None = None  # bytes dropped so far, while lingering

    def on_headers_complete(self) -> None:
        self._progressed = True
        self._unwait()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a request for the app (an upgrade makes no cycle)
            self._keep_alive, self.cycle.keep_alive = self.cycle.keep_alive, False
            self.cycle.transport = _LingeringClose(self.transport, self)  # type: ignore[assignment]
        self._body = _BodyClock()
        self._await_body()

    def on_body(self, body: bytes) -> None:
        self._progressed = True
        if self.transport.is_closing():
            # Answered (or refused) before its body ended: no more of it is parsed, not
            # even the rest of the read that holds it.
            raise HeadTooLarge("the connection is closing")
        clock = self._body
        if clock is not None:
            clock.pieces += 1
            clock.received += len(body)
            if clock.pieces > MAX_BODY_PIECES and clock.received < MIN_PIECE_BYTES * clock.pieces:
                self._refuse_body(
                    f"a body in more than {MAX_BODY_PIECES} pieces (chunks) of under "
                    f"{MIN_PIECE_BYTES} bytes on average"
                )
        super().on_body(body)
        self._await_body()

    def linger(self) -> None:
        """The answer is complete and the connection is to close: at once if the request's
        body had all come, else once the client has had time to take the answer."""
        transport = self.transport
        if self._keep_alive is None or transport.is_closing():
            transport.close()
            return
        self._keep_alive = None
        self._body = None
        self._disarm()
        self._lingering = 0
        self.flow.resume_reading()  # uvicorn may have paused it for the unread body
        self._deadline = self.loop.call_later(LINGER_S, transport.close)

    def _linger_on(self, size: int) -> None:
        self._lingering = (self._lingering or 0) + size
        if self._lingering > LINGER_BYTES:
            reset(self.transport)

    def _refuse_body(self, why: str) -> NoReturn:
        """Stop the parser: the request is answered 400 and closed (``send_400_response``),
        or reset if its answer has begun (a 400 would be written into it)."""
        cycle = self.cycle
        if cycle.response_started:
            reset(self.transport)
        # The app reads no more of it, and what it answers is not written after the 400.
        cycle.disconnected = True
        cycle.message_event.set()
        self._refusal = why
        raise HeadTooLarge(why)

    def _await_body(self) -> None:
        """The body's deadline, while the server reads it (see above)."""
        clock = self._body
        if clock is None:
            return
        waiting = getattr(self.cycle, "waiting_for_100_continue", False)
        reading = not (self.flow.read_paused or waiting)
        now = self.loop.time()
        left = clock.left(now, reading)
        if left is None:
            self._disarm()
        elif self._deadline is None or self._deadline.when() > now + left:
            self._arm(left)
        else:
            # Later than the timer set: kept, moved on when it fires (``_too_slow``). Set
            # again for each chunk, a body of one-byte chunks took 16 times the CPU of the
            # same bytes whole (review: 0.5 s for 1 MB).
            self._body_due = now + left

    def on_message_complete(self) -> None:
        self._progressed = True
        self._body = None
        self._disarm()
        keep_alive, self._keep_alive = self._keep_alive, None
        if keep_alive is not None and not self.cycle.response_started:
            self.cycle.keep_alive = keep_alive  # its body came whole before its answer
        super().on_message_complete()

    def shutdown(self) -> None:
        if self._keep_alive:  # a body still coming: closed once answered, as uvicorn would
            self._keep_alive = False
        super().shutdown()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._lingering is not None:
            return  # answered early: closed once the client took it (``linger``)
        if self.cycle.response_complete and not self.transport.is_closing():
            self._wait()  # kept alive for the next request (none in flight)
        if self.pipeline and not self.transport.is_closing():
            # uvicorn reads on after each answer: with requests still queued, each answer
            # would let in another read's worth of them. The last one queued resumes it.
            self.flow.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwait()
        self._body = None
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        self._body_due = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        due, self._body_due = self._body_due, None
        if due is not None and self._body is not None and due > self.loop.time():
            self._deadline = self.loop.call_at(due, self._too_slow)  # the body went on
            return
        if not self._begun:  # opened ahead of use (a browser's preconnect): closed
            self.transport.close()
            return
        log.info(
            "connection reset: its request did not arrive in time", extra={"client": self.client}
        )
        reset(self.transport)

    def handle_websocket_upgrade(self) -> None:
        self._unwait()
        self._disarm()
        super().handle_websocket_upgrade()
        self.parser = None  # type: ignore[assignment]  # as uvicorn's connection_lost does


RESET_EXTENSION = "parley.reset"


class Reset:
    """Resets a connection (``direct_send.reset``) if it is still there. Holds its
    transport weakly: the scope holding this must not keep the connection's objects in a
    reference cycle."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = weakref.ref(transport)

    def __call__(self) -> None:
        transport = self._transport()
        if transport is not None:
            reset(transport)


class _WatchedFlow(FlowControl):
    """uvicorn's flow control, telling its protocol when reading resumes (the body's clock
    goes on: ``LeanHttpProtocol._await_body``). Holds the protocol weakly: no cycle."""

    def __init__(self, transport: asyncio.Transport, protocol: LeanHttpProtocol) -> None:
        super().__init__(transport)
        self._protocol = weakref.ref(protocol)

    def resume_reading(self) -> None:
        super().resume_reading()
        protocol = self._protocol()
        if protocol is not None:
            protocol._await_body()


class _LingeringClose:
    """A request's transport as its cycle sees it: the same, but closing it lingers
    (``LeanHttpProtocol.linger``)."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: LeanHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.linger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _BodyClock:
    """How far a request's body has come: its bytes and pieces, and the time the server
    read it."""

    __slots__ = ("pieces", "read_s", "received", "since")

    def __init__(self) -> None:
        self.received = 0
        self.pieces = 0  # parser callbacks with body bytes (``MAX_BODY_PIECES``)
        self.read_s = 0.0  # reading, before ``since``
        self.since: float | None = None  # reading since then; None: held back

    def left(self, now: float, reading: bool) -> float | None:
        """Seconds the body has now for its next byte (None: held back, no deadline):
        ``BODY_TIMEOUT_S``, or less when it is behind ``MIN_BODY_RATE``."""
        if self.since is not None:
            self.read_s += now - self.since
        self.since = now if reading else None
        if not reading:
            return None
        behind = BODY_TIMEOUT_S + self.received / MIN_BODY_RATE - self.read_s
        return max(0.0, min(BODY_TIMEOUT_S, behind))
