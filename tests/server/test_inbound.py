"""The bytes a member's sockets make the server read (``server.ws.inbound``): past the
budget their sockets are not read until it refills, while other members' frames are
handled; legitimate traffic, a message of the largest size included, is never held (a
stock client's: ``test_stock_client``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from pycrdt import write_var_uint

from parley.server.ws import endpoint
from parley.server.ws.inbound import InboundMeter
from parley.session.ratelimit import Rate
from parley.session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url

KIB = 1024
MIB = 1024 * KIB
OTHER_SERVER = "websockets"  # uvicorn's: no protocol of Parley's beneath (the handler counts)
SERVERS = [
    pytest.param(None, id="parley-serve"),
    pytest.param(
        OTHER_SERVER,
        id="other-asgi-server",
        marks=pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    ),
]


class Held:
    """A reader as the meter sees it: told when it may read again."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    def release_reading(self) -> None:
        self.released.set()


async def test_within_the_burst_the_meter_counts_without_reading_the_clock() -> None:
    looks: list[float] = []

    def clock() -> float:
        looks.append(0.0)
        return 0.0

    meter = InboundMeter(Rate(per_second=1000, burst=10_000), clock)
    looks.clear()
    assert not any(meter.over(1000) for _ in range(10))
    assert looks == [] and meter.read_bytes == 10_000


async def test_past_the_burst_the_readers_wait_until_the_debt_is_paid() -> None:
    now = [0.0]
    shortfalls: list[float] = []
    meter = InboundMeter(
        Rate(per_second=1e6, burst=1000), lambda: now[0], lambda: shortfalls.append(now[0])
    )
    first, second = Held(), Held()
    assert not meter.over(1000)  # the burst, at once
    assert meter.over(500)
    meter.hold(first)
    assert meter.over(300)  # another socket of the member, read before it was held
    meter.hold(second)
    assert meter.holds(first) and meter.holds(second) and meter.short()
    assert len(shortfalls) == 1  # one shortfall, however many sockets it holds
    now[0] += 0.0005  # half of the 800 bytes owed paid back: still short
    assert meter.short() and meter.holds(first)
    now[0] += 0.0005
    async with asyncio.timeout(10):
        await first.released.wait()
        await second.released.wait()
    assert not meter.holds(first) and not meter.short() and meter.read_bytes == 1800


async def test_a_handler_waits_for_the_refill() -> None:
    now = [0.0]
    meter = InboundMeter(Rate(per_second=1e6, burst=100), lambda: now[0])
    await meter.refilled()  # within the budget: at once
    assert meter.over(5000)
    waiting = asyncio.create_task(meter.refilled())
    await asyncio.sleep(0)
    assert not waiting.done()
    now[0] += 1.0
    async with asyncio.timeout(10):
        await waiting


def big_sync_request(size: int) -> bytes:
    """A sync step 1 whose state vector lists many clients: ``size`` bytes or so."""
    pairs = [write_var_uint(n) + write_var_uint(1) for n in range(1, size // 4)]
    return encode_sync(SyncType.STEP1, write_var_uint(len(pairs)) + b"".join(pairs))


async def _until(check: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 (counts that no event tells of)
            await asyncio.sleep(0.01)


async def _metric(server: RunningServer, name: str) -> float:
    value = server.app.state.parley.metrics.registry.get_sample_value(name)
    return float(value or 0.0)


async def _socket(server: RunningServer, sid: str, user_id: str) -> Any:
    token = await server.token(sid, user_id)
    return await websockets.connect(
        f"{server.ws_url}/ws/sessions/{sid}?token={token}", max_size=None, ping_interval=None
    )


async def _answered(ws: Any, command_id: str) -> dict[str, Any]:
    """Read ``ws`` until the reply to ``command_id``."""
    while True:
        message = await ws.recv()
        if isinstance(message, str) and json.loads(message).get("id") == command_id:
            reply: dict[str, Any] = json.loads(message)
            return reply


@pytest.mark.parametrize("ws", SERVERS)
async def test_a_member_past_the_budget_is_not_read_while_another_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ws: str | None
) -> None:
    """Review R2-1: a viewer's 192 MB of frames were read as fast as they came, and another
    member's acks waited. Counted by what the server handled, not by time: when the other
    member's commands are answered, the viewer's frames handled are within the burst, one
    frame and what the rate refilled meanwhile; the rest follows as it refills."""
    burst, rate, frame_bytes, frames = 1 * MIB, 1 * MIB, 512 * KIB, 16
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "data",
        inbound_burst_bytes=burst,
        inbound_bytes_per_s=rate,
    )
    handled: collections.Counter[str] = collections.Counter()
    on_binary = endpoint._on_binary

    async def counted(room: Any, connection: Any, presence: Any, data: bytes, *rest: Any) -> None:
        handled[connection.user_id] += len(data)
        await on_binary(room, connection, presence, data, *rest)

    monkeypatch.setattr(endpoint, "_on_binary", counted)
    frame = big_sync_request(frame_bytes)
    assert len(frame) <= frame_bytes
    async with serve_in_process(settings, ws=ws) as server:
        sid = await server.new_session({"vera": "viewer", "erin": "editor"})
        erin = await server.connect(sid, "erin")
        vera = await _socket(server, sid, "vera")
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def flood() -> None:
            for _ in range(frames):
                await vera.send(frame)
            await vera.send(json.dumps({"type": "cancel", "id": "done", "prompt_id": "none"}))

        flooding = asyncio.create_task(flood())
        try:
            await _until(lambda: handled["vera"] >= burst)
            for n in range(5):
                reply = await erin.command({"type": "message", "id": f"m{n}", "text": "."})
                assert reply["type"] == "ack", reply
            refilled = rate * (loop.time() - started)
            assert handled["vera"] <= burst + frame_bytes + refilled, (handled, refilled)
            assert await _metric(server, "parley_inbound_pauses_total") >= 1
            # Held back, not refused: every frame is handled as the budget refills.
            async with asyncio.timeout(60):
                done = await _answered(vera, "done")
            assert done["type"] == "error" and handled["vera"] == frames * len(frame)
            await flooding
        finally:
            flooding.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await flooding
            await vera.close()


async def test_a_message_of_the_largest_size_goes_through_at_once(tmp_path: Path) -> None:
    """The default burst holds a message of ``PARLEY_MAX_WS_MESSAGE_BYTES``: it is read and
    answered without a pause."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    frame = big_sync_request(settings.max_ws_message_bytes - 64)
    assert len(frame) <= settings.max_ws_message_bytes
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"vera": "viewer"})
        vera = await _socket(server, sid, "vera")
        try:
            await vera.send(frame)
            await vera.send(json.dumps({"type": "cancel", "id": "done", "prompt_id": "none"}))
            async with asyncio.timeout(30):
                assert (await _answered(vera, "done"))["type"] == "error"
        finally:
            await vera.close()
        room = await server.app.state.parley.rooms.get(sid)
        assert room.inbound("vera").read_bytes >= len(frame)
        assert await _metric(server, "parley_inbound_pauses_total") == 0
