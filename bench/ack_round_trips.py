"""Round trips to PostgreSQL per acknowledged prompt: a count, not a time.

One session on a scratch PostgreSQL database, its room as the server loads it (no
runner: only the ack's write is counted; ``--runner``: with its runner waiting idle, so
each prompt's run starts in the ack's write, and the next prompt waits until the run
settled), one editor sending prompts through the one door (``dispatch``) one after
another. Every call of asyncpg that waits for the server is
counted (``RoundTrips``): a statement (``PreparedStatement.fetch``, ``executemany``), a
statement prepared for the first time on its connection, and the simple queries, BEGIN
and COMMIT among them. The first prompt warms the connection's prepared statements and
is not reported.

    python -m bench.ack_round_trips [--prompts 5] [--fenced] [--runner] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asyncpg.connection import Connection
from asyncpg.prepared_stmt import PreparedStatement

from bench.run import postgres_database
from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.cluster.lease import LeaseTable
from parley.server.cluster.node import HolderFence
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.store.db import create_engine, migrate
from parley.server.store.sessions import Store
from parley.session.commands import PromptCommand
from parley.session.model import Finish, ModelEvent, ModelRequest, TextDelta, Usage
from parley.session.queue import Policy
from tests.conftest import make_settings

# asyncpg's calls that send to the server and wait for its answer. (Nested calls are
# internal ones: ``Transaction.start`` calls ``Connection.execute``, counted there.)
_SENDING: tuple[tuple[type, str], ...] = (
    (Connection, "execute"),  # simple queries: BEGIN, COMMIT, ROLLBACK
    (Connection, "executemany"),
    (Connection, "prepare"),
    (Connection, "fetch"),
    (Connection, "fetchrow"),  # SQLAlchemy's ping
    (Connection, "fetchval"),
    (PreparedStatement, "fetch"),
    (PreparedStatement, "fetchrow"),
    (PreparedStatement, "executemany"),
)


class RoundTrips:
    """Records asyncpg's round trips while installed (``counting``): each as (what, SQL).
    Only those made by the thread that installed it: the methods are patched on asyncpg's
    classes, and another thread's connections (the test suite drops its databases on one,
    while the next test runs) are not the ones being counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._thread = threading.get_ident()

    def __len__(self) -> int:
        return len(self.calls)

    @contextlib.contextmanager
    def counting(self) -> Iterator[RoundTrips]:
        originals = [(owner, name, getattr(owner, name)) for owner, name in _SENDING]
        try:
            for owner, name, original in originals:
                setattr(owner, name, self._wrap(owner.__name__ + "." + name, original))
            yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def _wrap(self, what: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def counted(target: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread:
                return await original(target, *args, **kwargs)
            query = args[0] if args and isinstance(args[0], str) else ""
            if isinstance(target, PreparedStatement):
                query = target.get_query()
            self.calls.append((what, " ".join(query.split())[:120]))
            return await original(target, *args, **kwargs)

        return counted


class OneWordModel:
    """Answers every call with one word at once."""

    name = "one-word"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        yield TextDelta("ok")
        yield Usage(input_tokens=1, output_tokens=1)
        yield Finish("stop")


async def count(
    url: str, prompts: int, *, fenced: bool = False, runner: bool = False
) -> list[RoundTrips]:
    """The round trips of each of ``prompts`` prompts' acks after a first one, on the
    migrated PostgreSQL database ``url`` (a session ``s`` is made there); ``fenced``: the
    room writes as a cluster node holding the session's lease does (``HolderFence``);
    ``runner``: the session's runner waits idle, so the ack's write starts the run."""
    with tempfile.TemporaryDirectory(prefix="parley-ack-rt-") as scratch:
        store = Store(create_engine(url))
        try:
            await store.create_session("s", "t", Policy.QUEUE.value, 0)
            allow = lambda *_: Decision(True, "bench")  # noqa: E731
            await store.change_member("s", "ann", Member("ann", "editor"), 0, allow)
            room = SessionRoom("s", store=store, settings=make_settings(url, Path(scratch)))
            await room.load("t", Policy.QUEUE)
            if fenced:
                room.writer.document.fence = await holder_fence(store, room)
            running = SessionRunner(room, OneWordModel(), run_timeout_s=30) if runner else None
            if running is not None:
                running.start()
            counted: list[RoundTrips] = []
            try:
                for index in range(prompts + 1):
                    if running is not None:
                        await wait_idle(room)
                    trips = RoundTrips()
                    with trips.counting():
                        answer = await dispatch(room, "ann", PromptCommand(f"c{index}", "hi"))
                    if '"ack"' not in answer:
                        raise RuntimeError(answer)
                    if running is not None and room.active_run is None:
                        raise RuntimeError("the run did not start with its prompt")
                    if index:
                        counted.append(trips)
            finally:
                if running is not None:
                    await running.stop()
            return counted
        finally:
            await store.close()


async def wait_idle(room: SessionRoom, timeout_s: float = 30) -> None:
    """Wait until the room's run settled and its runner waits for work again."""
    for _ in range(int(timeout_s / 0.005)):
        if room.active_run is None and room.runs.idle:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the run did not settle")


async def holder_fence(store: Store, room: SessionRoom) -> HolderFence:
    """The fence of a cluster node that took the session's lease (the node itself stubbed:
    its leases, its lease table, and what it does on losing one)."""
    table = LeaseTable(store.engine, "bench-node", ttl_s=30.0)
    lease = await table.try_acquire(room.session_id)
    if lease is None:
        raise RuntimeError("the session's lease is taken")
    node = SimpleNamespace(leases={room.session_id: lease}, leases_table=table, lost=print)
    return HolderFence(node, room)  # type: ignore[arg-type]


async def _count_on_scratch(prompts: int, fenced: bool, runner: bool) -> list[RoundTrips]:
    async with postgres_database() as url:
        await asyncio.to_thread(migrate, url)
        return await count(url, prompts, fenced=fenced, runner=runner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="list each round trip")
    parser.add_argument("--fenced", action="store_true", help="as a cluster node writes")
    parser.add_argument(
        "--runner", action="store_true", help="an idle runner: the ack's write starts the run"
    )
    args = parser.parse_args()
    counted = asyncio.run(_count_on_scratch(args.prompts, args.fenced, args.runner))
    if args.verbose:
        for what, query in counted[-1].calls:
            print(f"  {what:28} {query}")
    print(f"round trips per acked prompt: {[len(t) for t in counted]}")
    print(f"median: {statistics.median(len(t) for t in counted)}")


if __name__ == "__main__":
    main()
