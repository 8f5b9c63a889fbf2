"""A socket's one timer: its token's expiry, and the idle timeout while it waits for a frame."""

from __future__ import annotations

import asyncio

from parley.server.ws.deadlines import SocketDeadlines
from parley.session.closes import CloseCode


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[CloseCode, str]] = []
        self.called = asyncio.Event()

    def close(self, code: CloseCode, reason: str) -> None:
        self.seen.append((code, reason))
        self.called.set()


EXPIRED = (CloseCode.UNAUTHENTICATED, "token expired")
IDLE = (CloseCode.GOING_AWAY, "idle timeout")


async def test_a_socket_waiting_past_its_idle_timeout_is_called_idle() -> None:
    calls = Calls()
    deadlines = SocketDeadlines(3600, 0.05, calls.close)
    deadlines.waiting()
    await asyncio.wait_for(calls.called.wait(), 10)
    assert calls.seen == [IDLE]


async def test_a_socket_that_keeps_sending_is_not_idle_and_its_token_still_expires() -> None:
    calls = Calls()
    deadlines = SocketDeadlines(0.3, 1.0, calls.close)
    while not calls.called.is_set():  # a frame every 10 ms, each handled for 10 ms
        deadlines.waiting()
        await asyncio.sleep(0.01)
        deadlines.received()
        await asyncio.sleep(0.01)
    assert calls.seen == [EXPIRED]


async def test_a_socket_busy_with_a_frame_is_not_idle() -> None:
    calls = Calls()
    deadlines = SocketDeadlines(0.2, 0.05, calls.close)
    deadlines.waiting()
    deadlines.received()  # then handles it for longer than the idle timeout
    await asyncio.wait_for(calls.called.wait(), 10)
    assert calls.seen == [EXPIRED]


async def test_an_expired_token_is_called_at_once() -> None:
    calls = Calls()
    SocketDeadlines(-5, 60, calls.close)
    await asyncio.wait_for(calls.called.wait(), 10)
    assert calls.seen == [EXPIRED]
