"""An awareness client id whose socket closed stays its member's when the server forgets
what it held: the room unloaded, the server restarted gently or killed (SIGKILL), on
SQLite and PostgreSQL (``left_clients``). Before, another member could introduce it then,
and its member's stock client, back, took that member's state for its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import select

from parley.server.store.db import create_engine
from parley.server.store.tables import left_clients
from tests.conftest import RunningServer, ServerProcess, free_port, make_settings, serve_in_process
from tests.server.kept_clients import kept_for_its_member, show_then_leave
from tests.server.test_restart import admin, setup_session, token
from tests.yclient import YClient

MEMBERS = {"alice": "viewer", "vera": "editor", "mallory": "editor"}


async def test_kept_across_the_rooms_unload(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", room_idle_unload_s=0.2)
    async with serve_in_process(settings) as server:
        sid = await server.new_session(MEMBERS)
        alice = await server.connect(sid, "alice")
        await show_then_leave(await server.connect(sid, "vera"), alice, 777)
        await alice.close()
        rooms = server.app.state.parley.rooms
        deadline = time.monotonic() + 20
        while rooms.loaded(sid) is not None:  # unloaded once idle (nobody connected)
            assert time.monotonic() < deadline, "the room was not unloaded"
            await asyncio.sleep(0.05)
        await leaves_it_to_its_member(server, sid)  # loaded again


async def test_kept_across_a_restart(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings) as first:
        sid = await first.new_session(MEMBERS)
        alice = await first.connect(sid, "alice")
        await show_then_leave(await first.connect(sid, "vera"), alice, 777)
    async with serve_in_process(settings) as second:  # another app on the same database
        await leaves_it_to_its_member(second, sid)


async def leaves_it_to_its_member(server: RunningServer, sid: str) -> None:
    """Vera's client 777, left: mallory may not take it, and vera, back, is shown."""
    watcher = await server.connect(sid, "alice")
    mallory = await server.connect(sid, "mallory")
    await kept_for_its_member(lambda: server.connect(sid, "vera"), "vera", mallory, watcher, 777)


async def test_kept_across_a_sigkill(
    database_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    node = ServerProcess(database_url, tmp_path / "data", free_port())
    server_processes.append(node)
    await node.start()
    async with await admin(node.base_url) as http:
        sid = await setup_session(http, MEMBERS)

        async def connect(user: str) -> YClient:
            client = await YClient.connect(node.ws_url, sid, await token(http, sid, user))
            await asyncio.wait_for(client.synced.wait(), 20)
            return client

        alice = await connect("alice")
        await show_then_leave(await connect("vera"), alice, 777)
        await stored(database_url, sid, 777)  # written off the socket's close, soon after it
        node.kill()
        await alice.wait_closed()
        await node.start()
        watcher, mallory = await connect("alice"), await connect("mallory")
        await kept_for_its_member(lambda: connect("vera"), "vera", mallory, watcher, 777)
        for client in (watcher, mallory):
            await client.close()


async def stored(database_url: str, sid: str, client_id: int, timeout_s: float = 20) -> None:
    """Wait until the store keeps ``client_id`` of ``sid`` for its member (polled)."""
    engine = create_engine(database_url)
    query = select(left_clients.c.user_id).where(
        left_clients.c.session_id == sid, left_clients.c.client_id == client_id
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            async with engine.connect() as connection:
                if (await connection.execute(query)).first() is not None:
                    return
            assert time.monotonic() < deadline, f"client {client_id} was not stored"
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
