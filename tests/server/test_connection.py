"""The outbox of one socket: bounded, in order, and merging updates that had to wait."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from pycrdt import Doc, Text
from starlette.websockets import WebSocket, WebSocketState

from server.connection import Connection
from session.yprotocol import SyncType, encode_awareness, encode_sync, update_of


class HeldSocket:
    """Records what is sent; the first send waits until ``release`` (a busy sender)."""

    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []
        self.release = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        if not self.sent:
            self.sent.append(data)
            await self.release.wait()
            return
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.application_state = WebSocketState.DISCONNECTED


def updates(count: int) -> tuple[Doc[Any], list[bytes]]:
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    frames = []
    for i in range(count):
        before = doc.get_state()
        text += f"token {i} "
        frames.append(encode_sync(SyncType.UPDATE, doc.get_update(before)))
    return doc, frames


async def test_updates_that_waited_go_out_as_one_with_the_same_effect() -> None:
    socket = HeldSocket()
    connection = Connection(cast(WebSocket, socket), "alice", 100)
    connection.start()
    source, frames = updates(6)
    connection.send(frames[0])
    await asyncio.sleep(0.01)  # the sender is now busy with the first frame
    for frame in frames[1:4]:
        connection.send(frame)
    connection.send(encode_awareness(b"\x00"))  # not an update: merging stops here
    for frame in frames[4:]:
        connection.send(frame)
    socket.release.set()
    for _ in range(100):
        if len(socket.sent) >= 4:
            break
        await asyncio.sleep(0.01)
    assert len(socket.sent) == 4  # first, merged 1-3, awareness, merged 4-5
    assert socket.sent[2] == encode_awareness(b"\x00")

    replica: Doc[Any] = Doc()
    for sent in socket.sent:
        update = update_of(sent) if isinstance(sent, bytes) else None
        if update is not None:
            replica.apply_update(update)
    assert str(replica.get("t", type=Text)) == str(source.get("t", type=Text))
    connection.close(1000)
    await connection.wait_closed()


async def test_an_idle_sender_sends_each_update_at_once() -> None:
    socket = HeldSocket()
    socket.release.set()
    connection = Connection(cast(WebSocket, socket), "bob", 100)
    connection.start()
    _, frames = updates(3)
    for frame in frames:
        connection.send(frame)
        await asyncio.sleep(0.01)
    assert socket.sent == frames
    connection.close(1000)
    await connection.wait_closed()


async def test_a_full_outbox_disconnects_the_slow_consumer() -> None:
    socket = HeldSocket()
    connection = Connection(cast(WebSocket, socket), "carol", 3)
    connection.start()
    _, frames = updates(6)
    connection.send(frames[0])
    await asyncio.sleep(0.01)
    accepted = [connection.send(frame) for frame in frames[1:]]
    assert accepted == [True, True, True, False, False]
    assert connection.closed and connection.close_code == 1013
    socket.release.set()
    await connection.wait_closed()
