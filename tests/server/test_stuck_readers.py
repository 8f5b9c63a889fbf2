"""Clients that stop reading, over real sockets (issue #24, item 2): each is dropped, its
unsent bytes are let go, the process's total of unsent bytes goes back to 0, and the other
members never notice. Under ``parley serve``'s direct path and under the outbox path
another ASGI server gets (uvicorn's ``websockets`` implementation)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import websockets

from parley.server.state import AppState
from parley.server.ws.send_budget import SendBudget
from parley.session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url

MIB = 1024 * 1024
MESSAGE_CHARS = 1_000_000


@contextlib.asynccontextmanager
async def big_session(
    tmp_path: Path, mib: int = 4, ws: str | None = None, **overrides: Any
) -> AsyncIterator[tuple[RunningServer, str]]:
    """A server and a session whose shared document is about ``mib`` MiB. The document is
    written by a server of the usual settings first: with a short idle time-out among
    ``overrides``, a loaded machine that took over it for one of alice's 1 MB messages
    closed her socket (1001) while she waited for its ack."""
    settings = partial(
        make_settings,
        sqlite_url(tmp_path),
        tmp_path / "d",
        max_prompt_chars=MESSAGE_CHARS,
        command_burst_bytes=8 * MIB,  # the four 1 MB messages that make the document
    )
    async with serve_in_process(settings(), ws=ws) as server:
        sid = await server.new_session({"alice": "editor", "stuck": "viewer", "bob": "viewer"})
        alice = await server.connect(sid, "alice")
        for n in range(round(mib * MIB / MESSAGE_CHARS)):
            reply = await alice.command(
                {"type": "message", "id": f"m{n}", "text": "x" * MESSAGE_CHARS}
            )
            assert reply["type"] == "ack", reply
        if not overrides:
            yield server, sid
            return
    async with serve_in_process(settings(**overrides), ws=ws) as server:
        await server.connect(sid, "alice")  # ``others_still_served``'s member there all along
        yield server, sid


def lowered(server: RunningServer, cap: int) -> SendBudget:
    """The process's send cap lowered to ``cap`` below the session's first sync: as for a
    session grown before the cap and PARLEY_MAX_SESSION_BYTES were lowered (the settings
    refuse a cap under twice the limit)."""
    budget = state_of(server).send_budget
    budget.total_max_bytes = cap
    return budget


async def stuck_reader(server: RunningServer, sid: str) -> websockets.ClientConnection:
    """A client that asks for the first sync and never reads again (a small receive buffer,
    so the server's bytes back up in the server rather than in this side's kernel)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = server.base_url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    token = await server.token(sid, "stuck")
    client = await websockets.connect(
        f"{server.ws_url}/ws/sessions/{sid}?token={token}", sock=sock, max_size=None
    )
    client.transport.pause_reading()
    await client.send(encode_sync(SyncType.STEP1, b"\x00"))
    return client


def state_of(server: RunningServer) -> AppState:
    state: AppState = server.app.state.parley
    return state


