"""REST answers written in pieces, each under the send-stall deadline.

A JSON answer handed to the ASGI server in one piece sits in the connection's buffer until
the client reads it, however long that is: a client that asked for a 4 MB transcript a
hundred times and read nothing held 400 MB of the server, for as long as it kept its
connections (review, "bounded"). Written a piece at a time, an answer waits for the client
to take each piece (the ASGI server's ``send`` waits while the transport is past its
high-water mark), so an unread one holds a piece and the transport's buffer. A client that
takes nothing for ``send_stall_timeout_s``, as a socket or an event stream would be, has
its connection reset (``server.ws.uvicorn_protocol.Reset``, which ``parley serve``'s
protocol puts in each request's scope: a close would wait for the client to read the rest,
and the kernel would keep sending what it buffers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from parley.server.ws.uvicorn_protocol import RESET_EXTENSION

log = logging.getLogger("parley.http")

PIECE_BYTES = 64 * 1024


class BoundedJSONResponse(JSONResponse):
    """A JSON answer (``content``, or ``raw``: its bytes already) sent a piece at a time,
    dropped if the client stalls past ``stall_timeout_s`` (then ``on_cut`` is called)."""

    def __init__(
        self,
        content: Any = None,
        *,
        stall_timeout_s: float,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        on_cut: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        if raw is not None:
            self.body = raw
            self.headers["content-length"] = str(len(raw))
        self.stall_timeout_s = stall_timeout_s
        self.on_cut = on_cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        body = memoryview(self.body)
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                await send({**start, "headers": self.raw_headers})
            for offset in range(0, max(len(body), 1), PIECE_BYTES):
                piece = bytes(body[offset : offset + PIECE_BYTES])
                more = offset + PIECE_BYTES < len(body)
                async with asyncio.timeout(self.stall_timeout_s):
                    await send({"type": "http.response.body", "body": piece, "more_body": more})
        except TimeoutError:
            log.info("answer cut: the client took nothing", extra={"bytes": len(body)})
            reset = (scope.get("extensions") or {}).get(RESET_EXTENSION)
            if reset is not None:  # under another ASGI server, its own close follows
                reset()
                await asyncio.sleep(0)  # its loss is seen: the answer was not left unfinished
            if self.on_cut is not None:
                self.on_cut()
