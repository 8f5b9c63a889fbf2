"""A real HTTP/1.1 server on 127.0.0.1 that plays model APIs from a script, byte for byte.

Each request takes the next ``Reply``: a status, headers, and body pieces written as
separate HTTP chunks (so a test decides where the bytes split), with a delay between them
or a hold at one of them, ending cleanly or by dropping the connection mid-body. Every
request is recorded with whether, and when, the client hung up while the reply was still
being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Reply:
    status: int = 200
    pieces: Sequence[bytes] = ()
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    delay_s: float = 0.0
    end: Literal["complete", "drop"] = "complete"
    # The stream waits before piece ``hold_at`` until ``hold`` is set or the client hangs up.
    hold: asyncio.Event | None = None
    hold_at: int = 0


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    hung_up_at: float | None = None
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)


class FakeUpstream:
    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies)
        self.exchanges: list[Exchange] = []
        self.base_url = ""
        self._server: asyncio.Server | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeUpstream]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            exchange = Exchange(method, path, headers, body)
            self.exchanges.append(exchange)
            reply = self.replies.pop(0) if self.replies else Reply(500, [b"no scripted reply"])
            watcher = asyncio.create_task(self._watch(reader, exchange))
            try:
                await self._write(writer, reply, exchange)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _watch(self, reader: asyncio.StreamReader, exchange: Exchange) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        exchange.hung_up_at = time.monotonic()
        exchange.hung_up.set()

    async def _write(self, writer: asyncio.StreamWriter, reply: Reply, exchange: Exchange) -> None:
        lines = [f"HTTP/1.1 {reply.status} Scripted"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        lines += ["transfer-encoding: chunked", "connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1"))
        await writer.drain()
        for index, piece in enumerate(reply.pieces):
            if reply.hold is not None and index == reply.hold_at:
                await _either(reply.hold, exchange.hung_up)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if exchange.hung_up.is_set():
                return
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        if reply.end == "drop":
            writer.transport.abort()
            return
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _either(*events: asyncio.Event) -> None:
    """Return once one of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


# -- the vendors' streams, as their documentation shows them ------------------------------


def sse(data: str, event: str | None = None) -> bytes:
    return ((f"event: {event}\n" if event else "") + f"data: {data}\n\n").encode()


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def openai_stream(
    words: Sequence[str], usage: tuple[int, int] | None = (12, 5), finish: str = "stop"
) -> list[bytes]:
    pieces = [sse(json.dumps(openai_chunk({"role": "assistant", "content": ""})))]
    pieces += [sse(json.dumps(openai_chunk({"content": word}))) for word in words]
    pieces.append(sse(json.dumps(openai_chunk({}, finish))))
    if usage is not None:
        tail = {**openai_chunk({}), "choices": []}
        tail["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
        pieces.append(sse(json.dumps(tail)))
    pieces.append(sse("[DONE]"))
    return pieces


def anthropic_event(payload: dict[str, Any]) -> bytes:
    return sse(json.dumps(payload), event=str(payload["type"]))


def anthropic_stream(
    words: Sequence[str], usage: tuple[int, int] = (25, 15), stop: str = "end_turn"
) -> list[bytes]:
    pieces = [
        anthropic_event(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-5",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage[0], "output_tokens": 1},
                },
            }
        ),
        anthropic_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        anthropic_event({"type": "ping"}),
    ]
    pieces += [
        anthropic_event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
        )
        for w in words
    ]
    pieces += [
        anthropic_event({"type": "content_block_stop", "index": 0}),
        anthropic_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            }
        ),
        anthropic_event({"type": "message_stop"}),
    ]
    return pieces
