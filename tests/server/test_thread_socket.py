"""A side-thread's socket over the real app: an unmodified Yjs client (npm yjs +
y-websocket + ws) syncs bob's side-thread as its reply streams, cannot write it, and is
closed when the thread is deleted; alice's token is refused on it. The client keeps its
``Y.Doc`` across a restart of the server and just syncs again. (The document's rules, a
reload and membership changes: ``tests/server/runtime/test_thread_docs.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from pycrdt import Array, Doc

from parley.session.yprotocol import (
    AwarenessState,
    MessageType,
    SyncType,
    encode_awareness,
    encode_awareness_update,
    encode_sync,
)
from tests.conftest import (
    ADMIN_KEY,
    RunningServer,
    ServerProcess,
    free_port,
    make_settings,
    serve_in_process,
    sqlite_url,
)
from tests.server.test_ws import close_code_of
from tests.stock_client import StockYjsClient, ensure_node_modules

pytestmark = pytest.mark.node


async def test_a_stock_client_syncs_bobs_side_thread_and_alice_is_refused(tmp_path: Path) -> None:
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=20)
    async with serve_in_process(settings) as server:
        await _scenario(server)


async def _scenario(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    bob_token, alice_token = await server.token(sid, "bob"), await server.token(sid, "alice")
    base = f"/api/v1/sessions/{sid}/threads"
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {bob_token}"}
    ) as as_bob:
        opened = await as_bob.post(base, json={"title": "my reading"})
        assert opened.status_code == 201, opened.text
        thread_id = opened.json()["thread_id"]
        threads_url = f"{server.ws_url}/ws/sessions/{sid}/threads"
        assert await close_code_of(f"{threads_url}/{thread_id}?token={alice_token}") == 4404
        assert await close_code_of(f"{threads_url}/nothing?token={bob_token}") == 4404
        # A refusal echoing a non-ASCII id still fits its close frame (review RV41-F2: 1006).
        assert await close_code_of(f"{threads_url}/{quote('é' * 70)}?token={bob_token}") == 4404

        stock = await StockYjsClient.start(threads_url, thread_id, bob_token, name="Bob")
        try:
            await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
            asked = await as_bob.post(f"{base}/{thread_id}/prompts", json={"text": "is it ok?"})
            assert asked.status_code == 202, asked.text
            reply_id = asked.json()["reply_id"]
            dump = await _until(stock, lambda d: _status(d, reply_id) == "done")
            stored = (await as_bob.get(f"{base}/{thread_id}")).json()
            assert dump["thread"]["id"] == thread_id and dump["thread"]["title"] == "my reading"
            assert [(t["id"], t["kind"], t["status"], t["content"]) for t in dump["turns"]] == [
                (t["id"], t["kind"], t["status"], t["text"]) for t in stored["turns"]
            ]
            assert dump["turns"][0]["content"] == "is it ok?"
            # The stock client saw the reply grow piece by piece, not arrive whole.
            assert dump["reply_lengths_seen"][reply_id] > 3

            written = await stock.command({"cmd": "write"})
            assert written["attempted"] == 4
            deleted = await as_bob.delete(f"{base}/{thread_id}")
            assert deleted.status_code == 204
            closed = await stock.wait_event(
                lambda e: e.get("event") == "connection-close" and not e["local"], 10
            )
            assert (closed["code"], closed["reason"]) == (4404, "side-thread deleted")
        finally:
            await stock.close()


async def test_a_presence_update_on_a_side_thread_socket_is_answered(tmp_path: Path) -> None:
    """A stock y-websocket client closes a socket it has heard nothing on for 30 s and
    reconnects (its ``messageReconnectTimeout``); it renews its presence every 15 s, and
    the session's socket answers that by relaying it, the sender included. The side-thread's
    socket answers it too (its one reader is shown its own state), so an idle side-thread
    socket stays open."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"bob": "editor"})
        token = await server.token(sid, "bob")
        opened = await server.http.post(f"/api/v1/sessions/{sid}/threads", json={"as_user": "bob"})
        assert opened.status_code == 201, opened.text
        url = f"{server.ws_url}/ws/sessions/{sid}/threads/{opened.json()['thread_id']}"
        async with websockets.connect(f"{url}?token={token}") as ws:
            here = AwarenessState(1234, 1, {"user": {"name": "Bob"}})
            await ws.send(encode_awareness(encode_awareness_update([here])))
            async with asyncio.timeout(10):
                while True:
                    frame = await ws.recv()
                    if isinstance(frame, bytes) and frame[0] == MessageType.AWARENESS:
                        break


