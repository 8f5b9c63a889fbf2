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
from pydantic import ValidationError

from parley.server.settings import Settings
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.stock_client import StockYjsClient, ensure_node_modules
from tests.yclient import YClient

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
