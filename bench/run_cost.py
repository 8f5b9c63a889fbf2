"""Cost per run as a session grows: the server's own CPU time per run, without the model.

One session on the real store (SQLite in WAL mode, a scratch file), its room and runner as
the server loads them, 8 editors and one socket that takes every frame. The transcript is
grown through the one door (``dispatch``) with the texts of ``bench.context_build``'s
corpus (40% of them repeat earlier ones, exactly or nearly, so the fold has work): two
messages, then a prompt that the model answers, over and over; at each size asked for
(100, 1,000, 5,000 entries by default) ``--runs`` prompts are sent one after another, each
once the previous one settled, and timed:

- **CPU per run**: the process's CPU time (``time.process_time``: every thread of the
  server, the database's included) from sending the prompt to its run settled, minus the
  model's own CPU (the offline model's reply is composed inside a timer), and minus nothing
  else: the document, the store, the queue, the context, the broadcast. The machine is
  shared, so wall time moves with other jobs; CPU time hardly does.
- **Wall time** from the prompt to its ack, and to its run settled.
- **Context build**: the room's own timer around the context builder (its histogram).

The garbage collector is set as ``parley serve`` sets it (``freeze_startup_heap``: what
start-up loaded frozen out of its sight, its thresholds raised), not left at Python's
defaults: the collections' share of a run is part of its cost as served, and grows with
the session's objects.

Between sizes the summariser is let finish (it takes what no longer fits; a run that
overflows pokes it), so each size's runs see a history it has caught up with.

    python -m bench.run_cost [--sizes 100,1000,5000] [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.context_build import USERS, generate
from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.cli import freeze_startup_heap
from parley.server.providers.offline import compose_reply, compose_summary
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.settings import Settings
from parley.server.store.db import create_engine, migrate
from parley.server.store.sessions import Store
from parley.session.commands import MessageCommand, PromptCommand
from parley.session.lifecycle import PromptStatus
from parley.session.model import Finish, ModelEvent, ModelRequest, TextDelta, Usage
from parley.session.queue import Policy

SESSION = "bench"
FINAL = {PromptStatus.DONE, PromptStatus.FAILED, PromptStatus.CANCELLED, PromptStatus.INTERRUPTED}
RESULTS = Path(__file__).parent / "results"


class InstantModel:
    """The offline model's reply, all at once, its composing timed: the model's CPU."""

    name = "parley-offline"

    def __init__(self) -> None:
        self.cpu_s = 0.0

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        started = time.process_time()
        compose = compose_summary if request.purpose == "summary" else compose_reply
        words = compose(request).split(" ")
        self.cpu_s += time.process_time() - started
        for index, word in enumerate(words):
            yield TextDelta(word if index == len(words) - 1 else word + " ")
        yield Usage(input_tokens=len(request.system) // 4 + 1, output_tokens=len(words))
        yield Finish("stop")


class Socket:
    """A member's socket that takes every frame at once (the broadcast's cost, no network)."""

    direct = None  # no writer beneath: a broadcast hands it each frame through ``send``

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.claims = None
        self.frames = 0
        self.changed = asyncio.Event()

    def send(self, message: bytes | str, frame: bytes | None = None) -> bool:
        self.frames += 1
        self.changed.set()
        return True

    def send_json(self, text: str) -> bool:
        return self.send(text)

    def close(self, code: int, reason: str = "") -> None:
        self.changed.set()


class GrowingSession:
    """The session under test, grown through the door with the corpus's texts."""

    def __init__(self, room: SessionRoom, runner: SessionRunner, socket: Socket) -> None:
        self.room = room
        self.runner = runner
        self.socket = socket
        self.texts = [(e.author, e.content) for e in generate(messages=4000).entries]
        self.used = 0
        self.commands = 0

    def entries(self) -> int:
        return len(self.room.doc.entries())

    def _next_text(self) -> tuple[str, str]:
        author, text = self.texts[self.used % len(self.texts)]
        self.used += 1
        return author, text

    async def _send(self, actor: str, command: MessageCommand | PromptCommand) -> dict[str, Any]:
        answer = dict(json.loads(await dispatch(self.room, actor, command)))
        if answer.get("type") == "error":
            raise RuntimeError(f"refused: {answer}")
        return answer

    async def message(self, text: str | None = None) -> None:
        """Send the corpus's next message (``text``: this text instead, by its author)."""
        self.commands += 1
        author, corpus_text = self._next_text()
        await self._send(author, MessageCommand(f"c{self.commands}", text or corpus_text))

    async def prompt(self, text: str | None = None) -> tuple[str, float]:
        """Send a prompt; (its id, seconds to its ack)."""
        self.commands += 1
        author, corpus_text = self._next_text()
        started = time.perf_counter()
        answer = await self._send(author, PromptCommand(f"c{self.commands}", text or corpus_text))
        return str(answer["prompt_id"]), time.perf_counter() - started

    async def settled(self, prompt_id: str) -> None:
        """Wait until the prompt is final and its run has ended."""
        async with asyncio.timeout(120):
            while True:
                if PromptStatus(self.room.doc.entry(prompt_id).status) not in FINAL:
                    self.socket.changed.clear()
                    await self.socket.changed.wait()
                    continue
                active = self.room.active_run
                if active is not None:
                    await active.finished.wait()
                    continue
                return

    async def summarised(self) -> None:
        """Wait until the summariser has nothing left to do."""
        while (task := self.runner.summariser.task) is not None and not task.done():
            await asyncio.wait([task])

    async def grow_to(self, entries: int) -> None:
        """Two messages, then a prompt answered, until the transcript holds ``entries``."""
        step = 0
        while (have := self.entries()) < entries:
            if step % 3 < 2 or entries - have < 2:
                await self.message()
            else:
                prompt_id, _ = await self.prompt()
                await self.settled(prompt_id)
            step += 1
        await self.summarised()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _measure(
    session: GrowingSession, model: InstantModel, runs: int, profile: cProfile.Profile | None
) -> dict[str, Any]:
    """``runs`` prompts, one after another: CPU and wall time each, and the context builds
    (``profile``: profiled meanwhile, the waits between runs left out)."""
    cpu_ms: list[float] = []
    ack_ms: list[float] = []
    settled_ms: list[float] = []
    builds = session.room.metrics.context_build
    builds_before = _histogram(builds)
    for _ in range(runs):
        gc.collect()
        cpu, wall, model_cpu = time.process_time(), time.perf_counter(), model.cpu_s
        if profile is not None:
            profile.enable()
        prompt_id, ack_s = await session.prompt()
        await session.settled(prompt_id)
        if profile is not None:
            profile.disable()
        wall_s = time.perf_counter() - wall
        cpu_s = time.process_time() - cpu - (model.cpu_s - model_cpu)
        cpu_ms.append(cpu_s * 1000)
        ack_ms.append(ack_s * 1000)
        settled_ms.append(wall_s * 1000)
        await session.summarised()
    count, total = (a - b for a, b in zip(_histogram(builds), builds_before, strict=True))
    return {
        "entries": session.entries(),
        "runs": runs,
        "cpu_ms_per_run_median": round(statistics.median(cpu_ms), 2),
        "cpu_ms_per_run_p90": round(_percentile(cpu_ms, 0.9), 2),
        "ack_ms_median": round(statistics.median(ack_ms), 2),
        "settled_ms_median": round(statistics.median(settled_ms), 2),
        "settled_ms_p90": round(_percentile(settled_ms, 0.9), 2),
        "context_builds": int(count),
        "context_build_ms_mean": round(total / count * 1000, 2) if count else None,
    }


