"""pycrdt-websocket as the benchmark runs it: its ``WebsocketServer`` behind its
``ASGIServer`` on uvicorn, plus a server-side writer.

Runs in the peers' own virtualenv (``bench/.venv-peers``), so it imports nothing of
Parley. ``POST /bench/write?room=R&tokens=N&rate=X`` appends N fixed-width tokens to the
room's root Y.Text ``text``, one transaction each, X per second (0: one per event-loop
turn), and answers with when each was appended (``time.monotonic()``).
``POST /bench/room?room=R`` creates and starts a room.

    bench/.venv-peers/bin/python bench/servers/pycrdt_server.py --port 8801
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

import uvicorn
import uvloop
from pycrdt import Text
from pycrdt.websocket import ASGIServer, WebsocketServer

TOKEN_WIDTH = 8


def token_text(index: int) -> str:
    return f"{index:0{TOKEN_WIDTH - 1}d} "


class BenchApp:
    def __init__(self, websocket_server: WebsocketServer) -> None:
        self.websocket_server = websocket_server
        self.asgi = ASGIServer(websocket_server)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.asgi(scope, receive, send)
            return
        body: dict[str, Any] = {"status": "ok"}
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if scope["path"] == "/bench/write":
            body = await self.write("/" + query["room"], int(query["tokens"]), float(query["rate"]))
        elif scope["path"] == "/bench/room":
            # Start the room before its clients join: when several clients join a room
            # that is not started yet, all but one can wait forever on its start lock.
            await self.websocket_server.get_room("/" + query["room"])
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def write(self, room_name: str, tokens: int, rate: float) -> dict[str, Any]:
        room = await self.websocket_server.get_room(room_name)
        text = room.ydoc.get("text", type=Text)
        started = time.monotonic()
        yields = []
        for index in range(tokens):
            if rate > 0:
                await asyncio.sleep(max(started + index / rate - time.monotonic(), 0.0))
            else:
                await asyncio.sleep(0)
            yields.append(time.monotonic())
            text += token_text(index)
        return {"started": started, "yields": yields}


async def serve(port: int) -> None:
    websocket_server = WebsocketServer(auto_clean_rooms=False)
    async with websocket_server:
        config = uvicorn.Config(
            BenchApp(websocket_server),
            host="127.0.0.1",
            port=port,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            log_level="warning",
            lifespan="off",
        )
        await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
