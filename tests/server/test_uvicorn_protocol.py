"""``parley serve``'s WebSocket protocol: uvicorn's sans-I/O one with a mailbox and a flag in
place of its ``asyncio.Queue`` and ``asyncio.Event``, and the handshake let go of (that
``parley serve`` runs it: ``test_send_path.test_parley_serve_writes_frames_directly``); its
keepalive pings, in the ticks the sockets' deadlines share; its attributes, shared per server
where they are the same."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from parley.server.ws import frame_limits, uvicorn_protocol
from parley.server.ws.direct_send import DirectWriter
from parley.server.ws.frame_limits import FRAME_RATE, FREE_FRAGMENTS
from parley.server.ws.inbound import InboundMeter
from parley.server.ws.uvicorn_protocol import (
    MAX_BODY_PIECES,
    MAX_PIPELINED,
    PONG_BACKLOG_BYTES,
    Flag,
    LeanHttpProtocol,
    LeanWebSocketProtocol,
    Mailbox,
)
from parley.session.ratelimit import Rate
from tests.conftest import serve_asgi


async def test_the_mailbox_gives_messages_in_order_and_wakes_its_reader() -> None:
    mailbox = Mailbox()
    mailbox.put_nowait("a")
    assert await mailbox.get() == "a" and mailbox.empty()
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    mailbox.put_nowait("b")
    mailbox.put_nowait("c")
    assert await reader == "b"
    assert mailbox.qsize() == 1 and await mailbox.get() == "c"


async def test_a_cancelled_read_loses_nothing_and_a_second_reader_is_refused() -> None:
    mailbox = Mailbox()
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await mailbox.get()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    mailbox.put_nowait("kept")
    assert await mailbox.get() == "kept"


async def test_the_flag_holds_writers_while_cleared_and_releases_them_all() -> None:
    flag = Flag()
    await flag.wait()  # set from the start: writing is allowed
    flag.clear()
    writers = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    writers[0].cancel()  # one writer gone does not strand the others
    await asyncio.sleep(0)
    assert not any(w.done() for w in writers[1:])
    flag.set()
    await asyncio.gather(*writers[1:])
    assert flag.is_set() and writers[0].cancelled()


async def _echo_socket(scope: Any, receive: Any, send: Any) -> None:
    """An app that accepts a socket and reads until it ends."""
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """A sans-I/O websockets client over a plain TCP stream: the test decides what it sends
    (a ping's pong is queued by the protocol, and sent only if the test writes it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"))
    client.send_request(client.connect())
    writer.write(b"".join(client.data_to_send()))
    return reader, writer, client


@asynccontextmanager
async def _pinging_server() -> AsyncIterator[int]:
    async with serve_asgi(
        _echo_socket, ws=LeanWebSocketProtocol, ws_ping_interval=0.2, ws_ping_timeout=0.2
    ) as port:
        yield port


async def test_pings_go_out_on_the_shared_ticks_and_an_answering_client_stays() -> None:
    async with _pinging_server() as port:
        reader, writer, client = await _raw_client(port)
        pings = 0
        async with asyncio.timeout(30):
            while pings < 3:
                client.receive_data(await reader.read(65536))
                pings += sum(
                    isinstance(e, Frame) and e.opcode is Opcode.PING
                    for e in client.events_received()
                )
                writer.write(b"".join(client.data_to_send()))  # the pongs
        assert client.state is State.OPEN
        writer.close()


async def test_a_client_that_never_answers_a_ping_is_closed_1011() -> None:
    async with _pinging_server() as port:
        reader, writer, client = await _raw_client(port)
        async with asyncio.timeout(30):
            while client.close_rcvd is None:
                data = await reader.read(65536)
                if not data:
                    break
                client.receive_data(data)
                client.data_to_send()  # dropped: the pongs never go out
        assert client.close_rcvd is not None and client.close_rcvd.code == 1011
        assert "keepalive" in client.close_rcvd.reason
        writer.close()


async def test_a_client_that_floods_pings_is_reset() -> None:
    """Pings past the rate (a burst of 20) reset the connection: a client pinging as fast
    as it could and reading nothing held 260 MB of pongs per socket (review)."""
    async with serve_asgi(_echo_socket, ws=LeanWebSocketProtocol) as port:
        reader, writer, client = await _raw_client(port)
        client.receive_data(await reader.readuntil(b"\r\n\r\n"))  # the handshake's answer
        for _ in range(200):
            client.send_ping(b"x" * 125)
        with contextlib.suppress(ConnectionError):
            writer.write(b"".join(client.data_to_send()))
            await writer.drain()
        ended = None
        async with asyncio.timeout(30):
            while ended is None:
                try:
                    if not await reader.read(65536):
                        ended = "eof"
                except ConnectionResetError:
                    ended = "reset"
        assert ended == "reset"
        writer.close()


async def test_pongs_wait_behind_a_bounded_backlog() -> None:
    """Within the ping rate, a client that reads nothing is owed pongs only while little
    waits for it: the protocol answers the pings of a reading client, and drops a pong
    past the backlog (``PONG_BACKLOG_BYTES``) instead of queuing it."""

    class Transport:
        buffered = 0
        written: list[bytes] = []

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def write(self, data: bytes) -> None:
            self.written.append(data)

    class Conn:
        queued: list[bytes] = []

        def data_to_send(self) -> list[bytes]:
            return self.queued

    class Socket:  # the protocol's ping handling, on what it reads of the socket
        handle_ping = LeanWebSocketProtocol.handle_ping
        _ping_allowed = LeanWebSocketProtocol._ping_allowed

        def __init__(self) -> None:
            self.transport, self.conn = Transport(), Conn()
            self.loop = asyncio.get_running_loop()
            self.client = ("127.0.0.1", 1)

    pong = Frame(Opcode.PONG, b"p").serialize(mask=False, extensions=[])
    close = Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=False, extensions=[])
    socket = Socket()
    socket.conn.queued = [pong]
    socket.handle_ping()
    socket.transport.buffered = PONG_BACKLOG_BYTES + 1
    socket.handle_ping()
    assert socket.transport.written == [pong]
    # A close that came in the same read as the ping is answered all the same.
    socket.conn.queued = [pong, close]
    socket.handle_ping()
    assert socket.transport.written == [pong, close]


