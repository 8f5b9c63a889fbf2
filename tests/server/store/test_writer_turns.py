"""Writers' turns: one at a time, a group-commit round right after the write that holds
the turn, a write right after a round."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.store.db import create_engine
from parley.server.store.sessions import Store, StoreTx
from parley.server.store.writer_turns import WriterTurns
from tests.conftest import migrated_database, sqlite_url


async def settle() -> None:
    """Let every task that can run, run (each step of a turn's hand-over is one pass)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Writers:
    """Tasks that each take a turn, note it, and hold it until told to let go."""

    def __init__(self, turns: WriterTurns) -> None:
        self.turns = turns
        self.order: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.done: dict[str, asyncio.Event] = {}

    async def _write(self, name: str, round_: bool) -> None:
        await self.turns.acquire(round_=round_)
        self.order.append(name)
        try:
            await self.done[name].wait()
        finally:
            self.turns.release()

    async def queue(self, name: str, *, round_: bool = False) -> None:
        """Start writer ``name``; returns once it holds the turn or waits for it."""
        self.done[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(self._write(name, round_))
        await settle()

    async def finish(self, name: str) -> None:
        """Writer ``name`` lets go; the turn passes on."""
        self.done[name].set()
        await self.tasks[name]
        await settle()


async def test_writes_alone_take_turns_first_come_first_served() -> None:
    writers = Writers(WriterTurns())
    for name in ("a", "b", "c"):
        await writers.queue(name)
    assert writers.order == ["a"]
    for name in ("a", "b"):
        await writers.finish(name)
    assert writers.order == ["a", "b", "c"]
    await writers.finish("c")
    assert not writers.turns.locked()


async def test_a_round_goes_right_after_the_write_holding_the_turn() -> None:
    writers = Writers(WriterTurns())
    for name in ("w1", "w2", "w3"):
        await writers.queue(name)
    await writers.queue("round", round_=True)
    await writers.finish("w1")
    assert writers.order == ["w1", "round"]  # not behind w2 and w3


async def test_after_a_round_a_waiting_write_goes_before_the_next_round() -> None:
    writers = Writers(WriterTurns())
    await writers.queue("r1", round_=True)
    await writers.queue("w1")
    await writers.queue("w2")
    await writers.queue("r2", round_=True)
    await writers.finish("r1")
    await writers.finish("w1")
    await writers.finish("r2")
    await writers.finish("w2")
    # Rounds back to back (text streaming all the time) never keep a write out long.
    assert writers.order == ["r1", "w1", "r2", "w2"]


async def test_a_writer_cancelled_while_waiting_never_holds_the_turn() -> None:
    writers = Writers(WriterTurns())
    await writers.queue("a")
    await writers.queue("b")
    await writers.queue("c")
    writers.tasks["b"].cancel()
    await settle()
    await writers.finish("a")
    assert writers.order == ["a", "c"]
    with pytest.raises(asyncio.CancelledError):
        await writers.tasks["b"]


async def test_a_writer_cancelled_as_it_is_handed_the_turn_passes_it_on() -> None:
    turns = WriterTurns()
    await turns.acquire()
    handed = asyncio.create_task(turns.acquire())
    after = asyncio.create_task(turns.acquire(round_=True))
    await settle()
    turns.release()  # the turn is ``handed``'s now, before it runs again
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    await after  # it gets the turn: nothing stays locked by a writer that is gone
    assert turns.locked()
    turns.release()
    assert not turns.locked()


async def test_a_release_without_the_turn_is_refused() -> None:
    with pytest.raises(RuntimeError):
        WriterTurns().release()


class RecordingStore(Store):
    """Notes each transaction as its body begins (it holds the turn then), and each group
    commit round made beneath SQLAlchemy as its statements begin."""

    order: list[str]

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.order = []
        appender = self._appender
        assert appender is not None
        append = appender.append

        async def recorded(rows: list[tuple[str, bytes]], wait_s: float) -> list[int]:
            self.order.append("round")
            return await append(rows, wait_s)

        appender.append = recorded  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def transaction(
        self, what: str = "write", *, lock_timeout_s: float | None = None, group_round: bool = False
    ) -> AsyncIterator[StoreTx]:
        async with super().transaction(
            what, lock_timeout_s=lock_timeout_s, group_round=group_round
        ) as tx:
            self.order.append("round" if group_round else what)
            yield tx


async def test_sqlite_a_group_commit_round_is_not_kept_behind_queued_writes(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path)
    await migrated_database(url)
    store = RecordingStore(create_engine(url))
    try:
        await store.create_session("s", "t", "queue", 0)
        store.order.clear()
        release = asyncio.Event()

        async def holder() -> None:
            async with store.transaction("held"):
                await release.wait()

        async def write(name: str) -> None:
            async with store.transaction(name):
                pass

        first = asyncio.create_task(holder())
        await settle()
        writes = [asyncio.create_task(write(f"w{n}")) for n in range(3)]
        await settle()
        stored = store.group.submit("s", b"\x00\x00", None)
        await settle()
        release.set()
        await asyncio.gather(first, stored, *writes)
        assert store.order == ["held", "round", "w0", "w1", "w2"]
        assert (await store.load_doc("s")).updates == [b"\x00\x00"]
    finally:
        await store.close()