def _forged_update() -> bytes:
    forged = Doc()
    forged.get("turns", type=Array).append("forged")
    return encode_sync(SyncType.UPDATE, forged.get_update())


# A client's write to a side-thread's document, which only the server writes.
FORGED_UPDATE = _forged_update()


async def _bobs_thread_socket(server: RunningServer) -> str:
    """The URL, with his token, of a side-thread socket of bob's new session and thread."""
    sid = await server.new_session({"bob": "editor"})
    token = await server.token(sid, "bob")
    opened = await server.http.post(f"/api/v1/sessions/{sid}/threads", json={"as_user": "bob"})
    assert opened.status_code == 201, opened.text
    thread_id = opened.json()["thread_id"]
    return f"{server.ws_url}/ws/sessions/{sid}/threads/{thread_id}?token={token}"


async def test_writes_on_a_side_thread_socket_are_dropped_and_it_stays(tmp_path: Path) -> None:
    """As on the session's socket (review RE F1): a client's updates to the thread's
    document are dropped and count toward no abuse limit; they were, and a stock client
    whose app typed into it was closed 4429, for good. The socket's first is counted."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", abuse_refusals=3)
    async with serve_in_process(settings) as server:
        url = await _bobs_thread_socket(server)
        async with websockets.connect(url) as ws:
            for _ in range(10):
                await ws.send(FORGED_UPDATE)
            # Frames are handled in order: the echo of a presence update comes after them.
            marker = encode_awareness(encode_awareness_update([AwarenessState(7, 1, {})]))
            await ws.send(marker)
            async with asyncio.timeout(20):
                while await ws.recv() != marker:
                    pass
            assert ws.close_code is None
        # Seen by the operator instead (the client cannot be told): once for the socket.
        registry = server.app.state.parley.metrics.registry
        refused = {"client": "stock"}
        assert registry.get_sample_value("parley_client_writes_refused_total", refused) == 1


async def test_a_side_thread_socket_cut_off_is_told_when_to_come_back(tmp_path: Path) -> None:
    """FX69: a socket closed 4429 for frames past its limits again and again said nothing of
    when to try again; its reason is JSON now (``code``, ``retry_after_ms``, ``message``),
    the wait being the window its refusals are counted in, as on the session's socket."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "data",
        updates_per_second=0.001,
        updates_burst=1,
        abuse_refusals=2,
        abuse_window_s=30,
    )
    async with serve_in_process(settings) as server:
        async with websockets.connect(await _bobs_thread_socket(server)) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(5):
                    await ws.send(FORGED_UPDATE)
                async with asyncio.timeout(20):
                    while True:
                        await ws.recv()
        assert ws.close_code == 4429
        reason = json.loads(ws.close_reason or "")
        assert (reason["code"], reason["retry_after_ms"]) == ("rate_limited", 30_000)
        assert reason["message"] == "too many messages"


def _status(dump: dict[str, Any], turn_id: str) -> str | None:
    return next((t["status"] for t in dump["turns"] if t["id"] == turn_id), None)


async def _until(stock: StockYjsClient, done: Any) -> dict[str, Any]:
    for _ in range(200):
        dump = await stock.dump()
        if done(dump):
            return dump
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached: {dump}")


