"""A session's size limit (``PARLEY_MAX_SESSION_BYTES``), over real sockets and REST.

Review: nothing limited a session's size; one editor grew it 246 KiB/s, and once its first
sync passed ``PARLEY_SEND_BUFFER_TOTAL_MAX_BYTES`` a stock client was closed 1013 on every
try and never synced. Now members' changes stop at the limit, with ``session_full`` at
every door, and the settings keep the process's send cap at twice the limit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from pycrdt import Array, Doc
from pydantic import ValidationError

from parley.server.settings import Settings
from parley.session.yprotocol import SyncMessage, SyncType, decode_client_frame, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.stock_client import StockYjsClient, ensure_node_modules
from tests.yclient import YClient
from tests.ystate import state_of

MIB = 1024 * 1024


async def _fill(client: YClient, chars: int, most: int) -> tuple[int, dict[str, Any]]:
    """Post messages of ``chars`` characters until one is refused (at most ``most``):
    how many were acked, and the refusal."""
    for n in range(most):
        command = {"type": "message", "id": f"m{chars}-{n}", "text": "x" * chars}
        reply = await client.command(command)
        if reply["type"] != "ack":
            return n, reply
    raise AssertionError(f"{most} messages of {chars} characters were all acked")


async def _rest(server: RunningServer, sid: str, user: str, path: str, text: str) -> Any:
    headers = {"Authorization": f"Bearer {await server.token(sid, user)}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as rest:
        return await rest.post(f"/api/v1/sessions/{sid}{path}", json={"text": text})


async def test_a_full_session_refuses_a_message_or_prompt_at_both_doors_and_stores_nothing(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        max_session_bytes=64 * 1024,
        commands_burst=1000,
        user_commands_per_second=1000,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        acked, refusal = await _fill(alice, 8000, 20)
        assert 4 <= acked < 8 and refusal["code"] == "session_full", refusal
        # What is left under the limit, filled to the last byte a message can take.
        more, refusal = await _fill(alice, 1, 500)
        assert refusal["code"] == "session_full", refusal
        acked += more
        before = await server.transcript(sid)
        socket_codes = [
            (await alice.command({"type": kind, "id": f"{kind}-late", "text": "hi"}))["code"]
            for kind in ("message", "prompt")
        ]
        rest = [await _rest(server, sid, "bob", path, "hi") for path in ("/messages", "/prompts")]
        after = await server.transcript(sid)
    assert socket_codes == ["session_full", "session_full"]
    assert [(r.status_code, r.json()["error"]["code"]) for r in rest] == [
        (409, "session_full"),
        (409, "session_full"),
    ]
    assert after == before and len(after) == acked


@pytest.mark.node
async def test_a_stock_client_joins_a_full_session_under_the_default_caps(
    tmp_path: Path,
) -> None:
    """The default limit fills (1 MB messages, to fill it quickly), then a stock
    y-websocket client joins and syncs, under the default send-buffer caps."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        max_prompt_chars=1_000_000,
        command_burst_bytes=64 * MIB,
        command_bytes_per_s=64 * MIB,
    )
    defaults = Settings()
    assert (settings.max_session_bytes, settings.send_buffer_total_max_bytes) == (
        defaults.max_session_bytes,
        defaults.send_buffer_total_max_bytes,
    )
    assert settings.send_buffer_max_bytes == defaults.send_buffer_max_bytes
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "sam": "viewer"})
        alice = await server.connect(sid, "alice")
        acked, refusal = await _fill(alice, 1_000_000, 40)
        assert refusal["code"] == "session_full" and acked * 1_000_000 > 15 * MIB
        stock = await StockYjsClient.start(
            f"{server.ws_url}/ws/sessions", sid, await server.token(sid, "sam"), name="Sam"
        )
        try:
            await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 60)
            closes = [e for e in stock.history if e.get("event") == "connection-close"]
        finally:
            await stock.close()
    assert closes == []


def test_the_send_cap_cannot_be_set_below_twice_the_session_limit() -> None:
    with pytest.raises(ValidationError, match="PARLEY_MAX_SESSION_BYTES"):
        Settings(send_buffer_total_max_bytes=2 * MIB, max_session_bytes=2 * MIB)
    with pytest.raises(ValidationError, match="at least twice"):
        Settings(send_buffer_total_max_bytes=16 * MIB)  # under the default limit's two
    assert Settings(send_buffer_total_max_bytes=2 * MIB, max_session_bytes=MIB)


CHUNK = 64 * 1024
FRAMING = 16  # a sync frame's own bytes around its update (types and a length)