class _MeteredSocket:
    """An app whose one socket counts what it reads against ``meter`` (as an admitted
    socket does), and takes a message or closes when the test says so (``actions``)."""

    def __init__(self, meter: InboundMeter) -> None:
        self.meter = meter
        self.actions: asyncio.Queue[str] = asyncio.Queue()
        self.taken: list[bytes] = []
        self.protocol: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.protocol = send.__self__
        writer = DirectWriter.beneath(send)
        assert writer is not None and writer.meter_reading(self.meter)
        await send({"type": "websocket.accept"})
        while True:
            if await self.actions.get() == "close":
                await send({"type": "websocket.close", "code": 1000})
                return
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            self.taken.append(message["bytes"])

    def held(self) -> bool:
        return self.protocol is not None and self.meter.holds(self.protocol)

    def waiting(self) -> int:
        """Messages read and not taken by the app."""
        return int(self.protocol.queue.qsize())

    def reading(self) -> bool:
        return bool(self.protocol.transport.is_reading())


async def _poll(check: Callable[[], bool]) -> None:
    """Until ``check()`` holds: the protocol's state, which no event tells of."""
    async with asyncio.timeout(30):
        while not check():  # noqa: ASYNC110 (a state that no event tells of)
            await asyncio.sleep(0.005)


@asynccontextmanager
async def _held_socket(**config: Any) -> AsyncIterator[tuple[_MeteredSocket, Any, list[float]]]:
    """A socket whose member's budget (4 KiB, its clock stopped: no refill until the test
    moves it on) held it back after a message of 8 KiB, which waits for the app."""
    now = [0.0]
    app = _MeteredSocket(InboundMeter(Rate(per_second=1e6, burst=4096), lambda: now[0]))
    async with serve_asgi(app, ws=LeanWebSocketProtocol, **config) as port:
        client = await websockets.connect(
            f"ws://127.0.0.1:{port}/", ping_interval=None, compression=None
        )
        try:
            await client.send(b"1" * 8192)
            await _poll(lambda: app.held() and app.waiting() == 1)
            assert not app.reading()
            yield app, client, now
        finally:
            now[0] += 1.0  # the budget refills: its timer lets go
            await app.actions.put("close")  # the app ends (the server waits for it)
            await client.close()


