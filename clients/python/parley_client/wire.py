"""The y-websocket framing the SDK speaks, sans I/O (a copy of the few encoders of the
server's ``session/yprotocol.py``, so the client does not depend on the server).

A frame is ``varuint message_type`` then its body:
    0 sync:      varuint sync_type (0 step 1, 1 step 2, 2 update), varbytes payload
    1 awareness: varbytes awareness_update
    3 query awareness (no body)
  100 command:   varstring JSON (Parley's commands and the replies to them)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SYNC, AWARENESS, QUERY_AWARENESS, COMMAND = 0, 1, 3, 100
STEP1, STEP2, UPDATE = 0, 1, 2
MAX_VARUINT_BYTES = 8


class FrameError(ValueError):
    """A frame from the server that does not decode."""


def varuint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def varbytes(data: bytes) -> bytes:
    return varuint(len(data)) + data


def encode_sync(sync_type: int, payload: bytes) -> bytes:
    return bytes([SYNC, sync_type]) + varbytes(payload)


def strict_json(value: Any, *, ensure_ascii: bool = True) -> str:
    """``value`` as compact JSON; ``ValueError`` for a NaN or an infinity, which Python
    writes as ``NaN`` / ``Infinity`` by default and the server refuses as not JSON (a
    presence state so written closed the socket 4400, and the SDK's session for good)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"), allow_nan=False)


def encode_command(command: dict[str, Any]) -> bytes:
    # UTF-8 as it is, not \u escapes: an emoji costs 4 bytes of the command budget, not 12.
    text = strict_json(command, ensure_ascii=False)
    return bytes([COMMAND]) + varbytes(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class AwarenessState:
    client_id: int
    clock: int
    state: dict[str, Any] | None  # None: the client left


def encode_awareness(states: list[AwarenessState]) -> bytes:
    body = [varuint(len(states))]
    for item in states:
        text = strict_json(item.state).encode("utf-8")
        body += [varuint(item.client_id), varuint(item.clock), varbytes(text)]
    return bytes([AWARENESS]) + varbytes(b"".join(body))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varuint(self) -> int:
        value = shift = 0
        for _ in range(MAX_VARUINT_BYTES):
            if self.pos >= len(self.data):
                raise FrameError("truncated varuint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise FrameError("varuint too long")

    def varbytes(self) -> bytes:
        length = self.varuint()  # first: it moves ``pos``
        end = self.pos + length
        if end > len(self.data):
            raise FrameError("length prefix runs past the end of the frame")
        chunk, self.pos = self.data[self.pos : end], end
        return chunk


@dataclass(frozen=True, slots=True)
class SyncFrame:
    sync_type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessFrame:
    states: list[AwarenessState]


@dataclass(frozen=True, slots=True)
class CommandReply:
    data: dict[str, Any]


ServerFrame = SyncFrame | AwarenessFrame | CommandReply | None


def decode_server_frame(frame: bytes) -> ServerFrame:
    """One binary frame from the server; None for a message type the SDK ignores."""
    reader = _Reader(frame)
    kind = reader.varuint()
    if kind == SYNC:
        sync_type = reader.varuint()
        return SyncFrame(sync_type, reader.varbytes())
    if kind == AWARENESS:
        return AwarenessFrame(_awareness_states(reader.varbytes()))
    if kind == COMMAND:
        return CommandReply(decode_reply(reader.varbytes().decode("utf-8")))
    return None


def decode_reply(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise FrameError("a reply is a JSON object")
    return data


def _awareness_states(update: bytes) -> list[AwarenessState]:
    reader = _Reader(update)
    states = []
    for _ in range(reader.varuint()):
        client_id, clock = reader.varuint(), reader.varuint()
        state = json.loads(reader.varbytes().decode("utf-8"))
        states.append(AwarenessState(client_id, clock, state if isinstance(state, dict) else None))
    return states
