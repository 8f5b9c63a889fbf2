"""Hostile and unlucky clients: origins, rate limits, slow readers, idle sockets, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import websockets

from session.model import ModelEvent, ModelRequest, TextDelta
from session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.yclient import all_replies_settled


async def close_code(url: str, **kwargs: object) -> int | None:
    async with websockets.connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed:
            pass
        except TimeoutError:
            return None
        return ws.close_code


async def test_browser_origins_are_checked_at_the_handshake(tmp_path: Path) -> None:
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        sid = await server.new_session({"alice": "editor"})
        url = f"{server.ws_url}/ws/sessions/{sid}?token={await server.token(sid, 'alice')}"
        assert await close_code(url, origin="https://evil.example") == 4403
        assert await close_code(url, origin=server.base_url) is None  # same host: stays open
        assert await close_code(url) is None  # no Origin: not a browser
    settings = make_settings(
        sqlite_url(tmp_path, "q.db"),
        tmp_path / "e",
        allowed_origins=["https://app.example"],
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        url = f"{server.ws_url}/ws/sessions/{sid}?token={await server.token(sid, 'alice')}"
        assert await close_code(url, origin="https://app.example") is None
        assert await close_code(url, origin="https://app.example.evil") == 4403


async def test_command_rate_limits_then_cut_off(tmp_path: Path) -> None:
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        commands_per_second=1,
        commands_burst=3,
        abuse_refusals=5,
        abuse_window_s=60,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        replies = [
            await alice.command({"type": "message", "id": str(n), "text": "spam"}) for n in range(8)
        ]
        kinds = [r.get("code", r["type"]) for r in replies]
        assert kinds[:3] == ["ack"] * 3 and kinds[3:] == ["rate_limited"] * 5
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await alice.send_raw('{"type": "message", "id": "x", "text": "more"}')
        assert await alice.wait_closed() == 4429
        ok = await bob.command({"type": "message", "id": "b", "text": "I am fine"})
        assert ok["type"] == "ack"


class FloodProvider:
    """Streams large tokens as fast as it can, then stops."""

    name = "flood"

    def __init__(self, tokens: int, size: int) -> None:
        self.tokens = tokens
        self.size = size

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        for n in range(self.tokens):
            await asyncio.sleep(0)
            yield TextDelta(f"{n:06d}" + "x" * (self.size - 6))


async def test_a_client_that_stops_reading_is_dropped_and_others_get_everything(
    tmp_path: Path,
) -> None:
    provider = FloodProvider(tokens=1500, size=4096)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", send_buffer_max_bytes=256 * 1024)
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor", "stuck": "viewer"})
        alice = await server.connect(sid, "alice")
        token = await server.token(sid, "stuck")
        stuck = await websockets.connect(
            f"{server.ws_url}/ws/sessions/{sid}?token={token}",
            max_size=None,
            max_queue=1,
        )
        await stuck.send(encode_sync(SyncType.STEP1, b"\x00"))
        # The stuck client never reads again, so the server's writes to it back up.
        stuck.transport.pause_reading()
        await alice.command({"type": "prompt", "id": "p", "text": "flood"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1), timeout=120)
        reply = alice.entries()[1]["content"]
        assert len(reply) == 1500 * 4096  # every token reached the reader
        assert [reply[i * 4096 : i * 4096 + 6] for i in (0, 750, 1499)] == [
            "000000",
            "000750",
            "001499",
        ]
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            metrics = (await http.get("/metrics")).text
        assert "parley_slow_consumers_total 1.0" in metrics
        stuck.transport.resume_reading()
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            async with asyncio.timeout(20):
                while True:
                    await stuck.recv()
        # 1013 if the close frame got through; 1006 if the server had to abort the
        # transport of a client that still was not reading.
        assert stuck.close_code in (1013, 1006)


async def test_idle_sockets_are_closed(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", ws_idle_timeout_s=0.5)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        silent = await server.connect(sid, "alice")
        assert await silent.wait_closed(timeout=5) == 1001


async def test_metrics_and_request_ids(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "vera": "viewer"})
    alice = await server.connect(sid, "alice")
    vera = await server.connect(sid, "vera")
    await alice.command({"type": "prompt", "id": "p", "text": "measure me"})
    await vera.command({"type": "prompt", "id": "p", "text": "not allowed"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.get("/metrics", headers={"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    text = response.text
    for line in (
        "parley_open_connections 2.0",
        "parley_active_sessions 1.0",
        'parley_runs_total{status="done"} 1.0',
        'parley_errors_total{code="forbidden"} 1.0',
        "parley_queue_wait_seconds_count 1.0",
        "parley_time_to_first_token_seconds_count 1.0",
        "parley_reply_chars_count 1.0",
    ):
        assert line in text, line
    assert 'parley_model_tokens_total{direction="out"}' in text


async def test_cors_only_where_configured(tmp_path: Path) -> None:
    preflight = {
        "Origin": "https://admin.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    plain_settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with (
        serve_in_process(plain_settings) as server,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        plain = await http.options("/api/v1/sessions", headers=preflight)
        assert "access-control-allow-origin" not in plain.headers
    settings = make_settings(
        sqlite_url(tmp_path, "c.db"),
        tmp_path / "e",
        cors_origins=["https://admin.example"],
    )
    async with (
        serve_in_process(settings) as server,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        allowed = await http.options("/api/v1/sessions", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://admin.example"
        other = await http.options(
            "/api/v1/sessions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