async def test_a_message_taken_does_not_resume_a_socket_its_budget_holds() -> None:
    async with _held_socket() as (app, client, now):
        await app.actions.put("take")
        await _poll(lambda: len(app.taken) == 1)
        assert app.held() and not app.reading() and not app.protocol.read_paused
        await client.send(b"2" * 100)
        now[0] += 1.0  # refilled: read on
        await app.actions.put("take")
        await _poll(lambda: len(app.taken) == 2)
        assert app.taken == [b"1" * 8192, b"2" * 100]


async def test_a_refill_does_not_resume_a_socket_whose_message_waits() -> None:
    async with _held_socket() as (app, client, now):
        await client.send(b"2" * 100)
        now[0] += 1.0
        await _poll(lambda: not app.held())
        assert not app.reading() and app.waiting() == 1  # the app has not taken the first
        await app.actions.put("take")
        await app.actions.put("take")
        await _poll(lambda: len(app.taken) == 2)


async def test_a_close_does_not_resume_a_socket_its_budget_holds() -> None:
    """uvicorn reads on after the app's close (for the client's answer): not past the
    member's budget."""
    async with _held_socket() as (app, _, _):
        await app.actions.put("close")
        await _poll(lambda: app.protocol.close_sent)
        assert app.held() and not app.reading()


async def test_a_ping_unanswered_while_the_budget_holds_the_socket_does_not_close_it() -> None:
    """Its pong waits behind the bytes the server does not read: pinged again, not 1011."""
    async with _held_socket(ws_ping_interval=0.2, ws_ping_timeout=0.2) as (app, client, _):
        pings: set[float] = set()

        def pinged_or_closed() -> bool:
            pings.add(app.protocol.ping_sent_at)
            return len(pings) > 4 or app.protocol.close_sent

        await _poll(pinged_or_closed)  # each ping after the one before timed out
        assert not app.protocol.close_sent and app.held() and client.state is State.OPEN


# Every frame a client sends is counted (``server.ws.frame_limits``): one client sending a
# text fragment and then empty continuation frames, or empty pongs, froze the node for as
# long as it sent, with no token (review RD-1).


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[Opcode]:
    """The opcodes of the frames servers in this process parse (masked ones: a client's),
    as they parse them; and no budget refills while a test runs."""
    opcodes: list[Opcode] = []
    parse = Frame.parse.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Frame], *args: Any, **kwargs: Any) -> Generator[None, None, Frame]:
        frame: Frame = yield from parse(cls, *args, **kwargs)
        if kwargs["mask"]:
            opcodes.append(frame.opcode)
        return frame

    monkeypatch.setattr(Frame, "parse", classmethod(counted))
    monkeypatch.setattr(frame_limits, "FRAME_RATE", Rate(per_second=0.0, burst=FRAME_RATE.burst))
    return opcodes