def _histogram(histogram: Any) -> tuple[float, float]:
    """(count, sum) of a prometheus histogram without labels."""
    count = total = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


def bench_settings(directory: Path) -> Settings:
    """The settings of the session's server: its database ``bench.db`` in ``directory``."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'bench.db'}",
        data_dir=directory,
        admin_key="bench-admin-key",
        secret_key="bench-secret-key-0123456789abcdef",
        max_pending_per_user=50,
        max_pending_per_session=1000,
        log_level="warning",
        webhook_sender="loop",
    )


async def _open(directory: Path) -> tuple[Store, Settings]:
    settings = bench_settings(directory)
    url = settings.database_url
    await asyncio.to_thread(migrate, url)
    store = Store(create_engine(url))
    await store.create_session(SESSION, "bench", Policy.QUEUE.value, 0)
    for user_id in USERS:
        member = Member(user_id, "editor")
        await store.change_member(SESSION, user_id, member, 0, lambda *_: Decision(True, "b"))
    return store, settings


async def open_session(
    store: Store, settings: Settings, model: InstantModel | None = None
) -> GrowingSession:
    """The bench session's room loaded, its watcher socket in, its runner running (stop
    ``session.runner``, then the store, when done)."""
    room = SessionRoom(SESSION, store=store, settings=settings)
    await room.load("bench", Policy.QUEUE)
    socket = Socket("watcher")
    room.connections.add(socket)  # type: ignore[arg-type]  # takes what the room sends
    runner = SessionRunner(room, model or InstantModel(), settings.run_timeout_s)
    runner.start()
    return GrowingSession(room, runner, socket)


def result_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A results file's contents: its rows, when and on what they were measured."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "store": "sqlite",
        "rows": rows,
    }


async def run(sizes: list[int], runs: int, profile: str | None = None) -> dict[str, Any]:
    """Grow one session to each of ``sizes`` and time ``runs`` runs there; ``profile``: a
    file for the cProfile statistics of the runs at the largest size."""
    with tempfile.TemporaryDirectory(prefix="parley-run-cost-") as scratch:
        store, settings = await _open(Path(scratch))
        model = InstantModel()
        session = await open_session(store, settings, model)
        rows: list[dict[str, Any]] = []
        try:
            for size in sizes:
                started = time.perf_counter()
                await session.grow_to(size)
                grown_s = time.perf_counter() - started
                profiler = cProfile.Profile() if profile and size == sizes[-1] else None
                row = await _measure(session, model, runs, profiler)
                if profiler is not None and profile:
                    profiler.dump_stats(profile)
                row["size"] = size
                row["grown_in_s"] = round(grown_s, 1)
                rows.append(row)
                print(_line(row), file=sys.stderr, flush=True)
        finally:
            await session.runner.stop()
            await store.close()
    return result_of(rows)


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['size']:>6,} entries ({row['entries']:,} after): "
        f"CPU/run {row['cpu_ms_per_run_median']:.2f} ms (p90 {row['cpu_ms_per_run_p90']:.2f}), "
        f"context build {row['context_build_ms_mean']} ms, ack {row['ack_ms_median']:.2f} ms, "
        f"settled {row['settled_ms_median']:.2f} ms (p90 {row['settled_ms_p90']:.2f})"
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        "| Entries | CPU ms per run (median) | p90 | context build ms | ack ms | "
        "ack → settled ms (median) | p90 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['size']:,} | {row['cpu_ms_per_run_median']:.2f} | "
            f"{row['cpu_ms_per_run_p90']:.2f} | {row['context_build_ms_mean']} | "
            f"{row['ack_ms_median']:.2f} | {row['settled_ms_median']:.2f} | "
            f"{row['settled_ms_p90']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="transcript entries")
    parser.add_argument("--runs", type=int, default=20, help="runs timed at each size")
    parser.add_argument("--profile", help="cProfile the runs at the largest size into this file")
    parser.add_argument("--json", help="the results file (default bench/results/run-cost-DATE)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    result = asyncio.run(run(sizes, args.runs, args.profile))
    print(table(result))
    write_result(result, args.json, "run-cost")
    return result


def write_result(result: dict[str, Any], path: str | None, stem: str) -> None:
    """Write ``result`` to ``path``, by default ``bench/results/<stem>-<today>.json``."""
    today = datetime.date.today().isoformat()
    out = Path(path) if path else RESULTS / f"{stem}-{today}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    freeze_startup_heap()  # the collector as ``parley serve`` sets it before serving
    main(sys.argv[1:])
