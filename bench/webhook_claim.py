"""What one claim of the webhook sender costs with a backlog waiting (issue #18).

Fills a SQLite database with ``--backlog`` undelivered deliveries over ``--sessions``
sessions (one subscription), then times ``claim`` (16 at a time, as the sender) and
``next_due``, each in its own transaction like the sender's, and reports the median.

    python -m bench.webhook_claim [--backlog 1000 5000 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from parley.server.store.db import create_engine, migrate
from parley.server.store.outbox import claim, next_due
from parley.server.store.sessions import Store
from parley.server.store.webhooks import create_webhook
from parley.session.events import PromptAccepted

ROUNDS = 20


class Undo(Exception):
    pass


CLAIM_LIMIT = 16


async def measure(url: str, backlog: int, sessions: int) -> dict[str, float]:
    store = Store(create_engine(url))
    try:
        names = [f"s{i}" for i in range(sessions)]
        for name in names:
            await store.create_session(name, "t", "queue", 0)
        async with store.transaction() as tx:
            await create_webhook(tx.connection, "http://x/", ["prompt.accepted"], None, "k", 0)
        per_session = backlog // sessions
        for name in names:
            for start in range(0, per_session, 500):
                async with store.transaction() as tx:
                    count = min(500, per_session - start)
                    await tx.append_events(
                        name, 1, [PromptAccepted(f"p{start + i}", 1, "a") for i in range(count)]
                    )
        claims: list[float] = []
        dues: list[float] = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            async with store.read() as connection:
                await next_due(connection)
            dues.append(time.perf_counter() - started)
            started = time.perf_counter()
            try:
                async with store.transaction() as tx:
                    assert await claim(tx.connection, 2, 1000, CLAIM_LIMIT)
                    claims.append(time.perf_counter() - started)
                    raise Undo  # the same backlog for the next round
            except Undo:
                pass
        return {
            "backlog": backlog,
            "claim_ms": round(statistics.median(claims) * 1000, 2),
            "next_due_ms": round(statistics.median(dues) * 1000, 2),
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    for backlog in args.backlog:
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'claim.db'}"
            migrate(url)
            print(json.dumps(asyncio.run(measure(url, backlog, args.sessions))))


if __name__ == "__main__":
    main()
