"""``/readyz`` needs no key and reads the database: probes asked at once share one run
(review RL: a flood of them is one connection's work, not the pool's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

import parley.server.app as app_module
from parley.server.http.models import Readiness
from parley.server.http.single_flight import SingleFlight
from tests.conftest import RunningServer


async def test_callers_who_ask_while_a_probe_runs_share_its_answer() -> None:
    flight: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def probe() -> int:
        await gate.wait()
        return 7

    callers = [asyncio.ensure_future(flight.run(probe)) for _ in range(10)]
    await asyncio.sleep(0)
    callers[0].cancel()  # one client hangs up: the others still get the answer
    gate.set()
    answers = await asyncio.gather(*callers[1:])
    assert answers == [7] * 9 and flight.runs == 1
    assert await flight.run(probe) == 7 and flight.runs == 2  # asked after: a new run


async def test_a_probes_error_reaches_every_caller_and_the_next_asks_again() -> None:
    flight: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()
    outcomes = iter([RuntimeError("down"), 3])

    async def probe() -> int:
        await gate.wait()
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    callers = [asyncio.ensure_future(flight.run(probe)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    errors = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(e) for e in errors] == ["down"] * 3
    assert await flight.run(probe) == 3 and flight.runs == 2


async def test_readyz_asked_at_once_reads_the_database_once(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    gate = asyncio.Event()
    read = app_module.current_revision

    async def counted(engine: object) -> object:
        nonlocal reads
        reads += 1
        await gate.wait()
        return await read(engine)  # type: ignore[arg-type]

    callers = 0
    all_in = asyncio.Event()

    class Counting(SingleFlight[Readiness]):
        async def run(self, probe: Callable[[], Awaitable[Readiness]]) -> Readiness:
            nonlocal callers
            callers += 1
            if callers == 8:
                all_in.set()
            return await super().run(probe)

    monkeypatch.setattr(app_module, "current_revision", counted)
    server.app.state.parley.readiness = Counting()
    asked = [asyncio.ensure_future(server.http.get("/readyz")) for _ in range(8)]
    await asyncio.wait_for(all_in.wait(), 20)  # every request is in, the first read held
    gate.set()
    answers = await asyncio.gather(*asked)
    assert [a.status_code for a in answers] == [200] * 8
    # The eight came while the first read waited; none of them may start another.
    assert reads == 1
    assert (await server.http.get("/readyz")).status_code == 200 and reads == 2
