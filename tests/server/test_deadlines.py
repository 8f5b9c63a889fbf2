"""A socket's one timer: its token's expiry, and the idle timeout while it waits for a frame."""

from __future__ import annotations

import asyncio
import math

from parley.server.ws.deadlines import TICK_S, SocketDeadlines
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


async def test_sockets_due_in_one_tick_share_its_timer_and_a_cancelled_one_is_not_called() -> None:
    loop = asyncio.get_running_loop()
    kept, cancelled = Calls(), Calls()
    now = loop.time()
    in_s = (math.floor(now / TICK_S) + 1.5) * TICK_S - now  # the middle of the next tick
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    first = SocketDeadlines(in_s, 60, kept.close)
    second = SocketDeadlines(in_s, 60, cancelled.close)
    assert first._tick == second._tick  # the same tick: one timer for both
    assert len(loop._scheduled) == scheduled + 1  # type: ignore[attr-defined]
    second.cancel()
    await asyncio.wait_for(kept.called.wait(), 10)
    # Its tick has passed (the other was called in it): it was not called.
    assert kept.seen == [EXPIRED] and cancelled.seen == []


async def test_a_deadline_moved_to_an_earlier_tick_leaves_no_timer_behind() -> None:
    loop = asyncio.get_running_loop()

    def timers() -> int:
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    before = timers()
    deadlines = SocketDeadlines(3600, 60, Calls().close)  # due at its token's expiry
    assert timers() == before + 1
    deadlines.waiting()  # now due at the idle timeout, an earlier tick
    assert timers() == before + 1
    deadlines.cancel()
    assert timers() == before