def _frame(opcode: Opcode, data: bytes = b"", fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


_FIRST = _frame(Opcode.TEXT, b'{"type": "message", "text": "', fin=False)
_EMPTY = _frame(Opcode.CONT, fin=False)


async def _ending(reader: asyncio.StreamReader, client: ClientProtocol) -> tuple[int | None, str]:
    """The close code the server sent (None: none) and how the connection ended."""
    async with asyncio.timeout(30):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                ended = "reset"
                break
            if not data:
                ended = "eof"
                break
            client.receive_data(data)
    return (None if client.close_rcvd is None else client.close_rcvd.code), ended


async def _opened(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientProtocol]:
    reader, writer, client = await _raw_client(port)
    client.receive_data(await reader.readuntil(b"\r\n\r\n"))
    assert client.state is State.OPEN
    return reader, writer, client


async def test_a_message_in_more_frames_than_its_limit_is_closed_1009(
    parsed: list[Opcode],
) -> None:
    """Empty continuation frames never grow the message, so its size limit never trips:
    its frames are counted, and the server stops at the one past the limit, the rest of
    what it read unparsed."""
    async with serve_asgi(_echo_socket, ws=LeanWebSocketProtocol) as port:
        reader, writer, client = await _opened(port)
        writer.write(_FIRST + _EMPTY * 4 * FREE_FRAGMENTS)
        assert await _ending(reader, client) == (1009, "eof")
        assert len(parsed) <= FREE_FRAGMENTS + 1
        writer.close()


async def test_a_closing_socket_is_not_read_on_past_its_limits(parsed: list[Opcode]) -> None:
    """A socket the app closed (a bad token is closed 4401 after the upgrade) waits for the
    client's close, reading what it sends meanwhile: within the same limits."""

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4401})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with serve_asgi(refuse, ws=LeanWebSocketProtocol) as port:
        reader, writer, client = await _opened(port)
        async with asyncio.timeout(30):
            while client.close_rcvd is None:
                client.receive_data(await reader.read(65536))
        writer.write(_FIRST + _EMPTY * 4 * FREE_FRAGMENTS)
        assert await _ending(reader, client) == (4401, "eof")
        assert len(parsed) <= FREE_FRAGMENTS + 1
        writer.close()


async def test_a_socket_past_its_frame_budget_is_closed_4429(parsed: list[Opcode]) -> None:
    """Every frame counts, whatever it carries: here empty binary messages, each of which
    the app is handed (a control frame is the same, test_frame_limits)."""
    async with serve_asgi(_echo_socket, ws=LeanWebSocketProtocol) as port:
        reader, writer, client = await _opened(port)
        writer.write(_frame(Opcode.BINARY) * int(FRAME_RATE.burst * 1.5))
        assert await _ending(reader, client) == (4429, "eof")
        assert len(parsed) <= FRAME_RATE.burst + 1
        writer.close()


