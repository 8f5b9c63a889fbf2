"""``StreamTurns``: the members whose replays wait for the session's stream work are woken
in turn, so one member's many waiting streams take no more turns than another's one."""

from __future__ import annotations

import asyncio

from parley.server.runtime.stream_turns import StreamTurns


async def test_a_members_one_stream_takes_every_other_turn_against_sixteen() -> None:
    turns = StreamTurns()
    paid = 0  # events the session's budget has room for
    taken: list[str] = []
    gone = asyncio.Event()

    def owed_s() -> float:
        return 0.0 if paid > 0 else 0.001

    async def replay(user_id: str) -> None:  # a stream taking an event a turn
        nonlocal paid
        while not gone.is_set():
            await turns.take(user_id, owed_s, lambda: None, 0.05)
            paid -= 1
            taken.append(user_id)
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(replay("vera")) for _ in range(16)]
        async with asyncio.timeout(10):
            while turns.turns.waiting() != ["vera"]:  # noqa: ASYNC110 (turns of the loop)
                await asyncio.sleep(0)
        tasks.append(group.create_task(replay("alice")))
        async with asyncio.timeout(10):
            while turns.turns.waiting() != ["vera", "alice"]:  # noqa: ASYNC110
                await asyncio.sleep(0)
        for _ in range(20):  # room for an event once both wait again (it refills slowly)
            async with asyncio.timeout(10):
                while set(turns.turns.waiting()) != {"vera", "alice"}:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            paid = 1
            async with asyncio.timeout(10):
                while paid > 0:  # noqa: ASYNC110 (turns of the loop, no event to wait on)
                    await asyncio.sleep(0)
        gone.set()
        paid = 10**6  # let every waiter go and see it is gone
    assert taken[:20] == ["vera", "alice"] * 10
    assert turns.turns.waiting() == [] and not turns._woken
