"""How frames reach a socket: written straight into uvicorn's protocol under ``parley
serve``, or through a bounded outbox and a sender task under other ASGI servers. (How a
reply's text is batched into document updates is the runner's: it is tested in a room on
the in-memory store, ``tests/server/runtime/test_batches.py``.)"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocketState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from parley.server.ws.connection import Connection
from parley.server.ws.direct_send import DirectWriter, binary_frame
from parley.server.ws.send_budget import DropReason, SendBudget
from parley.server.ws.uvicorn_protocol import LeanWebSocketProtocol
from parley.session.closes import CloseCode
from parley.session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer


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
    assert connection.finished
    assert not connection.send(b"z")


async def test_what_follows_a_sync_answer_is_held_to_the_limit_on_top_of_it() -> None:
    """Review (stock clients): the first sync of a big session fills the backlog by
    itself; the presence echo or update sent next must not make it pass the socket's
    limit, or a client joining an 8 MiB session was dropped at every try."""
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
    protocol.transport.backlog = 5000  # the kernel takes none of the sync yet
    assert connection.send_sync([b"s" * 5000])
    assert connection.send(b"a" * 600)  # 5,600 unsent: within 1,000 on top of the sync
    protocol.transport.backlog = 5600
    assert not connection.send(b"b" * 600)  # 6,200: past it, as any socket would be
    assert dropped == [DropReason.SOCKET_LIMIT]


class KeepingTransport(Transport):
    """A transport whose client takes nothing: every write waits in it."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.backlog += len(data)


async def test_a_sync_answer_in_several_frames_is_held_as_one() -> None:
    """Review RE-1: a large answer goes as several frames (``sync_chunk_bytes``); together
    they get the allowance the one frame had, and what follows is held to the limit on
    top of them all."""
    protocol = Protocol()
    protocol.transport = KeepingTransport()
    dropped: list[DropReason] = []
    connection = Connection(None, "u", 10, DirectWriter.beneath(protocol.send), 1000)  # type: ignore[arg-type]
    connection.on_drop = dropped.append
    connection.start()
    assert connection.send_sync([b"s" * 990] * 5)  # about 5,000 unsent: the answer's frames
    assert connection.send(b"a" * 500)
    assert dropped == []
    assert not connection.send(b"b" * 600)  # past 1,000 on top of the answer
    assert dropped == [DropReason.SOCKET_LIMIT]


class Stalled:
    """Another socket as the process's budget sees it: a backlog its client never takes."""

    def __init__(self, unsent: int) -> None:
        self.held = unsent
        self.dropped: list[DropReason] = []

    def unsent(self) -> int:
        return self.held

    def taken(self) -> int:
        return 0

    def drop(self, reason: DropReason) -> None:
        self.dropped.append(reason)
        self.held = 0


def reading_connection(budget: SendBudget) -> tuple[Connection, Protocol, list[DropReason]]:
    """A socket whose client takes every byte at once, under ``budget``."""
    protocol = Protocol()
    dropped: list[DropReason] = []
    connection = Connection(
        ClosingSocket(protocol.transport),  # type: ignore[arg-type]
        user_id="u",
        outbox_limit=10,
        direct=DirectWriter.beneath(protocol.send),
        budget=budget,
        on_drop=dropped.append,
    )
    connection.start()
    return connection, protocol, dropped


async def test_a_sync_answer_in_several_frames_makes_room_for_all_of_them_at_once() -> None:
    """Review RE-1: the process cap admits a sync answer's frames together, as it admitted
    the one frame they were: past the cap, the stalled socket is dropped for the answer,
    even when each frame alone would fit (the joiner's client drains them as they go)."""
    budget = SendBudget(total_max_bytes=6000, stall_timeout_s=600)
    stalled = Stalled(3000)
    budget.note(stalled)
    connection, protocol, dropped = reading_connection(budget)
    assert connection.send_sync([b"s" * 990] * 5)  # 3,000 + 4,950: past 6,000
    assert stalled.dropped == [DropReason.TOTAL_LIMIT] and dropped == []
    assert len(frames(bytes(protocol.transport.data))) == 5
    budget.close()


async def test_a_sync_answer_past_the_process_cap_is_refused_whole() -> None:
    """Review RE-1: an answer larger than the process cap is refused with its close code
    before any of its frames goes (not sent frame by frame to a client that drains them)."""
    budget = SendBudget(total_max_bytes=4000, stall_timeout_s=600)
    connection, protocol, dropped = reading_connection(budget)
    assert not connection.send_sync([b"s" * 990] * 5)
    assert dropped == [DropReason.TOTAL_LIMIT]
    assert connection.close_code == CloseCode.TRY_AGAIN
    await connection.wait_closed()
    assert protocol.transport.data == b""  # no frame of the answer went
    budget.close()