async def test_frames_before_the_handshakes_answer_count_too(
    parsed: list[Opcode], caplog: pytest.LogCaptureFixture
) -> None:
    """Sent after the upgrade request, before the app accepts it: no close frame may go
    yet, so the connection is dropped, and nothing is logged as an error."""
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow_to_accept(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        asked.set()
        await answer.wait()
        with contextlib.suppress(Exception):  # the client is gone
            await send({"type": "websocket.accept"})

    async with serve_asgi(slow_to_accept, ws=LeanWebSocketProtocol) as port:
        reader, writer, _ = await _raw_client(port)
        await asked.wait()
        writer.write(_frame(Opcode.PONG) * int(FRAME_RATE.burst * 1.5))
        try:
            assert await _ended(reader) == b""
        finally:
            answer.set()
        assert len(parsed) <= FRAME_RATE.burst + 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        writer.close()


async def test_a_client_that_floods_unsolicited_pongs_is_reset(parsed: list[Opcode]) -> None:
    """Pongs nobody asked for are charged as pings are (a burst of 20, then 1 a second)."""
    async with serve_asgi(_echo_socket, ws=LeanWebSocketProtocol) as port:
        reader, writer, client = await _opened(port)
        with contextlib.suppress(ConnectionError):
            writer.write(_frame(Opcode.PONG) * 200)
            await writer.drain()
        assert await _ending(reader, client) == (None, "reset")
        writer.close()


async def test_stock_clients_fragmented_messages_within_the_limits_are_taken() -> None:
    """websockets' client fragments a message given as an iterable (Chromium one over
    64 KiB, in pieces as large as its pipe holds): a message may come in
    ``FREE_FRAGMENTS`` frames, and one more per KiB it holds."""

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": message.get("text")})

    async with (
        serve_asgi(echo, ws=LeanWebSocketProtocol) as port,
        websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as socket,
    ):
        await socket.send("whole")
        assert await socket.recv() == "whole"
        # An iterable's pieces in a frame each, and an empty one to end the message.
        await socket.send(["a"] * (FREE_FRAGMENTS - 1))
        assert await socket.recv() == "a" * (FREE_FRAGMENTS - 1)
        pieces = ["b" * 1024] * (FREE_FRAGMENTS * 4)  # 256 KiB in 257 frames
        await socket.send(pieces)
        assert await socket.recv() == "".join(pieces)


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    """An app that reads a request's body and answers 200."""
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _ended(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it ended the connection (a reset counts as its end)."""
    got = b""
    async with asyncio.timeout(30):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                return got
            if not data:
                return got
            got += data


@pytest.mark.parametrize("sent", [b"", b"GET /slow HTTP/1.1\r\nHost: x\r\n", b"POST /x HTTP/1.1"])
async def test_a_request_that_does_not_arrive_in_time_ends_its_connection(
    sent: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing, or a head begun and never finished: the connection ends at the deadline
    (review: such connections were held for good, and enough of them took every file
    descriptor)."""
    monkeypatch.setattr(uvicorn_protocol, "HEAD_TIMEOUT_S", 0.3)
    monkeypatch.setattr(uvicorn_protocol, "IDLE_FIRST_S", 0.3)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        assert await _ended(reader) == b""
        writer.close()


@pytest.mark.parametrize(
    "head",
    [
        b"X-A: " + b"b" * 70_000 + b"\r\n",  # one header past the bytes
        b"a: b\r\n" * 300,  # tiny ones past the count
    ],
)
async def test_a_request_head_past_its_limit_is_refused(head: bytes) -> None:
    """Review (bounded): no limit on a request head's headers, so 60 MB of tiny header
    lines, with no key, took a gigabyte and held every other client for a second. Past 64
    KiB or 256 headers the request is answered 400 and its connection closed; a head
    within them is served."""
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        answered = await _ended(reader)
        assert answered.startswith(b"HTTP/1.1 400"), answered[:100]
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * 100 + b"\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        writer.close()


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (b"NOT A REQUEST\r\n\r\n", "malformed HTTP request"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * 300 + b"\r\n", "256 headers"),
    ],
    ids=["request line", "headers"],
)
async def test_a_request_refused_before_the_app_is_answered_as_the_apps_errors_are(
    sent: bytes, why: str
) -> None:
    """Review (errors are part of the API): the HTTP layer's own 400s, for a request it
    could not parse, were text/plain; a client reading ``error.code`` found none. They are
    JSON ``{"error": {"code": "bad_request", "message"}}`` as the app's are."""
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        head, _, body = (await _ended(reader)).partition(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and why in error["message"], error


async def test_a_header_past_the_head_limit_is_refused_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review of the limit: httptools gathers one header across reads and calls back only
    at its end, so a 100 MB header was read whole (10 s of CPU). The bytes of an open head
    are counted as they arrive: past the limit, 400 while the header is still coming."""
    monkeypatch.setattr(uvicorn_protocol, "HEAD_TIMEOUT_S", 3.0)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-B: " + b"c" * 300_000)  # no end
        answered = await _ended(reader)
        assert answered.startswith(b"HTTP/1.1 400"), answered[:100]
        writer.close()


async def test_a_chunked_bodys_trailer_past_the_head_limit_is_refused_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review of the count: a chunked body's trailer is gathered as a header is, after the
    head, so a 100 MB trailer took 10 s of CPU. Reads with nothing called back are counted
    wherever they come."""
    monkeypatch.setattr(uvicorn_protocol, "HEAD_TIMEOUT_S", 3.0)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head + b"1\r\na\r\n0\r\nX-T: " + b"a" * 300_000)  # no end
        answered = await _ended(reader)
        assert answered.startswith(b"HTTP/1.1 400"), answered[:200]
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_ends_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uvicorn_protocol, "BODY_TIMEOUT_S", 0.3)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        assert await _ended(reader) == b""
        writer.close()
        # A request that arrives whole is answered, and its connection kept for the next.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
        writer.close()


async def test_requests_pipelined_past_the_limit_reset_their_connection() -> None:
    """Review (bounded): uvicorn queued every request of a read behind the one answered,
    and read on after each answer, so a client writing requests without reading the
    answers, with no key, grew the server from 166 to 444 MB over five connections. At
    most ``MAX_PIPELINED`` wait; past them the connection is reset. Within them, every
    request is answered in order."""
    request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serve_asgi(_answer_slowly, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request * (MAX_PIPELINED + 4))
        answered = await _ended(reader)
        assert answered.count(b"HTTP/1.1 200") < MAX_PIPELINED
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request * 3)
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
        writer.close()


