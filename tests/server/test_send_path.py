"""How frames reach a socket: written straight into uvicorn's protocol under ``parley
serve``, or through a bounded outbox and a sender task under other ASGI servers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocketState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from server.ws.connection import Connection
from server.ws.direct_send import DirectWriter, binary_frame
from server.ws.send_budget import DropReason, SendBudget
from session.closes import CloseCode
from session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import FakeModel
from tests.yclient import all_replies_settled


class Transport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.backlog = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16 * 1024, 64 * 1024)

    def get_extra_info(self, name: str) -> Any:
        return None

    def abort(self) -> None:
        self.aborted = True


class Protocol:
    """The parts of uvicorn's sans-I/O WebSocket protocol the writer uses."""

    def __init__(self) -> None:
        self.conn = ServerProtocol()
        self.conn.state = State.OPEN
        self.transport = Transport()
        self.close_sent = False
        self.disconnected = False

    async def send(self, message: Any) -> None:
        raise AssertionError("the direct path never goes through ASGI send")


def frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    parsed = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            parsed.append(done.value)
    return parsed


def test_the_writer_frames_each_message_into_the_transport() -> None:
    protocol = Protocol()
    writer = DirectWriter.beneath(protocol.send)
    assert writer is not None
    update = encode_sync(SyncType.UPDATE, b"\x01\x02")
    assert writer.write(update) and writer.write('{"type":"ack"}')
    sent = frames(bytes(protocol.transport.data))
    assert [(f.opcode, f.data) for f in sent] == [
        (Opcode.BINARY, update),
        (Opcode.TEXT, b'{"type":"ack"}'),
    ]
    protocol.close_sent = True
    assert not writer.write(update)  # nothing after the close frame


def test_no_writer_beneath_a_server_it_does_not_know() -> None:
    async def send(message: Any) -> None: ...

    assert DirectWriter.beneath(send) is None
    assert DirectWriter.beneath(Transport().write) is None  # type: ignore[arg-type]


async def test_a_client_that_backs_up_its_transport_is_cut_off() -> None:
    protocol = Protocol()
    writer = DirectWriter.beneath(protocol.send)
    dropped: list[DropReason] = []
    connection = Connection(
        websocket=None,  # type: ignore[arg-type]
        user_id="u",
        outbox_limit=10,
        direct=writer,
        buffer_limit=1000,
        on_drop=dropped.append,
    )
    connection.start()
    protocol.transport.backlog = 995  # the kernel took none of it
    assert connection.send(b"x" * 10)  # a frame into an empty backlog goes
    assert not connection.send(b"y" * 10)  # 995 + 10 would pass the limit
    assert connection.closed and connection.close_code == CloseCode.TRY_AGAIN
    assert protocol.transport.aborted and dropped == [DropReason.SOCKET_LIMIT]
    assert connection.finished.is_set()
    assert not connection.send(b"z")


class ClosingSocket:
    """A Starlette WebSocket whose close frame lands behind what the transport holds."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.application_state = WebSocketState.CONNECTED
        self.closes: list[int] = []

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append(code)
        self.transport.backlog += 2 + len(reason or "") + 2
        self.application_state = WebSocketState.DISCONNECTED


async def test_a_close_behind_a_backlog_the_client_never_takes_ends_in_a_reset() -> None:
    protocol = Protocol()
    writer = DirectWriter.beneath(protocol.send)
    socket = ClosingSocket(protocol.transport)
    budget = SendBudget(total_max_bytes=1 << 20, stall_timeout_s=0.2)
    dropped: list[DropReason] = []
    connection = Connection(
        socket,  # type: ignore[arg-type]
        user_id="u",
        outbox_limit=10,
        direct=writer,
        budget=budget,
        on_drop=dropped.append,
    )
    connection.start()
    protocol.transport.backlog = 1000  # under the high-water mark: a close frame can go
    assert connection.send(b"x" * 1000)
    connection.close(CloseCode.GOING_AWAY, "idle timeout")
    await connection.wait_closed()
    assert socket.closes == [1001] and budget.watching(connection)
    for _ in range(200):  # the client never takes a byte: the budget's timer resets it
        if protocol.transport.aborted:
            break
        await asyncio.sleep(0.05)
    assert protocol.transport.aborted and dropped == [DropReason.STALLED]
    assert budget.total == 0
    budget.close()


class StuckSocket:
    """A Starlette WebSocket whose client never reads: the first send never returns."""

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []
        self.stuck = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)
        await self.stuck.wait()

    async def send_text(self, data: str) -> None:
        self.sent.append(data)
        await self.stuck.wait()


async def test_without_a_writer_the_outbox_is_bounded_and_the_rest_unharmed() -> None:
    socket = StuckSocket()
    dropped: list[DropReason] = []
    connection = Connection(
        websocket=socket,  # type: ignore[arg-type]
        user_id="u",
        outbox_limit=3,
        on_drop=dropped.append,
    )
    connection.start()
    assert connection.send(b"1")
    await asyncio.sleep(0)  # the sender takes it and gets stuck writing it
    assert [connection.send(bytes([n])) for n in range(3)] == [True, True, True]
    assert not connection.send(b"over")
    assert connection.close_code == CloseCode.TRY_AGAIN and dropped == [DropReason.SOCKET_LIMIT]
    assert connection.unsent() == 0  # the backlog is let go at once
    assert socket.sent == [b"1"]
    await connection.wait_closed()


async def test_parley_serve_writes_frames_directly(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    client = await server.connect(sid, "alice")
    await client.command({"type": "prompt", "id": "p", "text": "hello"})
    room = await server.app.state.parley.rooms.get(sid)
    assert room.connections and all(c.direct is not None for c in room.connections)
    await client.wait_until(lambda c: len(c.entries()) == 2)


@dataclass
class Paced:
    """A model's pace: ``tokens`` tokens ``gap_s`` apart, noting when it gave each."""

    tokens: int
    gap_s: float
    width: int = 1
    yielded: list[float] = field(default_factory=list)

    async def _next(self) -> None:
        if self.gap_s:
            await asyncio.sleep(self.gap_s)  # slower than the interval: real time is the point
        self.yielded.append(time.monotonic())

    def model(self) -> FakeModel:
        text = [f"{n:04d} " * self.width for n in range(self.tokens)]
        return FakeModel(lambda sent: [s for token in text for s in (self._next, token)])