async def test_the_allowance_of_a_sync_ends_once_it_drained() -> None:
    protocol = Protocol()
    writer = DirectWriter.beneath(protocol.send)
    connection = Connection(
        websocket=None,  # type: ignore[arg-type]
        user_id="u",
        outbox_limit=10,
        direct=writer,
        buffer_limit=1000,
    )
    connection.start()
    protocol.transport.backlog = 5000
    assert connection.send_sync([b"s" * 5000])
    protocol.transport.backlog = 0  # taken
    assert connection.send(b"a" * 10)
    protocol.transport.backlog = 995
    assert connection.send(b"x")  # into a backlog the writer had not seen yet
    assert not connection.send(b"b" * 10)  # 995 + 10: the plain limit again


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


async def test_a_sync_answer_is_held_whole_until_the_kernel_took_its_last_byte() -> None:
    """Review RE-1: the process cap counts a sync answer in several frames as it counted
    the one frame: the frames go in one write, so the process holds the whole answer until
    its last byte is taken (uvloop keeps a write whole), not only its last frame."""
    protocol = Protocol()
    protocol.transport.backlog = 100  # the kernel took all but the last 100 bytes
    connection = Connection(None, "u", 10, DirectWriter.beneath(protocol.send))  # type: ignore[arg-type]
    connection.start()
    assert connection.send_sync([b"s" * 990] * 5)
    assert len(frames(bytes(protocol.transport.data))) == 5
    assert connection.unsent() == len(protocol.transport.data)


class TakingSocket(StuckSocket):
    """A Starlette WebSocket whose client reads ``frames`` frames, then stops."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    async def send_bytes(self, data: bytes) -> None:
        if len(self.sent) < self.frames:
            self.sent.append(data)
        else:
            await super().send_bytes(data)


async def test_without_a_writer_a_sync_answer_is_in_flight_whole() -> None:
    """Review RE-1: through the outbox, too, the answer is unsent bytes until its last
    frame went, and it takes one place in the outbox (as the one frame it was)."""
    socket = TakingSocket(frames=2)
    connection = Connection(socket, "u", outbox_limit=1)  # type: ignore[arg-type]
    connection.start()
    assert connection.send_sync([b"s" * 990] * 3)
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(socket.sent) == 3  # two taken; the last being sent, never done
    assert connection.unsent() == 3 * 990
    connection.drop(DropReason.STALLED)
    await connection.wait_closed()


async def test_parley_serve_writes_frames_directly(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    client = await server.connect(sid, "alice")
    await client.command({"type": "prompt", "id": "p", "text": "hello"})
    room = await server.app.state.parley.rooms.get(sid)
    assert room.connections and all(c.direct is not None for c in room.connections)
    protocols = [c.direct._protocol for c in room.connections if c.direct is not None]
    assert all(isinstance(p, LeanWebSocketProtocol) for p in protocols)
    assert all(p.request is None and p.response is None for p in protocols)  # let go of
    await client.wait_until(lambda c: len(c.entries()) == 2)


async def test_an_idle_socket_keeps_one_task_and_not_its_handshake(
    sqlite_server: RunningServer,
) -> None:
    """Issue #22: the handler runs in the socket's own task (uvicorn's), and the scope,
    kept as long as the socket, lets go of the request's headers and its token."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "bob": "viewer"})
    first = await server.connect(sid, "alice")
    await first.command({"type": "prompt", "id": "p", "text": "hello"})
    await first.wait_until(lambda c: len(c.entries()) == 2)
    before = _server_tasks()
    more = [await server.connect(sid, "bob") for _ in range(5)]
    room = await server.app.state.parley.rooms.get(sid)
    assert len(room.connections) == 6
    # The sockets' tasks, not others the server started meanwhile (a group-commit round
    # of the reply's last text, an HTTP request's for bob's token still ending).
    added = [t for t in _server_tasks() - before if _socket_code(t)]
    assert len(added) == 5 and all(t.get_coro().__qualname__.endswith("run_asgi") for t in added)
    for connection in room.connections:
        scope = connection.websocket.scope
        assert "query_string" not in scope and "headers" not in scope
        assert scope["path_params"] == {"session_id": sid}
    for client in more:
        await client.close()


def _socket_code(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` runs a WebSocket's code: uvicorn's, Starlette's or Parley's."""
    filename: str = task.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    return any(
        part in filename for part in ("uvicorn/protocols/websockets/", "/starlette/", "/server/ws/")
    )


def _server_tasks() -> set[asyncio.Task[Any]]:
    """The tasks running the server's code (not the test clients')."""
    return {
        t
        for t in asyncio.all_tasks()
        if not any(
            part in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
            for part in ("site-packages/websockets/", "/tests/")
        )
    }


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
