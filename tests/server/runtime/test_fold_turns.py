"""server/runtime/fold_turns.py: one fold ahead of a fold at a time, the writer's first."""

from __future__ import annotations

import asyncio
import contextlib

from parley.server.runtime.fold_turns import FoldTurn


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_caller_that_goes_first_is_handed_the_turn_before_those_waiting() -> None:
    turn, order = FoldTurn(), []
    summariser, run, writer = object(), object(), object()
    await turn.take(summariser)

    async def wait(holder: object, name: str, first: bool = False) -> None:
        await turn.take(holder, first=first)
        order.append(name)
        turn.give(holder)

    waiting = [asyncio.ensure_future(wait(run, "run"))]
    await settle()
    waiting.append(asyncio.ensure_future(wait(writer, "writer", first=True)))
    await settle()
    assert turn.wanted_first and order == []
    turn.give(run)  # not its to give
    await settle()
    assert order == []
    giving_way = asyncio.ensure_future(turn.give_way(summariser))
    await asyncio.gather(*waiting, giving_way)
    assert order == ["writer", "run"] and not turn.wanted_first
    turn.give(summariser)
    await asyncio.wait_for(turn.take(object()), 1)  # free again


async def test_a_waiter_cancelled_as_it_is_handed_the_turn_hands_it_on() -> None:
    turn, owner, first, second = FoldTurn(), object(), object(), object()
    await turn.take(owner)
    cancelled = asyncio.ensure_future(turn.take(first))
    after = asyncio.ensure_future(turn.take(second))
    await settle()
    turn.give(owner)  # handed to ``cancelled``'s waiter, not yet resumed
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(after, 1)  # it went on to the next
    turn.give(second)
    await asyncio.wait_for(turn.take(object()), 1)