async def reply_batches(
    tmp_path: Path, provider: Paced, interval_ms: float, sizes: list[int] | None = None
) -> list[float]:
    """When each batch of reply text went out (one document update each); its size
    goes into ``sizes``."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d").model_copy(
        # Unvalidated: a test may hold batches longer than a server may (its 1 s cap), so
        # that a batch held back for the interval would outlast the test's bounded wait.
        update={"stream_interval_ms": interval_ms}
    )
    sent: list[float] = []
    async with serve_in_process(settings, provider.model()) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        room = await server.app.state.parley.rooms.get(sid)
        appending = room.append_reply

        async def noting(active: Any, text: str) -> None:
            sent.append(time.monotonic())
            if sizes is not None:
                sizes.append(len(text))
            await appending(active, text)

        room.append_reply = noting
        await alice.command({"type": "prompt", "id": "p", "text": "go"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        reply = alice.entries()[1]["content"]
        assert reply == "".join(f"{n:04d} " * provider.width for n in range(provider.tokens))
    return sent


async def test_a_fast_model_is_sent_in_batches_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    provider = Paced(tokens=200, gap_s=0.001)
    sent = await reply_batches(tmp_path, provider, interval_ms=20)
    assert 3 <= len(sent) < 100
    # At most one batch per 20 ms slot of the grid the batches keep (a late wake-up does not
    # push the later ones back), plus the last, which goes when the reply ends. A loaded
    # machine stretches the span and so only loosens the bound.
    assert len(sent) <= (sent[-1] - sent[0]) / 0.020 + 2


async def test_a_slow_model_is_sent_each_token_as_it_comes(tmp_path: Path) -> None:
    provider = Paced(tokens=20, gap_s=0.05)
    sent = await reply_batches(tmp_path, provider, interval_ms=20)
    assert len(sent) == 20
    # Not held back for a batch: each token went out before the model gave the next.
    assert all(s < y for s, y in zip(sent, provider.yielded[1:], strict=False))


def test_a_broadcast_frame_is_the_bytes_the_protocol_would_write() -> None:
    protocol = Protocol()
    writer = DirectWriter.beneath(protocol.send)
    assert writer is not None
    update = encode_sync(SyncType.UPDATE, b"\x07" * 300)  # a two-byte length
    assert writer.write(update, binary_frame(update))
    assert writer.write(update)
    half = len(protocol.transport.data) // 2
    assert protocol.transport.data[:half] == protocol.transport.data[half:]
    protocol.conn.state = State.CLOSING  # the client's close frame came in
    assert not writer.write(update, binary_frame(update))


async def test_a_full_batch_is_not_held_back_by_the_interval(tmp_path: Path) -> None:
    provider = Paced(tokens=400, gap_s=0, width=10)  # 20,000 characters at once
    sizes: list[int] = []
    # An interval of ten minutes: a batch that waited it out would never arrive within the
    # reply's bounded wait.
    await reply_batches(tmp_path, provider, interval_ms=600_000, sizes=sizes)
    assert sum(sizes) == 20_000
    full = [n for n, size in enumerate(sizes) if size >= 4096]
    assert len(full) >= 4


async def test_the_end_of_a_reply_is_not_held_back_by_the_interval(tmp_path: Path) -> None:
    provider = Paced(tokens=3, gap_s=0)
    # Ten minutes: a held-back end would never arrive within the reply's bounded wait.
    sent = await reply_batches(tmp_path, provider, interval_ms=600_000)
    assert sent[-1] >= provider.yielded[-1]
