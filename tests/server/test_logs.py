"""Logs hold no secret: a real ``parley serve`` at debug level, sockets and REST calls with
tokens good and bad, then its whole output read back: JSON lines only, no token in them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

import httpx
import jwt
import pytest
import websockets

from parley.server.logs import REDACTED, LogFormatter, Redactor
from tests.conftest import (
    ADMIN_KEY,
    SECRET_KEY,
    ServerProcess,
    free_port,
    make_settings,
    serve_in_process,
    sqlite_url,
)
from tests.yclient import YClient, all_replies_settled

FORGED = jwt.encode({"sub": "mallory", "sid": "x", "exp": 2**40}, "not-the-key" * 4)


def line(message: str, *args: object, **extra: object) -> str:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return LogFormatter(Redactor(["the-admin-key-123"])).format(record)


def test_tokens_and_keys_are_redacted_wherever_they_appear() -> None:
    token = FORGED
    handshake = line('%s - "WebSocket %s" [accepted]', "1.2.3.4:5", f"/ws/sessions/s?token={token}")
    assert token not in handshake and "token=[redacted]" in handshake
    assert json.loads(handshake)["event"].endswith('?token=[redacted]" [accepted]')
    assert token not in line("< authorization: Bearer %s", token)
    assert "opaque-key" not in line("Authorization: Bearer opaque-key")
    assert token not in line("path", path=f"/nope/{token}/more")
    assert "hunter22" not in line('{"api_key": "hunter22", "password": "hunter22"}')
    assert "the-admin-key-123" not in line("key the-admin-key-123 in a sentence")
    assert REDACTED in line("%s", token[20:])  # a cut-off token still looks like one
    kept = line("run started", session_id="abc", prompt_tokens=12)
    assert json.loads(kept) == {**json.loads(kept), "event": "run started", "prompt_tokens": 12}


def test_an_exception_text_is_redacted() -> None:
    try:
        raise ValueError(f"bad url /ws?token={FORGED}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "crash", (), None)
        record.exc_info = sys.exc_info()
    text = LogFormatter(Redactor()).format(record)
    assert FORGED not in text and "ValueError" in json.loads(text)["exception"]


async def test_a_server_run_at_debug_level_logs_no_token(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    node = ServerProcess(
        sqlite_url(tmp_path), tmp_path / "d", free_port(), PARLEY_LOG_LEVEL="debug"
    )
    server_processes.append(node)
    await node.start()
    secrets = [ADMIN_KEY, SECRET_KEY, FORGED]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=node.base_url, timeout=20) as http:
        sid = (await http.post("/api/v1/sessions", json={}, headers=admin)).json()["id"]
        put = await http.put(
            f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor"}, headers=admin
        )
        assert put.status_code == 200
        tokens = []
        for _ in range(3):
            made = await http.post(
                f"/api/v1/sessions/{sid}/tokens", json={"user_id": "alice"}, headers=admin
            )
            tokens.append(made.json()["token"])
        secrets += tokens
        good, other, third = tokens

        alice = await YClient.connect(node.ws_url, sid, good)
        await alice.command({"type": "prompt", "id": "p", "text": "hello"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1), timeout=30)
        for bad in (FORGED, other + "x", "not-a-token"):
            ws = await websockets.connect(f"{node.ws_url}/ws/sessions/{sid}?token={bad}")
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4401
        await alice.close()

        as_member = {"Authorization": f"Bearer {third}"}
        assert (await http.get(f"/api/v1/sessions/{sid}/transcript", headers=as_member)).is_success
        forged = {"Authorization": f"Bearer {FORGED}"}
        refused = await http.get(f"/api/v1/sessions/{sid}/members", headers=forged)
        assert refused.status_code == 401
        assert (await http.get(f"/api/v1/sessions/{sid}?token={third}")).status_code == 401
        # A browser's event stream carries its token in the URL, as the socket does (RC-2).
        url = f"/api/v1/sessions/{sid}/events?token={third}"
        async with http.stream("GET", url, headers={"Accept": "text/event-stream"}) as streamed:
            assert streamed.status_code == 200
        assert (await http.get(f"/nope/{third}", headers=as_member)).status_code == 404
        # A token as a session id: past the ids' 200 characters, refused as no id (422).
        assert (await http.get(f"/api/v1/sessions/{third}", headers=admin)).status_code == 422
    node.stop()

    output = node.log.read_text()
    lines = output.splitlines()
    assert lines and [json.loads(text) for text in lines]  # every line is one JSON object
    events = {json.loads(text)["event"] for text in lines}
    assert any("WebSocket /ws/sessions/" in event for event in events)  # uvicorn's, redacted
    assert "request" in events and "run started" in events
    leaked = [secret for secret in secrets if secret in output]
    assert leaked == []


async def test_a_client_gone_mid_body_is_one_quiet_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review FX36: a client that closed its connection in the middle of a REST body was
    logged as a crash twice (``unhandled error`` and uvicorn's "Exception in ASGI
    application", each with Starlette's ``ClientDisconnect`` traceback) and its request
    line said 500. It is the request's one line, status 499, nothing logged as an error."""
    caplog.set_level(logging.DEBUG)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    line_written = asyncio.Event()
    path = ""

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "path", None) == path:
                line_written.set()

    watch = Watch()
    logging.getLogger().addHandler(watch)
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(logging.getLogger().removeHandler, watch)
        server = await cleanup.enter_async_context(serve_in_process(settings))
        sid = await server.new_session({})
        host, port = server.base_url.removeprefix("http://").split(":")
        path = f"/api/v1/sessions/{sid}/messages"
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {server.http.headers['Authorization']}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"text": '.encode()
        )
        await writer.drain()
        writer.close()

        async with asyncio.timeout(20):
            await line_written.wait()
        # The server goes on: a request after it is answered (and the line is written).
        assert (await server.http.get(f"/api/v1/sessions/{sid}")).status_code == 200
    [request] = [r for r in caplog.records if getattr(r, "path", None) == path]
    assert request.levelno == logging.INFO and getattr(request, "status", None) == 499
    assert request.__dict__.get("disconnected") is True
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