async def _post(client: YClient, prefix: str, count: int, pairs: int) -> None:
    """Post ``count`` messages of ``pairs`` two-digit numbers each, all acked."""
    for n in range(count):
        text = f"{n:02}" * pairs
        reply = await client.command({"type": "message", "id": f"{prefix}{n}", "text": text})
        assert reply["type"] == "ack", reply


def _chunked_settings(tmp_path: Path) -> Settings:
    return make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        sync_chunk_bytes=CHUNK,
        commands_burst=1000,
        user_commands_per_second=1000,
        command_burst_bytes=64 * MIB,
        command_bytes_per_s=64 * MIB,
    )


async def _sync_frames(server: RunningServer, sid: str, user: str, doc: Doc) -> list[SyncMessage]:
    """The sync frames a raw socket is sent for ``doc``'s step 1, up to its step 2."""
    url = f"{server.ws_url}/ws/sessions/{sid}?token={await server.token(sid, user)}"
    frames: list[SyncMessage] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(encode_sync(SyncType.STEP1, doc.get_state()))
        async with asyncio.timeout(30):
            while not frames or frames[-1].sync_type is not SyncType.STEP2:
                frame = await ws.recv()
                assert isinstance(frame, bytes)
                message = decode_client_frame(frame)
                if isinstance(message, SyncMessage):
                    assert len(frame) <= CHUNK + FRAMING, len(frame)
                    frames.append(message)
    return frames


async def test_a_large_sync_answer_comes_in_chunks_with_the_step_2_last(tmp_path: Path) -> None:
    """Review RE-1: the whole document went as one sync step 2, which a stock client on a
    slow link never received within its 30 s watchdog. Now every frame is within the chunk
    size, the step 2 comes last, and the parts make the same document, for a new client
    and for one that holds part of it."""
    async with serve_in_process(_chunked_settings(tmp_path)) as server:
        sid = await server.new_session({"alice": "editor", "sam": "viewer"})
        alice = await server.connect(sid, "alice")
        await _post(alice, "a", 30, 10_000)
        early = Doc()
        early.apply_update(alice.doc.get_update())
        await _post(alice, "b", 30, 10_000)
        whole = alice.doc.get("transcript", type=Array).to_py()
        assert len(whole) == 60

        frames = await _sync_frames(server, sid, "sam", Doc())
        assert len(frames) > 10
        assert [f.sync_type for f in frames[:-1]] == [SyncType.UPDATE] * (len(frames) - 1)
        fresh = Doc()
        for frame in frames:
            fresh.apply_update(frame.payload)
        assert fresh.get("transcript", type=Array).to_py() == whole
        assert state_of(fresh) == state_of(alice.doc)

        frames = await _sync_frames(server, sid, "sam", early)
        assert len(frames) > 5 and frames[-1].sync_type is SyncType.STEP2
        for frame in frames:
            early.apply_update(frame.payload)
        assert early.get("transcript", type=Array).to_py() == whole

        # Joining while the session changes: the client (pycrdt, as the Python SDK) ends
        # with the document the writer holds, as after a one-frame sync.
        async def write_more() -> None:
            await _post(alice, "c", 20, 2)

        writing = asyncio.create_task(write_more())
        sam = await server.connect(sid, "sam")
        await writing
        await sam.wait_until(lambda c: len(c.entries()) == 80)
        await alice.wait_until(lambda c: len(c.entries()) == 80)
        assert sam.entries() == alice.entries()


@pytest.mark.node
async def test_a_stock_client_is_synced_by_chunks_once_it_holds_them_all(tmp_path: Path) -> None:
    """A stock y-websocket client is sent a large session in frames within the chunk size,
    counts itself synced only once every entry is there, and holds what a one-frame sync
    gave it."""
    await asyncio.to_thread(ensure_node_modules)
    async with serve_in_process(_chunked_settings(tmp_path)) as server:
        sid = await server.new_session({"alice": "editor", "sam": "viewer"})
        alice = await server.connect(sid, "alice")
        await _post(alice, "m", 80, 15_000)
        stock = await StockYjsClient.start(
            f"{server.ws_url}/ws/sessions", sid, await server.token(sid, "sam"), name="Sam"
        )
        try:
            synced = await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 60)
            dump = await stock.dump()
        finally:
            await stock.close()
    # Its sync event fires while it applies the step 2, before that frame is counted.
    assert synced["transcript"] == 80 and len(synced["frame_sizes"]) > 30
    sizes = dump["frame_sizes"]
    assert sum(sizes) > 2 * MIB
    assert max(sizes) <= CHUNK + FRAMING
    one_frame = Doc()
    one_frame.apply_update(alice.doc.get_update())
    entries = one_frame.get("transcript", type=Array).to_py()
    assert [(e["id"], e["content"]) for e in dump["transcript"]] == [
        (e["id"], e["content"]) for e in entries
    ]
