"""A server that refuses every WebSocket upgrade with one HTTP answer (a 429 or a 503 with
``Retry-After``, a 401 with the REST API's error body, ...), for the SDKs' tests of a
refused upgrade; it counts the requests it answered."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator


class Refusing:
    """A server answering every request (an upgrade) with ``status``; counts them."""

    def __init__(self, status: str, headers: dict[str, str], body: str) -> None:
        fields = {**headers, "Content-Length": str(len(body.encode()))}
        head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.answer = f"HTTP/1.1 {status}\r\n{head}\r\n{body}".encode()
        self.requests = 0
        self.url = ""  # once listening

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def refusing(status: str, headers: dict[str, str], body: str) -> AsyncIterator[Refusing]:
    """A ``Refusing`` server listening; its ``ws://`` base is ``refuser.url``."""
    refuser = Refusing(status, headers, body)
    listener = await asyncio.start_server(refuser.serve, "127.0.0.1", 0)
    async with listener:
        refuser.url = f"ws://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        yield refuser


def error_body(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})
