"""Memory a room leaves behind when it is unloaded: a session loaded and unloaded again
and again, as the server does with a session whose members come and go.

One session on the real store (SQLite in WAL mode, a scratch file) is grown to
``--entries`` through the one door (``bench.run_cost``'s corpus and model), then loaded
into a new room and unloaded ``--loads`` times, in ``--rounds`` rounds; after each round
the cyclic collector runs and the process's resident set (its growth since before the
first load), the objects the collector tracks and the pycrdt documents still alive (more
than before the first load) are printed. A room that leaves nothing behind shows a
resident set that stops growing once the allocator holds the peak of one load, and no
document alive.

    python -m bench.room_reloads [--entries 1000] [--loads 50] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
from pathlib import Path

from pycrdt import Doc

from bench.run_cost import SESSION, _open, open_session
from bench.targets import resident_bytes
from parley.server.runtime.room import SessionRoom
from parley.session.queue import Policy

MIB = 1024 * 1024


async def measure(entries: int, loads: int, rounds: int) -> list[dict[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="parley-room-reloads-") as scratch:
        store, settings = await _open(Path(scratch))
        session = await open_session(store, settings)
        await session.grow_to(entries)
        await session.runner.stop()
        session.room.close()
        del session
        gc.collect()
        before, objects = resident_bytes(os.getpid()), gc.get_objects()
        documents = sum(isinstance(o, Doc) for o in objects)  # the process's others
        for done in range(1, rounds + 1):
            for _ in range(loads):
                room = SessionRoom(SESSION, store=store, settings=settings)
                await room.load("bench", Policy.QUEUE)
                room.close()
                del room
            gc.collect()
            tracked = gc.get_objects()
            rows.append(
                {
                    "loads": done * loads,
                    "resident_growth_mib": (resident_bytes(os.getpid()) - before) / MIB,
                    "tracked_objects_growth": len(tracked) - len(objects),
                    "documents_alive": sum(isinstance(o, Doc) for o in tracked) - documents,
                }
            )
            del tracked
            print(_line(rows[-1]), flush=True)
        del objects
        await store.close()
    return rows


def _line(row: dict[str, float]) -> str:
    return (
        f"after {row['loads']:.0f} loads: resident set +{row['resident_growth_mib']:.1f} MiB, "
        f"tracked objects {row['tracked_objects_growth']:+.0f}, "
        f"documents alive {row['documents_alive']:.0f}"
    )


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    return asyncio.run(measure(args.entries, args.loads, args.rounds))


if __name__ == "__main__":
    main()
