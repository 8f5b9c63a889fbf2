"""Where an idle synced connection's memory goes: tracemalloc by allocation site.

Starts Parley as the benchmark does (``bench.servers.parley_server``, SQLite) with
tracemalloc on, opens ``--warm`` idle synced sockets (which loads the rooms and warms every
cache), dumps a heap snapshot, opens ``--connections`` more into the same rooms, dumps
another, and prints the difference per added connection, grouped by the allocation site
deepest in the server's own code (``--group line`` for the raw site). A connection's cost
is what it adds to rooms already loaded; the ``connections`` workload's figure also counts
the rooms it loads, and tracing itself inflates the resident set, so the RSS printed here
is a hint, not the benchmark's figure.

    python -m bench.connection_memory --connections 2000 --per-room 100 --frames 25
"""

from __future__ import annotations

import argparse
import asyncio
import linecache
import tempfile
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.clients import ClientPool
from bench.run import free_port
from bench.targets import ParleyTarget, Room
from bench.workloads import _connect

# Frames in these files are the machinery, not where a connection's memory is decided.
_NOISE = ("tracemalloc", "asyncio/", "<frozen", "<unknown>")


@dataclass
class TracedParley(ParleyTarget):
    frames: int = 25

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PARLEY_BENCH_TRACEMALLOC"] = str(self.frames)
        return env


def site_of(traceback: tracemalloc.Traceback, group: str) -> str:
    """The frame that names the allocation: the innermost one in Parley's code (or, with
    ``group="line"``, the innermost of all), with the frame that allocated it."""
    frames = list(traceback)  # innermost last (take_snapshot keeps the most recent last)
    innermost = frames[-1]
    where = f"{innermost.filename.rsplit('site-packages/', 1)[-1]}:{innermost.lineno}"
    if group == "line":
        return where
    ours = [
        f
        for f in frames
        if "site-packages" not in f.filename and not any(n in f.filename for n in _NOISE)
    ]
    if not ours:
        return where
    frame = ours[-1]
    code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
    name = frame.filename.split("/parley/", 1)[-1].split("/conn-memory/", 1)[-1]
    return f"{name}:{frame.lineno} ({code}) <- {where}"


def per_connection(before: Path, after: Path, added: int, group: str) -> list[tuple[str, float]]:
    """Bytes per added connection by site, largest first."""
    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    sizes: dict[str, int] = defaultdict(int)
    for stat in new.compare_to(old, "traceback"):
        sizes[site_of(stat.traceback, group)] += stat.size_diff
    return sorted(((s, b / added) for s, b in sizes.items()), key=lambda x: -x[1])


async def measure(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="parley-connmem-"))
    port = free_port()
    url = f"sqlite+aiosqlite:///{workdir / 'parley.db'}"
    target = TracedParley("parley", port, workdir, database_url=url, frames=args.frames)
    pool = ClientPool(2)
    await target.start()
    try:
        assert target.http is not None
        rooms = await target.make_rooms(
            max(1, args.connections // args.per_room), args.per_room, driver=False
        )
        per_room = args.warm // len(rooms)
        warm = [Room(r.name, r.subscriber_urls[:per_room]) for r in rooms]
        await _connect(pool, warm, "none")
        before, after = workdir / "before.heap", workdir / "after.heap"
        await target.http.post("/bench/heap", params={"path": str(before)})
        rss_before = target.rss_bytes()
        await _connect(pool, rooms, "none")
        await asyncio.sleep(args.hold_s)
        held = sum(await pool.call_all("open_sockets"))
        await target.http.post("/bench/heap", params={"path": str(after)})
        rss_after = target.rss_bytes()
        added = held - per_room * len(rooms)
    finally:
        try:
            await pool.call_all("close")
            await pool.close()
        finally:  # the server goes even when the clients failed (it would outlive the run)
            await target.stop()
    sites = per_connection(before, after, added, args.group)
    traced = sum(b for _, b in sites)
    print(f"{added} connections added ({held} held)")
    print(f"traced: {traced:,.0f} B per connection; RSS (tracing on): ", end="")
    print(f"{(rss_after - rss_before) / added:,.0f} B per connection")
    for site, size in sites[: args.top]:
        print(f"{size:9,.0f}  {site}")
    print(f"snapshots kept in {workdir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--per-room", type=int, default=100)
    parser.add_argument("--warm", type=int, default=200, help="sockets open before")
    parser.add_argument("--hold-s", type=float, default=2.0)
    parser.add_argument("--frames", type=int, default=25, help="traceback depth")
    parser.add_argument("--group", choices=("ours", "line"), default="ours")
    parser.add_argument("--top", type=int, default=30)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
