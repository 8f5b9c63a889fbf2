"""Presence (awareness) across nodes, inline in notifications on one channel.

Payloads are ``"<session id> <node id> <base64 awareness update>"``, or ``"… ?"`` when a
socket joined on that node: the other nodes then re-send the states of their own sockets in
that session, so the newcomer sees everyone at once rather than at their next renewal. A
notification must stay under 8,000 bytes: a snapshot is split into several; a single state
too large for one stays on its node.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.cluster.forwarding import MAX_NOTIFY_BYTES
from parley.server.runtime.room import SessionRoom
from parley.server.ws.connection import Connection
from parley.session.yprotocol import (
    AwarenessState,
    ProtocolError,
    StateNotAnObject,
    decode_awareness_update,
    encode_awareness,
    encode_awareness_update,
)

log = logging.getLogger("parley.cluster.presence")

CHANNEL_AWARENESS = "parley_awareness"
QUERY = "?"
OUTBOX = 1024
ANSWER_DELAY_S = 0.1  # answers to a burst of joins go out once, after the last join


class PresenceRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        node_id: str,
        loaded: Callable[[str], SessionRoom | None],
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.loaded = loaded
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX)
        self._answering: set[str] = set()

    def publish(self, session_id: str, update: bytes) -> None:
        """Relay a local socket's presence update to the other nodes."""
        room_left = MAX_NOTIFY_BYTES - len(f"{session_id} {self.node_id} ".encode())
        for chunk in awareness_chunks(update, room_left):
            self._send(f"{session_id} {self.node_id} {chunk}")

    def joined(self, session_id: str) -> None:
        """A socket joined here: ask the other nodes for their sockets' states."""
        self._send(f"{session_id} {self.node_id} {QUERY}")

    def _send(self, payload: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # presence is best effort
            self._outbox.put_nowait(payload)

    async def run(self) -> None:
        """Send queued notifications, one at a time, until cancelled."""
        while True:
            payload = await self._outbox.get()
            try:
                async with self.engine.begin() as connection:
                    await connection.execute(select(func.pg_notify(CHANNEL_AWARENESS, payload)))
            except Exception:
                log.warning("presence relay failed")

    def on_notification(self, payload: str) -> None:
        session_id, origin, body = payload.split(" ", 2)
        if origin == self.node_id:
            return
        room = self.loaded(session_id)
        if room is None:
            return
        if body == QUERY:
            if session_id not in self._answering:
                self._answering.add(session_id)
                asyncio.get_running_loop().call_later(ANSWER_DELAY_S, self._answer, session_id)
            return
        try:
            shown = room.presence.apply_remote(
                origin, base64.b64decode(body, validate=True), room.clock()
            )
        except (binascii.Error, ProtocolError, StateNotAnObject):
            return
        if shown is not None:  # what its sockets may speak for (``Presence``)
            room.awareness.relay(shown)
        # A client back on another node than the one it left: told it left, it shows itself
        # past the clock its peers were told (``Presence.take_behind_elsewhere``).
        behind = room.presence.take_behind_elsewhere()
        if behind is not None:
            self.publish(session_id, behind)
        for socket, told in room.presence.take_behind_here():
            if isinstance(socket, Connection):  # (a socket here owns them)
                socket.send(encode_awareness(told))

    def _answer(self, session_id: str) -> None:
        self._answering.discard(session_id)
        room = self.loaded(session_id)
        snapshot = None if room is None else room.presence.snapshot()
        if snapshot is not None:
            self.publish(session_id, snapshot)


def awareness_chunks(update: bytes, max_chars: int) -> list[str]:
    """Base64 awareness updates of at most ``max_chars`` each, carrying every state that
    fits alone (a state too large for one notification is left out)."""
    whole = base64.b64encode(update).decode()
    if len(whole) <= max_chars:
        return [whole]
    chunks: list[str] = []
    batch: list[AwarenessState] = []
    for state in decode_awareness_update(update):
        candidate = base64.b64encode(encode_awareness_update([*batch, state])).decode()
        if len(candidate) <= max_chars:
            batch.append(state)
            continue
        if batch:
            chunks.append(base64.b64encode(encode_awareness_update(batch)).decode())
        alone = base64.b64encode(encode_awareness_update([state])).decode()
        batch = [state] if len(alone) <= max_chars else []
        if not batch:
            log.info("presence state too large to relay", extra={"client_id": state.client_id})
    if batch:
        chunks.append(base64.b64encode(encode_awareness_update(batch)).decode())
    return chunks
