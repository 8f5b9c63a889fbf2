"""The webhook sender's own thread: it starts with its own loop and store, is woken by
the sessions' commits, and ends with the server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from parley.server.outbound.sender_thread import SenderThread, own_thread_possible
from parley.server.store.db import create_engine, migrate
from parley.server.store.sessions import Store
from tests.conftest import make_settings, sqlite_url


def test_an_in_memory_database_keeps_the_sender_on_the_loop() -> None:
    assert not own_thread_possible("sqlite+aiosqlite://")
    assert not own_thread_possible("sqlite+aiosqlite:///:memory:")
    assert own_thread_possible("sqlite+aiosqlite:///./parley.db")
    assert own_thread_possible("postgresql+asyncpg://u@h/db")


async def test_the_thread_starts_is_woken_by_commits_and_stops(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await asyncio.to_thread(migrate, url)
    sessions = Store(create_engine(url))
    sender = SenderThread(sessions, make_settings(url, tmp_path / "data"), time.time)
    try:
        await sender.start(sole_sender=True)
        assert sender._thread is not None and sender._thread.is_alive()
        assert sessions.on_outbox == sender.wake
        sender.wake()  # from the sessions' thread: harmless with nothing due
        await sender.stop()
        assert not sender._thread.is_alive()
        assert sessions.on_outbox is None
        sender.wake()  # after the stop: ignored
    finally:
        await sessions.close()
