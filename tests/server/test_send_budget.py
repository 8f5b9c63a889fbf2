"""The process-wide budget of unsent bytes, on in-memory sockets and a hand-moved clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from parley.server.ws.send_budget import DropReason, SendBudget


@dataclass(eq=False)
class Sock:
    """A socket as the budget sees it: a backlog its client takes from, or does not."""

    backlog: int = 0
    taken_bytes: int = 0
    drops: list[DropReason] = field(default_factory=list)

    def unsent(self) -> int:
        return self.backlog

    def taken(self) -> int:
        return self.taken_bytes

    def drop(self, reason: DropReason) -> None:
        self.drops.append(reason)
        self.backlog = 0

    def write(self, budget: SendBudget, size: int) -> bool:
        if not budget.admit(self, size):
            return False
        self.backlog += size
        budget.note(self)
        return True

    def read(self, size: int) -> None:
        self.backlog -= size
        self.taken_bytes += size


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_total_counts_every_backlog_and_forgets_an_empty_one() -> None:
    budget = SendBudget(total_max_bytes=100, stall_timeout_s=10, clock=Clock())
    a, b = Sock(), Sock()
    assert a.write(budget, 30) and b.write(budget, 20)
    assert budget.total == 50
    a.read(30)
    assert budget.refresh(0) == [] and budget.total == 20
    assert not budget.watching(a) and budget.watching(b)
    budget.close()


async def test_past_the_cap_the_longest_stalled_goes_first_then_the_largest() -> None:
    clock = Clock()
    budget = SendBudget(total_max_bytes=100, stall_timeout_s=60, clock=clock)
    old_small, new_large, reader = Sock(), Sock(), Sock()
    assert old_small.write(budget, 30)
    clock.now = 5
    assert new_large.write(budget, 40) and reader.write(budget, 20)
    clock.now = 10
    reader.read(10)  # the only one still taking bytes
    assert reader.write(budget, 25)  # 105: the one stalled longest makes room
    assert old_small.drops == [DropReason.TOTAL_LIMIT]
    assert new_large.drops == [] and reader.drops == []
    assert budget.total == 75 and not budget.watching(old_small)
    budget.close()


async def test_a_new_send_bigger_than_what_it_could_free_is_refused() -> None:
    budget = SendBudget(total_max_bytes=100, stall_timeout_s=60, clock=Clock())
    holder, joiner = Sock(), Sock()
    assert holder.write(budget, 50)
    assert not joiner.write(budget, 200)  # past the cap even alone: only it goes
    assert joiner.drops == [DropReason.TOTAL_LIMIT] and holder.drops == []
    assert budget.total == 50
    budget.close()


async def test_a_socket_that_takes_nothing_is_dropped_at_the_deadline() -> None:
    clock = Clock()
    budget = SendBudget(total_max_bytes=1000, stall_timeout_s=2, clock=clock)
    stuck, slow = Sock(), Sock()
    assert stuck.write(budget, 100) and slow.write(budget, 100)
    for second in (1, 2, 3):
        clock.now = second
        slow.read(1)  # slow but reading: never stalled
        stuck.taken_bytes -= 6  # a ping the protocol wrote by itself is no progress
        budget.sweep()
    assert stuck.drops == [DropReason.STALLED] and slow.drops == []
    assert budget.total == 97 and budget.watching(slow)
    budget.close()


async def test_the_timer_runs_while_anything_is_backed_up() -> None:
    budget = SendBudget(total_max_bytes=1000, stall_timeout_s=0.2)  # the real clock
    stuck = Sock()
    assert stuck.write(budget, 10)
    for _ in range(200):  # the timer's sweep drops it
        if stuck.drops:
            break
        await asyncio.sleep(0.05)
    assert stuck.drops == [DropReason.STALLED] and budget.total == 0
    budget.close()
