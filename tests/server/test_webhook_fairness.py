"""One receiver that never answers does not hold back the others (review, "bounded"):
forty dead subscriptions made a healthy receiver's deliveries about two minutes late,
each dead attempt holding one of the sender's few slots for the whole timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.test_event_webhooks import FAST, receiving, subscribe, until


@contextlib.asynccontextmanager
async def never_answering() -> AsyncIterator[str]:
    """A loopback endpoint that takes requests and answers none (a receiver that is down
    behind a proxy that accepts, say); its connections are dropped at the end."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()


async def test_dead_receivers_do_not_hold_back_a_healthy_one(tmp_path: Path) -> None:
    """Four slots, six subscriptions whose receiver never answers (each attempt would hold
    its slot for 30 s), made before a healthy one, so their deliveries of each event come
    first: the healthy receiver still gets all of its own while the dead attempts hang."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", **{**FAST, "webhook_concurrency": 4}
    )
    async with (
        never_answering() as dead,
        receiving() as healthy,
        serve_in_process(settings) as server,
    ):
        for _ in range(6):
            await subscribe(server.http, dead, events=["session.created", "member.added"])
        await subscribe(server.http, healthy.url, events=["session.created", "member.added"])
        for _ in range(3):
            sid = await server.new_session({"alice": "editor"})
            added = await server.http.put(
                f"/api/v1/sessions/{sid}/members/bob", json={"role": "viewer"}
            )
            assert added.status_code == 200, added.text

        async def all_delivered() -> bool:
            return len(healthy.received) >= 9  # 3 sessions: created, alice, bob

        # Within the dead attempts' timeout: before the fix the healthy receiver's first
        # delivery waited for a slot that only that timeout frees.
        await until(all_delivered, "the healthy receiver's deliveries", timeout_s=20)
