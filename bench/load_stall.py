"""What loading a long session costs the other sessions: the longest stall of the event loop
while a room loads a session of ``--sizes`` entries, and its first context build after.

One session on the real store (SQLite in WAL mode, a scratch file) is grown through the one
door (``bench.run_cost``'s corpus and model: two messages, then a prompt the model answers,
over and over); at each size the store's file is copied, and a new process-like room loads
it, with the collector set as ``parley serve`` sets it (``freeze_startup_heap``) and the
memos of texts cleared (a restart keeps none). A ticker task yields to the loop as often as
it can meanwhile: the longest gap between two of its turns is the longest any other socket
of the node would have waited; the most CPU time the loop's thread spent between two of
its turns (``time.thread_time``) is the longest hold, which a loaded machine's scheduling
does not lengthen. Then the room's first history-alone build is timed (the one a prompt or
a context preview makes first).

With ``--short`` the session is grown with short messages alone ("note N"), the most
entries the default 16 MiB document holds (60,000).

    python -m bench.load_stall [--sizes 2000,6000] [--rounds 3] [--short] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run_cost import (
    SESSION,
    _open,
    bench_settings,
    open_session,
    result_of,
    write_result,
)
from parley.server.cli import freeze_startup_heap
from parley.server.runtime.room import SessionRoom
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.session.queue import Policy
from parley.session.shape import shape_of
from parley.session.tokens import count_tokens


def _copy_database(source: Path, target: Path) -> None:
    """A copy of an SQLite database, with its write-ahead log: what is not checkpointed
    yet is only there."""
    shutil.copy(source, target)
    wal = source.with_name(source.name + "-wal")
    if wal.exists():
        shutil.copy(wal, target.with_name(target.name + "-wal"))


async def _grow(directory: Path, sizes: list[int], short: bool) -> list[tuple[int, Path]]:
    """The session grown to each size, its database file copied aside at each (``short``:
    of short messages alone)."""
    store, settings = await _open(directory)
    session = await open_session(store, settings)
    copies = []
    try:
        for size in sizes:
            if short:
                while (have := session.entries()) < size:
                    await session.message(f"note {have}")
            else:
                await session.grow_to(size)
            copy = directory / f"grown-{size}.db"
            _copy_database(directory / "bench.db", copy)
            copies.append((session.entries(), copy))
    finally:
        await session.runner.stop()
        await store.close()
    return copies


async def _load(source: Path, scratch: Path) -> dict[str, float]:
    """One load of the session stored in ``source``: its time, the longest stall, the
    first build."""
    _copy_database(source, scratch / "bench.db")
    settings = bench_settings(scratch)
    store = Store(create_engine(settings.database_url))
    await store.load_doc(SESSION)  # the engine's first connection, not the load's cost
    shape_of.clear()
    count_tokens.clear()
    gaps: list[float] = []
    holds: list[float] = []
    loading = True

    async def ticker() -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while loading:
            await asyncio.sleep(0)
            now, now_cpu = time.perf_counter(), time.thread_time()
            gaps.append(now - last)
            holds.append(now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    room = SessionRoom(SESSION, store=store, settings=settings)
    started = time.perf_counter()
    await room.load("bench", Policy.QUEUE)
    loaded = time.perf_counter()
    loading = False
    await ticking
    build_started = time.perf_counter()
    room.context.build(())
    built = time.perf_counter()
    await store.close()
    return {
        "loaded_entries": len(room.doc.entries()),
        "load_ms": (loaded - started) * 1000,
        "longest_stall_ms": max(gaps, default=0.0) * 1000,
        "longest_hold_cpu_ms": max(holds, default=0.0) * 1000,
        "turns": len(gaps),
        "first_build_ms": (built - build_started) * 1000,
    }


async def run(sizes: list[int], rounds: int, short: bool = False) -> dict[str, Any]:
    """Grow a session to each of ``sizes`` and load it ``rounds`` times (``main`` sets the
    collector as ``parley serve`` does first)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="parley-load-stall-") as scratch:
        grown = await _grow(Path(scratch), sizes, short)
        for (entries, copy), size in zip(grown, sizes, strict=True):
            loads = []
            for n in range(rounds):
                place = Path(scratch) / f"load-{size}-{n}"
                place.mkdir()
                loads.append(await _load(copy, place))
            row: dict[str, Any] = {"size": size, "entries": entries, "rounds": rounds}
            row["loaded_entries"] = loads[0]["loaded_entries"]
            for key in ("load_ms", "longest_stall_ms", "longest_hold_cpu_ms", "first_build_ms"):
                values = [load[key] for load in loads]
                row[f"{key}_median"] = round(statistics.median(values), 1)
                row[f"{key}_max"] = round(max(values), 1)
            rows.append(row)
            print(_line(row), file=sys.stderr, flush=True)
    return result_of(rows)


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['entries']:>6,} entries: load {row['load_ms_median']:.0f} ms, longest stall "
        f"{row['longest_stall_ms_median']:.1f} ms (max {row['longest_stall_ms_max']:.1f}), "
        f"longest hold {row['longest_hold_cpu_ms_median']:.1f} ms of CPU, "
        f"first build {row['first_build_ms_median']:.1f} ms"
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        "| Entries | load ms (median) | longest stall ms (median) | max "
        "| longest hold, ms of CPU (median) | max | first build ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['entries']:,} | {row['load_ms_median']:.0f} | "
            f"{row['longest_stall_ms_median']:.1f} | {row['longest_stall_ms_max']:.1f} | "
            f"{row['longest_hold_cpu_ms_median']:.1f} | {row['longest_hold_cpu_ms_max']:.1f} | "
            f"{row['first_build_ms_median']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,6000", help="transcript entries")
    parser.add_argument("--rounds", type=int, default=3, help="loads timed at each size")
    parser.add_argument(
        "--short",
        action="store_true",
        help="grow the session with short messages alone (60,000 fit the 16 MiB default)",
    )
    parser.add_argument("--json", help="the results file (default bench/results/load-stall-DATE)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    freeze_startup_heap()
    result = asyncio.run(run(sizes, args.rounds, args.short))
    print(table(result))
    write_result(result, args.json, "load-stall")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
