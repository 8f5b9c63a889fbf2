"""The fan-out's lean path (``server.ws.connection.broadcast``): a socket with nothing to
judge gets the frame in one call, every other one goes through ``Connection.send``. Each
test is one way a lean path could skip a judgement: a backlog, the process's budget, a
sync answer's allowance (a socket that joined mid-stream), a closing socket. The last one
runs random sequences of broadcasts, reads, stalls, joins and closes against ``send`` frame
by frame, and compares every socket's bytes, limits and close codes after each step."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.server.runtime.sockets import SessionSockets
from parley.server.ws.connection import Connection, broadcast
from parley.server.ws.direct_send import DirectWriter, binary_frame
from parley.server.ws.send_budget import DropReason, SendBudget
from parley.session.closes import CloseCode
from tests.server.test_send_path import ClosingSocket, Protocol, Stalled, Transport, frames

LIMIT = 1000


class ClientTransport(Transport):
    """A transport whose client takes what is written while it reads, and nothing while
    it does not (``reading``); ``take`` has it read some of what waits."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self.reading:
            self.backlog += len(data)

    def take(self, size: int) -> None:
        self.backlog = max(0, self.backlog - size)


@dataclass
class Socket:
    connection: Connection
    protocol: Protocol
    transport: ClientTransport
    drops: list[DropReason] = field(default_factory=list)


def open_socket(budget: SendBudget | None) -> Socket:
    protocol = Protocol()
    transport = protocol.transport = ClientTransport()
    drops: list[DropReason] = []
    connection = Connection(
        ClosingSocket(transport),  # type: ignore[arg-type]
        user_id="u",
        outbox_limit=10,
        direct=DirectWriter.beneath(protocol.send),
        buffer_limit=LIMIT,
        budget=budget,
        on_drop=drops.append,
    )
    connection.start()
    return Socket(connection, protocol, transport, drops)


def room_of(*sockets: Socket) -> SessionSockets:
    room = SessionSockets(lambda user_id: None)
    for sock in sockets:
        room.attach(sock.connection)
    return room


async def test_a_backlogged_socket_is_held_to_its_limit() -> None:
    reading, stuck = open_socket(None), open_socket(None)
    room = room_of(reading, stuck)
    stuck.transport.reading = False
    room.broadcast(b"a" * 990)  # into an empty backlog: it goes
    assert stuck.connection.unsent() == len(stuck.transport.data)
    room.broadcast(b"b" * 20)  # 990 and more + 20: past 1,000
    assert stuck.drops == [DropReason.SOCKET_LIMIT] and stuck.transport.aborted
    assert stuck.connection.close_code == CloseCode.TRY_AGAIN
    assert reading.drops == [] and len(frames(bytes(reading.transport.data))) == 2


async def test_a_frame_past_the_process_cap_drops_the_stalled_socket_first() -> None:
    budget = SendBudget(total_max_bytes=6000, stall_timeout_s=600)
    stalled = Stalled(3000)
    budget.note(stalled)
    reading = open_socket(budget)
    room_of(reading).broadcast(b"x" * 3500)  # 3,000 + 3,500: past 6,000
    assert stalled.dropped == [DropReason.TOTAL_LIMIT] and reading.drops == []
    assert len(frames(bytes(reading.transport.data))) == 1
    budget.close()


async def test_a_frame_the_kernel_did_not_take_is_watched_by_the_budget() -> None:
    budget = SendBudget(total_max_bytes=1 << 20, stall_timeout_s=600)
    stuck = open_socket(budget)
    stuck.transport.reading = False
    room_of(stuck).broadcast(b"x" * 100)
    assert budget.watching(stuck.connection)
    assert budget.total == stuck.connection.unsent() == len(stuck.transport.data)
    budget.close()


async def test_a_socket_that_joined_mid_stream_loses_its_sync_allowance_once_drained() -> None:
    """The allowance a sync answer gives what follows it ends once the client took the
    answer; a broadcast that wrote past it would leave a slow joiner 5,000 bytes more."""
    joiner = open_socket(None)
    room = room_of(joiner)
    joiner.transport.reading = False
    assert joiner.connection.send_sync([b"s" * 5000])
    room.broadcast(b"a" * 500)  # within the limit on top of the answer
    assert joiner.drops == []
    joiner.transport.take(joiner.transport.backlog)  # took it all
    joiner.transport.reading = True
    room.broadcast(b"b" * 10)
    joiner.transport.reading = False
    room.broadcast(b"c" * 995)  # into an empty backlog: it goes, and waits
    room.broadcast(b"d" * 10)  # past the plain limit: no allowance left
    assert joiner.drops == [DropReason.SOCKET_LIMIT]


