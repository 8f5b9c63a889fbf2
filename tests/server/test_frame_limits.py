"""The frame limits of ``parley serve``'s WebSocket parser, sans I/O: bytes in, events and
the close out (over real sockets: ``test_uvicorn_protocol``)."""

from __future__ import annotations

import json

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from parley.server.ws import frame_limits
from parley.server.ws.frame_limits import (
    FRAGMENT_BYTES,
    FRAME_RATE,
    FREE_FRAGMENTS,
    FrameLimitedProtocol,
)
from parley.session.errors import RateLimited, TooLarge
from parley.session.ratelimit import Rate


@pytest.fixture(autouse=True)
def _no_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget that does not refill while a test runs: it counts frames, not time."""
    monkeypatch.setattr(frame_limits, "FRAME_RATE", Rate(per_second=0.0, burst=FRAME_RATE.burst))


def _open() -> FrameLimitedProtocol:
    return FrameLimitedProtocol(state=State.OPEN, max_size=4 * 1024 * 1024)


def _frame(opcode: Opcode, data: bytes = b"", fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


def _closed_with(conn: ServerProtocol) -> int | None:
    return None if conn.close_sent is None else conn.close_sent.code


def test_a_message_of_empty_fragments_stops_the_parser_at_its_limit() -> None:
    conn = _open()
    flood = _frame(Opcode.CONT, fin=False) * 40_000  # 240 kB: one read's worth
    conn.receive_data(_frame(Opcode.TEXT, b"{", fin=False) + flood)
    assert len(conn.events_received()) == FREE_FRAGMENTS
    assert _closed_with(conn) == 1009 and isinstance(conn.parser_exc, TooLarge)
    assert not conn.reader.buffer  # the rest of the read, dropped unparsed
    sent = conn.data_to_send()
    assert Close.parse(sent[0][2:]).code == 1009 and sent[-1] == b""  # then the stream's end
    conn.receive_data(flood)  # read on, it would only be dropped
    assert conn.events_received() == [] and not conn.reader.buffer


def test_a_message_may_take_one_more_fragment_per_kib_it_holds() -> None:
    conn = _open()
    piece = b"x" * FRAGMENT_BYTES
    frames = 4 * FREE_FRAGMENTS
    conn.receive_data(
        _frame(Opcode.BINARY, piece, fin=False)
        + _frame(Opcode.CONT, piece, fin=False) * (frames - 2)
        + _frame(Opcode.CONT, piece)
    )
    assert len(conn.events_received()) == frames and conn.close_sent is None
    # ... and not more: past the free ones, a frame must bring its KiB.
    conn.receive_data(
        _frame(Opcode.BINARY, piece, fin=False)
        + _frame(Opcode.CONT, b"y" * (FRAGMENT_BYTES // 2), fin=False) * (3 * FREE_FRAGMENTS)
    )
    assert _closed_with(conn) == 1009


def test_every_frame_counts_toward_the_sockets_budget() -> None:
    """Pongs nobody asked for, pings, whole messages: each is a frame to parse."""
    conn = _open()
    burst = int(FRAME_RATE.burst)
    kinds = [_frame(Opcode.PONG), _frame(Opcode.PING), _frame(Opcode.BINARY, b"\0")]
    conn.receive_data(b"".join(kinds[n % 3] for n in range(burst)))
    assert len(conn.events_received()) == burst and conn.close_sent is None
    conn.receive_data(_frame(Opcode.PONG) * 10)
    assert conn.events_received() == []
    assert _closed_with(conn) == 4429 and isinstance(conn.parser_exc, RateLimited)
    # FX69: when to come back: once the budget is whole again.
    assert conn.close_sent is not None
    reason = json.loads(conn.close_sent.reason)
    assert (reason["code"], reason["retry_after_ms"]) == ("rate_limited", 5_000)
    assert reason["message"].startswith("more than 1000 frames at once")


def test_a_close_is_taken_past_the_budget() -> None:
    """It ends the reading: the closing handshake completes as usual."""
    conn = _open()
    conn.receive_data(_frame(Opcode.PONG) * int(FRAME_RATE.burst))
    conn.events_received()
    conn.receive_data(_frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    assert [e.opcode for e in conn.events_received()] == [Opcode.CLOSE]
    assert conn.parser_exc is None and _closed_with(conn) == 1000


def test_frames_before_the_handshake_is_answered_count_too() -> None:
    """No close frame may be sent then: the connection is failed without one (its server
    drops it: ``LeanWebSocketProtocol.handle_parser_exception``)."""
    conn = FrameLimitedProtocol(max_size=4 * 1024 * 1024)
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    conn.receive_data(request + _frame(Opcode.PONG) * int(2 * FRAME_RATE.burst))
    assert len(conn.events_received()) == 1 + FRAME_RATE.burst  # the request, the frames
    assert isinstance(conn.parser_exc, RateLimited) and conn.close_sent is None
    assert conn.state is State.CONNECTING and not conn.reader.buffer