async def test_past_the_connections_waiting_for_a_request_the_oldest_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review (bounded): each connection that sent nothing had a deadline, but their number
    had no bound: 19,990 of them took every file descriptor for their 60 s, and every
    other client was refused. Past ``MAX_WAITING`` connections waiting for a request the
    oldest is closed; a client that sends its request is served."""
    monkeypatch.setattr(uvicorn_protocol, "MAX_WAITING", 3)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for reader, _ in idle[:2]:
            assert await _ended(reader) == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        writer.close()
        for _, idle_writer in idle:
            idle_writer.close()


async def test_connections_that_sent_nothing_are_closed_before_kept_alive_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review of the cap: a client opening connections closed others' pooled keep-alive
    ones first (a request written on one as it closed failed). Those that never sent a
    request go first."""
    monkeypatch.setattr(uvicorn_protocol, "MAX_WAITING", 3)
    request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        kept_reader, kept_writer = await asyncio.open_connection("127.0.0.1", port)
        kept_writer.write(request)
        assert (await kept_reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        fresh = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for reader, _ in fresh[:2]:
            assert await _ended(reader) == b""
        kept_writer.write(request)  # still open: served again
        assert (await kept_reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        kept_writer.close()
        for _, fresh_writer in fresh:
            fresh_writer.close()


async def _answer_slowly(scope: Any, receive: Any, send: Any) -> None:
    """An app that takes its time before it reads the body (a room to load, say)."""
    await asyncio.sleep(0.6)
    await _answer(scope, receive, send)


async def test_the_body_deadline_waits_while_the_server_holds_the_body_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No deadline runs while uvicorn itself stops reading: a body past its buffer that the
    app has not asked for yet, a request pipelined behind another (review: both were
    reset, the earlier request's answer with them); and a steady upload longer than the
    deadline goes through, the deadline being for a pause, not for the whole body."""
    monkeypatch.setattr(uvicorn_protocol, "BODY_TIMEOUT_S", 0.3)
    async with serve_asgi(_answer_slowly, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = b"b" * 300_000
        head = f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n\r\n"
        second = b"POST /y HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        writer.write(head.encode() + big + second)
        for _ in range(2):
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
        writer.close()
    monkeypatch.setattr(uvicorn_protocol, "BODY_TIMEOUT_S", 2.0)  # far above the pauses
    monkeypatch.setattr(uvicorn_protocol, "MIN_BODY_RATE", 2.0)  # bytes a second: 10 come
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n")
        for _ in range(30):  # 3 s in all, a byte every 0.1 s
            await asyncio.sleep(0.1)
            writer.write(b"z")
        answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()


@pytest.mark.parametrize("case", ["expect-100", "past-the-buffer"])
async def test_the_body_deadline_runs_again_once_the_server_reads(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held back while the app had not read, then answered 100 Continue or read past its
    buffer: a client that then sends nothing is reset (review: no deadline ran again)."""
    monkeypatch.setattr(uvicorn_protocol, "BODY_TIMEOUT_S", 0.5)
    async with serve_asgi(_answer_slowly, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if case == "expect-100":
            writer.write(
                b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
            )
            expected = b"HTTP/1.1 100 Continue\r\n\r\n"
        else:
            writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
            writer.write(b"b" * 100_000)
            expected = b""
        assert await _ended(reader) == expected
        writer.close()


async def test_a_body_trickled_below_the_least_rate_is_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A byte now and then, each in time for the pause deadline, but far below the least
    average rate: reset (review: the pause deadline alone let such a body go on forever)."""
    monkeypatch.setattr(uvicorn_protocol, "BODY_TIMEOUT_S", 0.5)
    monkeypatch.setattr(uvicorn_protocol, "MIN_BODY_RATE", 1000.0)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")

        async def trickle() -> None:  # for longer than ``_ended`` waits
            with contextlib.suppress(ConnectionError):
                for _ in range(1000):
                    await asyncio.sleep(0.05)
                    writer.write(b"z")

        trickling = asyncio.create_task(trickle())
        assert await _ended(reader) == b""
        trickling.cancel()
        writer.close()


async def _refuse_past_a_kib(scope: Any, receive: Any, send: Any) -> None:
    """An app that reads a body up to 1 KiB and answers 413 past it (``rest.read_body``)."""
    received, more = 0, True
    while more and received <= 1024:
        message = await receive()
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    status, body = (413, b"no") if received > 1024 else (200, b"ok")
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": body})


def _count_body_pieces(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the parser's body callbacks: in all, and after the request's answer."""
    counts = {"all": 0, "answered": 0}
    on_body = LeanHttpProtocol.on_body

    def counted(protocol: LeanHttpProtocol, body: bytes) -> None:
        counts["all"] += 1
        counts["answered"] += protocol.cycle.response_complete
        on_body(protocol, body)

    monkeypatch.setattr(LeanHttpProtocol, "on_body", counted)
    return counts


CHUNKED_HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_request_answered_before_its_body_ends_closes_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review RD-3: answered 413 (or 401) before its body ended, a request's connection was
    kept and the rest of its body read, chunk by chunk: one-byte chunks sent for as long as
    the client liked, with no key, held the loop for seconds. The answer says ``connection:
    close`` and the connection is closed: nothing sent after it is parsed."""
    pieces = _count_body_pieces(monkeypatch)
    async with serve_asgi(_refuse_past_a_kib, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(CHUNKED_HEAD + b"8\r\naaaaaaaa\r\n" * 200)  # 1,600 bytes
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
        assert await reader.readexactly(2) == b"no"
        with contextlib.suppress(ConnectionError):
            writer.write(
                b"8\r\naaaaaaaa\r\n" * 2000 + b"0\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            await writer.drain()
        assert await _ended(reader) == b""  # no answer to the request after the body
        writer.close()
    assert pieces["answered"] == 0, pieces


async def test_a_body_in_tiny_pieces_is_refused_past_their_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review RD-3: a body's limit bounds its bytes, and each chunk costs a parser callback:
    a MiB in one-byte chunks was a million of them. Past ``MAX_BODY_PIECES`` pieces of
    under ``MIN_PIECE_BYTES`` on average, 400 ``bad_request`` and closed."""
    pieces = _count_body_pieces(monkeypatch)
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):
            writer.write(CHUNKED_HEAD + b"1\r\na\r\n" * 20_000 + b"0\r\n\r\n")
            await writer.drain()
        head, _, body = (await _ended(reader)).partition(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 400"), head
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and "pieces" in error["message"], error
    assert pieces["all"] == MAX_BODY_PIECES + 1, pieces


async def test_chunked_uploads_of_fair_chunks_are_read_and_keep_their_connection() -> None:
    """More chunks than ``MAX_BODY_PIECES``, of twice ``MIN_PIECE_BYTES`` (a read may end
    in one and split it in two pieces), and a body of fewer tiny ones: read, answered, and
    the connection kept for the next."""
    fair = b"80\r\n" + b"f" * 128 + b"\r\n"
    async with serve_asgi(_answer, http=LeanHttpProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunks in (fair * 3000, b"1\r\na\r\n" * 1000, fair):
            writer.write(CHUNKED_HEAD + chunks + b"0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
            assert await reader.readexactly(2) == b"ok"
        writer.close()


async def test_a_socket_keeps_its_attributes_in_a_table_its_class_shares() -> None:
    """Under 30 names of its own (the rest are the server's): past that Python gives each
    object a whole dictionary, 1.3 kB more on every socket (the module's docstring)."""
    async with _pinging_server() as port:
        reader, writer, client = await _raw_client(port)
        while client.state is not State.OPEN:
            client.receive_data(await reader.read(65536))
        sockets = [
            p
            for p in gc.get_objects()
            if type(p) is LeanWebSocketProtocol and p.server and p.server[1] == port
        ]
        assert sockets and all(len(vars(p)) < 30 for p in sockets)
        assert all(p.config is sockets[0].config for p in sockets)
        writer.close()