async def test_a_sync_allowance_ends_at_the_first_frame_into_an_empty_backlog() -> None:
    """A joiner whose client took the answer at once, then a ping the protocol wrote by
    itself that waits: the next frame finds the writer's backlog empty, which ends the
    allowance, though the bytes taken since the answer dipped under its end."""
    joiner = open_socket(None)
    room = room_of(joiner)
    assert joiner.connection.send_sync([b"s" * 5000])  # taken at once
    joiner.transport.reading = False
    joiner.transport.write(b"\x89\x00")  # a ping, written beneath the writer
    room.broadcast(b"a" * 10)
    room.broadcast(b"b" * 995)  # past the plain limit: the allowance is over
    assert joiner.drops == [DropReason.SOCKET_LIMIT]


async def test_a_closing_socket_is_closed_not_written() -> None:
    closing, reading = open_socket(None), open_socket(None)
    closing.protocol.close_sent = True  # the closing handshake began beneath
    room_of(closing, reading).broadcast(b"x")
    assert closing.connection.closed and closing.connection.finished
    assert closing.transport.data == b"" and len(reading.transport.data) > 0


# -- the lean path against ``send``, frame by frame -------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("broadcast"), st.integers(1, 1400)),
        st.tuples(st.just("stall"), st.integers(0, 2)),
        st.tuples(st.just("read"), st.integers(0, 2), st.integers(0, 3000)),
        st.tuples(st.just("join"), st.integers(0, 2), st.integers(1, 5000)),
        st.tuples(st.just("closing"), st.integers(0, 2)),
        st.tuples(st.just("ping"), st.integers(0, 2)),
        st.tuples(st.just("elsewhere"), st.integers(1, 3000)),
    ),
    max_size=30,
)


def _state(sockets: list[Socket], budget: SendBudget) -> object:
    return (
        budget.total,
        [
            (
                bytes(s.transport.data),
                s.transport.backlog,
                s.transport.aborted,
                s.connection.closed,
                s.connection.close_code,
                s.drops,
                s.connection.unsent(),
                budget.watching(s.connection),
            )
            for s in sockets
        ],
    )


async def _both(cap: int, ops: list[tuple[object, ...]]) -> None:
    worlds = []
    for _ in range(2):
        budget = SendBudget(total_max_bytes=cap, stall_timeout_s=600)
        worlds.append((budget, [open_socket(budget) for _ in range(3)]))
    (lean_budget, lean), (full_budget, full) = worlds
    for op in ops:
        for budget, sockets in worlds:
            if op[0] == "broadcast":
                message = b"m" * int(op[1])  # type: ignore[call-overload]
                frame = binary_frame(message)
                if sockets is lean:
                    broadcast([s.connection for s in sockets], message, frame)
                else:  # in the same order: the budget drops the first it finds past it
                    for sock in sockets:
                        sock.connection.send(message, frame)
                continue
            if op[0] == "elsewhere":  # a stalled socket of another session
                budget.note(Stalled(int(op[1])))  # type: ignore[call-overload]
                continue
            sock = sockets[int(op[1])]  # type: ignore[call-overload]
            if op[0] == "stall":
                sock.transport.reading = False
            elif op[0] == "read":
                sock.transport.take(int(op[2]))  # type: ignore[call-overload]
                sock.transport.reading = sock.transport.backlog == 0
            elif op[0] == "ping":  # written by the protocol itself, past the writer
                sock.transport.write(b"\x89\x00")
            elif op[0] == "join":
                sock.connection.send_sync([b"s" * int(op[2])])  # type: ignore[call-overload]
            else:
                sock.protocol.close_sent = True
        assert _state(lean, lean_budget) == _state(full, full_budget), op
    for budget, sockets in worlds:
        for sock in sockets:
            await sock.connection.wait_closed()
        budget.close()


@settings(max_examples=200, deadline=None)
@given(st.integers(1500, 8000), _OPS)
def test_a_broadcast_does_what_send_does_to_every_socket(
    cap: int, ops: list[tuple[object, ...]]
) -> None:
    asyncio.run(_both(cap, ops))
