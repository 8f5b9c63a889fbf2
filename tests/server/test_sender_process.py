"""The webhook sender's own process: it is handed the settings (not the keys), starts or
says why not, is woken by the sessions' commits, stops cleanly, and is started again when
it dies. Deliveries through it: tests/server/test_event_webhooks.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from parley.server.outbound.sender_child import parse_handover
from parley.server.outbound.sender_process import (
    NOT_HANDED,
    SenderProcess,
    own_process_possible,
    spawn_child,
)
from parley.server.settings import Settings
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.server.store.webhooks import create_webhook
from parley.session.errors import ConfigurationError
from tests.conftest import (
    ADMIN_KEY,
    SECRET_KEY,
    make_settings,
    migrated_database,
    process_running,
    sender_processes,
    sqlite_url,
)
from tests.server.test_event_webhooks import until


def test_the_process_is_the_default_where_another_process_reaches_the_database() -> None:
    assert Settings.model_fields["webhook_sender"].default == "process"
    assert not own_process_possible("sqlite+aiosqlite://")
    assert not own_process_possible("sqlite+aiosqlite:///:memory:")
    assert own_process_possible("sqlite+aiosqlite:///./parley.db")
    assert own_process_possible("postgresql+asyncpg://u@h/db")


def test_the_handover_carries_the_settings_but_not_the_keys(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", webhook_poll_s=7.5)
    line = json.dumps(
        {"sole_sender": False, "settings": settings.model_dump(mode="json", exclude=NOT_HANDED)}
    ).encode()
    assert ADMIN_KEY.encode() not in line and SECRET_KEY.encode() not in line
    handed, sole_sender = parse_handover(line)
    assert sole_sender is False
    assert handed.model_dump(exclude=NOT_HANDED) == settings.model_dump(exclude=NOT_HANDED)
    assert handed.admin_key is None and handed.secret_key is None
    for bad in (b"not json", b"{}", b'{"sole_sender": true, "settings": {"port": "x"}}'):
        with pytest.raises(ValueError, match="bad handover line"):
            parse_handover(bad)


async def test_a_bad_first_line_is_answered_with_an_error() -> None:
    child = await spawn_child()
    out, _ = await child.communicate(b"not json\n")
    assert out.startswith(b"error bad handover line") and child.returncode == 2


async def sessions_store(tmp_path: Path, *, subscribed: bool = True) -> tuple[str, Store]:
    """A migrated database, with a webhook subscription unless ``subscribed`` is false (a
    server starts its sender's process with itself only when one exists)."""
    url = sqlite_url(tmp_path)
    await migrated_database(url)
    store = Store(create_engine(url))
    if subscribed:
        async with store.transaction("subscribe") as tx:
            await create_webhook(
                tx.connection, "http://127.0.0.1:9/", ["session.created"], None, "s", 0
            )
    return url, store


async def test_the_process_starts_is_woken_and_stops_cleanly(tmp_path: Path) -> None:
    url, sessions = await sessions_store(tmp_path)
    sender = SenderProcess(sessions, make_settings(url, tmp_path / "data"))
    try:
        await sender.start(sole_sender=True)
        child = sender.process
        assert child is not None and sender_processes(os.getpid()) == [child.pid]
        assert sessions.on_outbox == sender.wake
        for _ in range(3):  # from the sessions' loop: harmless with nothing due
            sender.wake()
        await sender.stop()
        assert child.returncode == 0  # it ended on its own, not killed
        assert not process_running(child.pid) and sessions.on_outbox is None
        sender.wake()  # after the stop: ignored
    finally:
        await sessions.close()


async def test_a_child_that_cannot_start_fails_the_start_with_its_reason(
    tmp_path: Path,
) -> None:
    url, sessions = await sessions_store(tmp_path)
    sender = SenderProcess(sessions, make_settings(url, tmp_path / "data", log_level="loud"))
    try:
        with pytest.raises(ConfigurationError, match=r"did not start: error .*Unknown level"):
            await sender.start(sole_sender=True)
        assert sender_processes(os.getpid()) == [] and sessions.on_outbox is None
    finally:
        await sessions.close()


async def test_a_child_that_dies_is_started_again(tmp_path: Path) -> None:
    url, sessions = await sessions_store(tmp_path)
    exits: list[float] = []
    sender = SenderProcess(
        sessions,
        make_settings(url, tmp_path / "data"),
        on_exit=lambda: exits.append(time.monotonic()),
        restart_first_s=0.05,
    )
    try:
        await sender.start(sole_sender=True)
        first = sender.process
        assert first is not None
        first.kill()

        async def replaced() -> bool:
            return sender.process not in (first, None)

        await until(replaced, "a new sender process", timeout_s=60)
        second = sender.process
        assert second is not None and second.returncode is None
        assert len(exits) == 1 and sender_processes(os.getpid()) == [second.pid]
        sender.wake()  # reaches the new child
        await sender.stop()
        assert second.returncode == 0 and len(exits) == 1
    finally:
        await sessions.close()


async def test_without_a_subscription_the_process_starts_at_the_first_delivery(
    tmp_path: Path,
) -> None:
    url, sessions = await sessions_store(tmp_path, subscribed=False)
    sender = SenderProcess(sessions, make_settings(url, tmp_path / "data"))
    try:
        await sender.start(sole_sender=True)
        assert sender.process is None and sender_processes(os.getpid()) == []
        assert sessions.on_outbox == sender.wake
        sender.wake()  # as the commit of the first delivery does
        sender.wake()  # a second one while it starts: still one child

        async def started() -> bool:
            return sender.process is not None and len(sender_processes(os.getpid())) == 1

        await until(started, "the sender's process", timeout_s=60)
        child = sender.process
        assert child is not None and sender_processes(os.getpid()) == [child.pid]
        await sender.stop()
        assert child.returncode == 0 and not process_running(child.pid)
    finally:
        await sessions.close()


async def test_a_cluster_node_starts_the_process_once_a_subscription_exists(
    tmp_path: Path,
) -> None:
    """Review RI-1: a cluster node that writes no delivery itself still starts its child
    once a subscription exists, to claim the deliveries a stopped node left; alone, a
    server waits for its first delivery."""
    url, sessions = await sessions_store(tmp_path, subscribed=False)
    settings = make_settings(url, tmp_path / "data", cluster_poll_s=0.05)
    alone, node = SenderProcess(sessions, settings), SenderProcess(sessions, settings)
    try:
        await alone.start(sole_sender=True)
        await node.start(sole_sender=False)
        assert node.process is None and sender_processes(os.getpid()) == []
        async with sessions.transaction("subscribe") as tx:
            await create_webhook(
                tx.connection, "http://127.0.0.1:9/", ["session.created"], None, "s", 0
            )

        async def started() -> bool:
            return node.process is not None and len(sender_processes(os.getpid())) == 1

        await until(started, "the node's sender process, with no wake-up", timeout_s=60)
        assert alone.process is None
        await node.stop()
        assert sender_processes(os.getpid()) == []
    finally:
        await alone.stop()
        await node.stop()
        await sessions.close()


class _Pipe:
    """The child's stdin as the sender writes it: each write kept, none buffered."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.written = asyncio.Event()
        self.transport = self

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.written.set()


async def test_the_commits_of_a_moment_wake_the_child_once(tmp_path: Path) -> None:
    """Many commits in a row cost one byte to the child, written after them; a commit after
    that byte wakes it again (no wake-up is lost to the coalescing)."""
    url, sessions = await sessions_store(tmp_path)
    sender = SenderProcess(sessions, make_settings(url, tmp_path / "data"))
    pipe = _Pipe()
    sender.process = SimpleNamespace(stdin=pipe)  # type: ignore[assignment]
    sender._watch = asyncio.get_running_loop().create_future()  # the child runs
    try:
        for _ in range(50):
            sender.wake()
        assert pipe.writes == []  # written after the commits of the moment, not per commit
        await asyncio.wait_for(pipe.written.wait(), 10)
        assert pipe.writes == [b"w"]
        pipe.written.clear()
        sender.wake()
        await asyncio.wait_for(pipe.written.wait(), 10)
        assert pipe.writes == [b"w", b"w"]
    finally:
        sender._watch.cancel()
        await sessions.close()