async def test_a_stock_client_keeps_its_side_thread_document_across_a_restart(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    await asyncio.to_thread(ensure_node_modules)
    node = ServerProcess(
        sqlite_url(tmp_path), tmp_path / "data", free_port(), PARLEY_OFFLINE_TOKEN_DELAY_MS="5"
    )
    server_processes.append(node)
    await node.start()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=node.base_url, headers=admin, timeout=20) as http:
        sid = (await http.post("/api/v1/sessions", json={"title": "t"})).json()["id"]
        await http.put(f"/api/v1/sessions/{sid}/members/bob", json={"role": "editor"})
        token = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})
        bob_token = token.json()["token"]
    base = f"/api/v1/sessions/{sid}/threads"
    async with httpx.AsyncClient(
        base_url=node.base_url, headers={"Authorization": f"Bearer {bob_token}"}, timeout=20
    ) as as_bob:
        thread_id = (await as_bob.post(base, json={"title": "mine"})).json()["thread_id"]
        threads_url = f"{node.ws_url}/ws/sessions/{sid}/threads"
        stock = await StockYjsClient.start(threads_url, thread_id, bob_token, name="Bob")
        try:
            await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
            first = await as_bob.post(f"{base}/{thread_id}/prompts", json={"text": "one"})
            await _until(stock, lambda d: _status(d, first.json()["reply_id"]) == "done")
            node.kill()
            await stock.wait_event(lambda e: e.get("event") == "connection-close", 10)
            await node.start()
            # The provider reconnects with the Y.Doc it kept: the server holds the same
            # document (read back from its log), so it syncs instead of being closed 4410.
            await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 30)
            second = await as_bob.post(f"{base}/{thread_id}/prompts", json={"text": "two"})
            assert second.status_code == 202, second.text
            dump = await _until(stock, lambda d: _status(d, second.json()["reply_id"]) == "done")
            stored = (await as_bob.get(f"{base}/{thread_id}")).json()
            assert [(t["id"], t["status"], t["content"]) for t in dump["turns"]] == [
                (t["id"], t["status"], t["text"]) for t in stored["turns"]
            ]
            assert len(dump["turns"]) == len({t["id"] for t in dump["turns"]}) == 4
            assert [t["content"] for t in dump["turns"][::2]] == ["one", "two"]
            closes = [e for e in stock.history if e.get("event") == "connection-close"]
            assert [e.get("code") for e in closes if e.get("code") == 4410] == []
        finally:
            await stock.close()


async def test_sockets_opened_at_once_on_a_thread_keep_the_users_cap(tmp_path: Path) -> None:
    """A side-thread's socket reads its document before it is counted: the cap is checked
    again after that read, so sockets opened at once cannot all slip under it. Each one
    over it is told to come back (review RK-2: closed 4429, a stock client never did):
    refused at the upgrade (429), or, let in by a race, closed 1013."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_connections_per_user=2)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"bob": "editor"})
        token = await server.token(sid, "bob")
        url = await server.thread_url(sid, token)
        tries = await asyncio.gather(*(_opened_or_refused(url) for _ in range(6)))
        sockets = [ws for ws in tries if not isinstance(ws, int)]
        try:
            opened = await asyncio.gather(*(_first_frame_or_close(ws) for ws in sockets))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
        outcomes = [*opened, *(ws for ws in tries if isinstance(ws, int))]
        assert outcomes.count("open") <= 2, outcomes
        assert outcomes.count(429) + outcomes.count(1013) >= 4, outcomes


async def _opened_or_refused(url: str) -> Any:
    """The socket, or the HTTP status its upgrade was refused with."""
    try:
        return await websockets.connect(url)
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


async def _first_frame_or_close(ws: Any) -> str | int | None:
    """ "open" when the server answers sync step 1 (an empty state vector); else how the
    socket was closed."""
    try:
        async with asyncio.timeout(10):
            await ws.send(bytes([0, 0, 1, 0]))
            await ws.recv()
    except websockets.ConnectionClosed:
        return ws.close_code
    return "open"