async def until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Wait for a server-side condition (the server's own state: nothing to await)."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def metric(server: RunningServer, line: str) -> float:
    for row in (await server.http.get("/metrics")).text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def drops(server: RunningServer, reason: str) -> float:
    return state_of(server).metrics.send_drops.labels(reason=reason)._value.get()


async def others_still_served(server: RunningServer, sid: str) -> None:
    """A member who was there all along is answered, and a new one syncs the document."""
    alice = server.clients[0]
    reply = await alice.command({"type": "message", "id": "after", "text": "still here"})
    assert reply["type"] == "ack"
    bob = await server.connect(sid, "bob")
    await bob.wait_until(lambda c: any(e["content"] == "still here" for e in c.entries()))
    assert len(bob.entries()) == len(alice.entries())


async def reset_seen_by(client: websockets.ClientConnection) -> int | None:
    """Read again: the server dropped the connection, so it ends (1006: no close frame)."""
    client.transport.resume_reading()
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await client.recv()
    return client.close_code


# uvicorn's ``websockets`` implementation: not sans-I/O, so sockets get the outbox path.
OTHER_SERVER = "websockets"
# (send path, stall deadline): through the outbox a client's progress shows a whole frame
# at a time (when the server's ``send`` returns, its own buffer drained), so a reader that
# must not be taken for stalled gets a longer deadline there.
PATHS = [
    pytest.param(None, 1.0, id="direct"),
    pytest.param(
        OTHER_SERVER,
        3.0,
        id="outbox",
        marks=pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    ),
]
# What a dropped client sees once it reads again: a reset (1006), or through the outbox,
# the close frame if the other server still sent it after the backlog.
DROPPED = {None: {1006}, OTHER_SERVER: {1006, 1013}}


@pytest.mark.parametrize(("ws", "stall_s"), PATHS)
async def test_a_stalled_reader_is_dropped_and_its_bytes_let_go(
    tmp_path: Path, ws: str | None, stall_s: float
) -> None:
    async with big_session(tmp_path, ws=ws, send_stall_timeout_s=stall_s) as (server, sid):
        room = await state_of(server).rooms.get(sid)
        assert all((c.direct is None) == (ws is not None) for c in room.connections)
        budget = state_of(server).send_budget
        stuck = await stuck_reader(server, sid)
        await until(lambda: drops(server, "stalled") == 1)
        await until(lambda: budget.total == 0)
        assert await metric(server, "parley_send_unsent_bytes") == 0
        assert await metric(server, 'parley_send_drops_total{reason="stalled"}') == 1
        await until(lambda: all(c.user_id != "stuck" for c in room.connections))
        await others_still_served(server, sid)
        assert await reset_seen_by(stuck) in DROPPED[ws]


@pytest.mark.parametrize(("ws", "stall_s"), PATHS)
async def test_past_the_process_cap_the_stalled_go_first(
    tmp_path: Path, ws: str | None, stall_s: float
) -> None:
    cap = 6 * MIB  # room for one stuck joiner's first sync, not two
    async with big_session(tmp_path, ws=ws, send_stall_timeout_s=600) as (server, sid):
        budget = lowered(server, cap)
        first = await stuck_reader(server, sid)
        await until(lambda: budget.total > 2 * MIB)
        second = await stuck_reader(server, sid)
        await until(lambda: drops(server, "total_limit") == 1)
        assert budget.total <= cap
        # A member who reads gets the whole document; the stuck one left goes for it.
        await others_still_served(server, sid)
        assert drops(server, "total_limit") == 2 and drops(server, "stalled") == 0
        await until(lambda: budget.total == 0)
        assert await reset_seen_by(first) in DROPPED[ws]
        assert await reset_seen_by(second) in DROPPED[ws]


async def test_a_send_past_the_process_cap_is_refused_with_a_close_code(
    tmp_path: Path,
) -> None:
    async with big_session(tmp_path) as (server, sid):
        lowered(server, MIB)
        token = await server.token(sid, "bob")
        async with websockets.connect(
            f"{server.ws_url}/ws/sessions/{sid}?token={token}", max_size=None
        ) as client:
            await client.send(encode_sync(SyncType.STEP1, b"\x00"))
            with contextlib.suppress(websockets.ConnectionClosed):
                async with asyncio.timeout(30):
                    while True:
                        await client.recv()
        assert client.close_code == 1013
        assert client.close_reason == "server send buffers full; retry later"
        assert drops(server, "total_limit") == 1
        assert state_of(server).send_budget.total == 0
        reply = await server.clients[0].command({"type": "message", "id": "a", "text": "ok"})
        assert reply["type"] == "ack"


async def test_closing_a_socket_does_not_wait_on_a_client_that_is_not_reading(
    tmp_path: Path,
) -> None:
    async with big_session(tmp_path, ws_idle_timeout_s=1.0, send_stall_timeout_s=600) as (
        server,
        sid,
    ):
        budget = state_of(server).send_budget
        stuck = await stuck_reader(server, sid)
        # It sends nothing more, so the idle timeout closes it; its backlog is dropped
        # with the connection rather than kept for a close frame it would never read.
        await until(lambda: drops(server, "closing") == 1)
        await until(lambda: budget.total == 0)
        room = await state_of(server).rooms.get(sid)
        await until(lambda: all(c.user_id != "stuck" for c in room.connections))
        assert await reset_seen_by(stuck) == 1006
