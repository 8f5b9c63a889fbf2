"""A small Python Parley client for tests: a y-websocket peer plus JSON commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import websockets
from pycrdt import Array, Doc, write_var_uint

from parley.session.yprotocol import (
    AwarenessMessage,
    AwarenessState,
    SyncMessage,
    SyncType,
    decode_awareness_update,
    decode_client_frame,
    delete_set_of,
    encode_awareness,
    encode_awareness_update,
    encode_sync,
    normalise_delete_set,
)


class YClient:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.doc: Doc = Doc()
        self.transcript: Array[Any] = self.doc.get("transcript", type=Array)
        self.queue: Array[Any] = self.doc.get("queue", type=Array)
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.unsolicited: list[dict[str, Any]] = []
        self.awareness: dict[int, dict[str, Any] | None] = {}
        self.synced = asyncio.Event()
        self.sync_answers = 0  # sync step 2 frames received
        self.changed = asyncio.Event()
        self.close_code: int | None = None
        self.frames_received = 0
        self.awareness_frames = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        base_url: str,
        session_id: str,
        token: str,
        *,
        commands: str | None = None,
        keepalive: bool = True,
    ) -> YClient:
        """``commands``: the socket's ``commands`` parameter (``text`` or ``binary``).
        ``keepalive``: ping the server every 20 s and drop the socket when a pong is 20 s
        late (the websockets default); off, the client never judges the server by time."""
        asked = "" if commands is None else f"&commands={commands}"
        ws = await websockets.connect(
            f"{base_url}/ws/sessions/{session_id}?token={token}{asked}",
            max_size=None,
            **({} if keepalive else {"ping_interval": None}),
        )
        client = cls(ws)
        # The server may already have closed it (an expiring token, say): the reader
        # records the close code for the test to check.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(encode_sync(SyncType.STEP1, client.doc.get_state()))
        return client

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.frames_received += 1
                if isinstance(frame, str):
                    data = json.loads(frame)
                    future = self.replies.pop(data.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(data)
                    else:
                        self.unsolicited.append(data)
                    self.changed.set()
                    continue
                message = decode_client_frame(frame)
                if isinstance(message, SyncMessage):
                    if message.sync_type is SyncType.STEP1:
                        continue
                    self.doc.apply_update(message.payload)
                    if message.sync_type is SyncType.STEP2:
                        self.sync_answers += 1
                        self.synced.set()
                elif isinstance(message, AwarenessMessage):
                    self.awareness_frames += 1
                    for state in decode_awareness_update(message.update):
                        self.awareness[state.client_id] = state.state
                self.changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.changed.set()
            # Commands still waiting will never be answered on this socket: say so now.
            for future in self.replies.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"socket closed ({self.close_code})"))
            self.replies.clear()

    async def command(self, payload: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[payload["id"]] = future
        await self.ws.send(json.dumps(payload))
        async with asyncio.timeout(timeout):
            return await future

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def set_awareness(self, client_id: int, clock: int, state: dict[str, Any] | None) -> None:
        update = encode_awareness_update([AwarenessState(client_id, clock, state)])
        await self.ws.send(encode_awareness(update))

    def entries(self) -> list[dict[str, Any]]:
        """The transcript as plain data, converted in one call (walking the shared types
        entry by entry from Python costs a hundred times more on a long transcript)."""
        return list(self.transcript.to_py() or [])

    async def wait_until(self, predicate: Callable[[YClient], bool], timeout: float = 20) -> None:
        """Wait until ``predicate`` holds, re-checking after changes (at most every 20 ms,
        and never spending more than a third of the time checking: a predicate over a long
        transcript would otherwise take the CPU from the server it waits for). A predicate
        that reads what has not arrived yet (``c.entries()[-1]`` of an empty transcript:
        IndexError, KeyError) does not hold yet."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                started = loop.time()
                if _holds(predicate, self):
                    return
                spent = loop.time() - started
                self.changed.clear()
                if self._reader.done():
                    if _holds(predicate, self):
                        return
                    raise ConnectionError(f"socket closed ({self.close_code})")
                await self.changed.wait()
                await asyncio.sleep(max(0.02, 2 * spent))

    async def wait_closed(self, timeout: float = 10) -> int | None:
        async with asyncio.timeout(timeout):
            await self._reader
        return self.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(BaseException):
            await self._reader


def all_replies_settled(client: YClient, prompts: int) -> bool:
    settled = sum(
        1 for e in client.entries() if e["kind"] == "reply" and e["status"] != "streaming"
    )
    return settled >= prompts


def repeated_deletion(doc: Doc, size_bytes: int) -> bytes:
    """A no-op update of about ``size_bytes``: the document's last deleted range, deleted
    again and again (the frame of issue #15's first break)."""
    deletes = normalise_delete_set(delete_set_of(doc.get_update(), doc.get_state()))
    client, (clock, length) = max(
        ((c, ranges[-1]) for c, ranges in deletes.items() if ranges), key=lambda i: i[1][0]
    )
    one = write_var_uint(clock) + write_var_uint(length)
    count = max(size_bytes // len(one), 1)
    return b"\x00\x01" + write_var_uint(client) + write_var_uint(count) + one * count


def _holds(predicate: Callable[[YClient], bool], client: YClient) -> bool:
    try:
        return predicate(client)
    except (IndexError, KeyError):  # what it reads has not arrived yet
        return False
