"""The y-websocket wire protocol, sans I/O: decode client frames, encode server frames.

A frame is ``varuint message_type`` followed by its body:
    0 sync:      varuint sync_type (0 step 1, 1 step 2, 2 update), varbytes payload
    1 awareness: varbytes awareness_update
    3 query awareness (no body)
  100 command:   varstring JSON — Parley's commands, and the replies to them (see below)
Decoding never raises into the caller's loop except as ``ProtocolError``, which the server
turns into a close code.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pycrdt import get_update, write_var_uint

from parley.session.closes import CloseCode
from parley.session.errors import InvalidInput, TooLarge
from parley.session.json_constants import finite_float, reject_constant

MAX_VARUINT_BYTES = 8
MAX_SAFE_INTEGER = 2**53 - 1
# The highest awareness clock a client may show itself at. Clocks grow from what the server
# accepts: it tells a client's leaving at clock + 1, a Yjs client told it left raises its own
# past that (+1), and renews every 15 s (+1). The headroom keeps every clock so derived (2^32
# renewals: 2,000 years) within what JavaScript reads, and within what the server takes back
# (review: accepted at 2^53 - 2, its leaving went out at 2^53 - 1, which the server refused
# when stock clients echoed it, and cut them off as abusers).
CLOCK_HEADROOM = 2**32
MAX_CLOCK = MAX_SAFE_INTEGER - CLOCK_HEADROOM


class ProtocolError(InvalidInput):
    """A binary frame that does not follow the y-websocket protocol."""

    close_code = CloseCode.PROTOCOL


class ClockOutOfRange(InvalidInput):
    """An awareness clock past what the server can relay (``MAX_CLOCK`` for a client's own
    state, ``MAX_SAFE_INTEGER`` for any): the frame is refused, the socket stays."""


class StateNotAnObject(InvalidInput):
    """An awareness state that is JSON but no object or null (a number, a string, an array,
    a boolean): y-protocols sends any JSON value, and Parley relays only objects, which it
    stamps with their member. The frame is refused, the socket stays (a final 4400 ended a
    stock client's ``setLocalState(5)`` for good; review RE-3)."""


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3
    COMMAND = 100


class SyncType(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


@dataclass(frozen=True, slots=True)
class SyncMessage:
    sync_type: SyncType
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    update: bytes


@dataclass(frozen=True, slots=True)
class QueryAwarenessMessage:
    pass


ClientMessage = SyncMessage | AwarenessMessage | QueryAwarenessMessage


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varuint(self) -> int:
        value = 0
        shift = 0
        for _ in range(MAX_VARUINT_BYTES):
            if self.pos >= len(self.data):
                raise ProtocolError("truncated varuint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise ProtocolError("varuint too long")

    def varbytes(self) -> bytes:
        length = self.varuint()
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError("length prefix runs past the end of the frame")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def varstring(self) -> str:
        try:
            return self.varbytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def decode_client_frame(frame: bytes) -> ClientMessage:
    reader = _Reader(frame)
    kind = reader.varuint()
    message: ClientMessage
    if kind == MessageType.SYNC:
        sync_type = reader.varuint()
        if sync_type not in (0, 1, 2):
            raise ProtocolError(f"unknown sync message type {sync_type}")
        message = SyncMessage(SyncType(sync_type), reader.varbytes())
    elif kind == MessageType.AWARENESS:
        message = AwarenessMessage(reader.varbytes())
    elif kind == MessageType.QUERY_AWARENESS:
        message = QueryAwarenessMessage()
    else:
        raise ProtocolError(f"unknown message type {kind}")
    if not reader.at_end():
        raise ProtocolError("trailing bytes after the message")
    return message


def encode_sync(sync_type: SyncType, payload: bytes) -> bytes:
    return bytes([MessageType.SYNC, sync_type]) + write_var_uint(len(payload)) + payload


def encode_awareness(update: bytes) -> bytes:
    return bytes([MessageType.AWARENESS]) + write_var_uint(len(update)) + update


# -- the command channel ----------------------------------------------------------------------
#
# A stock y-websocket provider decodes every frame it receives as binary, so a JSON text frame
# crashes it. Commands may therefore also travel as binary frames of their own message type,
# which a provider handles with one entry in its ``messageHandlers``; the server answers each
# on the channel it came by, and sends a socket nothing of this type unless it sent some.

_COMMAND_PREFIX = bytes([MessageType.COMMAND])  # a varuint under 128 is one byte


def is_command_frame(frame: bytes) -> bool:
    return frame[:1] == _COMMAND_PREFIX


def decode_command_frame(frame: bytes) -> str:
    """The JSON text of a command frame (``ProtocolError`` if the frame is malformed)."""
    reader = _Reader(frame)
    if reader.varuint() != MessageType.COMMAND:
        raise ProtocolError("not a command frame")
    text = reader.varstring()
    if not reader.at_end():
        raise ProtocolError("trailing bytes after the message")
    return text


def encode_command_frame(text: str) -> bytes:
    data = text.encode("utf-8")
    return _COMMAND_PREFIX + write_var_uint(len(data)) + data


# -- awareness ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwarenessState:
    client_id: int
    clock: int
    state: dict[str, Any] | None  # None: the client left


# JavaScript writes a whole number below this in full (1e+20 as 100000000000000000000).
_JS_FULL_BELOW = 1e21


def _finite_float(text: str) -> float | int:
    """A JSON number with a fraction or an exponent, read as JavaScript would write it
    back: a whole one as an int. Relayed as ``1e+20``, a stock client's echo of it came
    back 4.2 times as long, past the echo credit, and the innocent member's own presence
    budget paid the rest until they were cut off (review)."""
    value = finite_float(text)
    if value.is_integer() and abs(value) < _JS_FULL_BELOW:
        return int(value)
    return value


def decode_awareness_update(update: bytes) -> list[AwarenessState]:
    reader = _Reader(update)
    count = reader.varuint()
    states: list[AwarenessState] = []
    for _ in range(count):
        client_id = reader.varuint()
        clock = reader.varuint()
        raw = reader.varstring()
        if client_id > MAX_SAFE_INTEGER:
            # JavaScript peers read varuints as doubles: past 2^53 they cannot decode them.
            raise ProtocolError("awareness client id out of range")
        if clock > MAX_SAFE_INTEGER:
            # Past what a JavaScript peer reads, so never one the server sent: refused (a
            # client's own state past ``MAX_CLOCK`` is, by ``Presence``), not closed: a
            # final 4400 left a stock client offline for good (review).
            raise ClockOutOfRange("awareness clock out of range")
        try:
            # NaN and Infinity are not JSON: y-protocols' JSON.parse would fail on every peer.
            state = json.loads(raw, parse_constant=reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):
            raise ProtocolError("awareness state is not JSON") from None
        if state is not None and not isinstance(state, dict):
            raise StateNotAnObject("awareness state must be an object or null")
        states.append(AwarenessState(client_id, clock, state))
    if not reader.at_end():
        raise ProtocolError("trailing bytes after the awareness update")
    return states


def encode_awareness_update(states: list[AwarenessState]) -> bytes:
    return join_awareness_states([encode_awareness_state(item) for item in states])


def awareness_state_json(state: dict[str, Any] | None) -> bytes:
    """A client's state as it is relayed: compact JSON (as a stock client's
    ``JSON.stringify`` sends it), characters past ASCII escaped."""
    return json.dumps(state, separators=(",", ":"), allow_nan=False).encode()


def encode_awareness_state(item: AwarenessState) -> bytes:
    """One client's part of an awareness update (``join_awareness_states`` makes one)."""
    body = awareness_state_json(item.state)
    head = write_var_uint(item.client_id) + write_var_uint(item.clock)
    return head + write_var_uint(len(body)) + body


def join_awareness_states(parts: list[bytes]) -> bytes:
    return write_var_uint(len(parts)) + b"".join(parts)


# -- refusing client writes -----------------------------------------------------------------

DeleteSet = dict[int, list[tuple[int, int]]]


def _read_delete_set(reader: _Reader) -> DeleteSet:
    deletes: DeleteSet = {}
    for _ in range(reader.varuint()):
        client = reader.varuint()
        ranges = deletes.setdefault(client, [])
        for _ in range(reader.varuint()):
            clock = reader.varuint()
            ranges.append((clock, reader.varuint()))
    return deletes


# pycrdt (yrs) decodes an update's values recursively on the caller's stack, with no
# depth limit: one value nested 30,000 arrays deep (60 KB) overflowed it and crashed the
# process (review). A value nests at most once per array or object marker its bytes hold
# (lib0's tags 117 and 118), so an update with fewer than this many is decoded safely.
MAX_NESTING_MARKERS = 2000


def may_nest_too_deep(update: bytes) -> bool:
    """True unless ``update`` certainly nests no value deeper than pycrdt decodes safely (a
    count of two byte values: C speed, whatever the update holds)."""
    return update.count(b"\x75") + update.count(b"\x76") >= MAX_NESTING_MARKERS


def _diff(update: bytes, state: bytes) -> _Reader:
    """A reader over ``update`` minus every struct ``state`` already covers."""
    try:
        return _Reader(get_update(update, state))
    except Exception as exc:  # pycrdt raises plain exceptions for corrupt input
        raise ProtocolError(f"malformed update: {exc}") from None


def delete_set_of(update: bytes, state: bytes) -> DeleteSet:
    """The deletions of a document's full ``update``; ``state`` is its state vector."""
    reader = _diff(update, state)
    if reader.varuint() != 0:
        raise ProtocolError("the state vector does not cover the update")
    return _read_delete_set(reader)


def decode_state_vector(state: bytes) -> dict[int, int]:
    reader = _Reader(state)
    vector: dict[int, int] = {}
    for _ in range(reader.varuint()):
        client = reader.varuint()
        vector[client] = reader.varuint()
    return vector


def state_before(state: bytes, updates: Sequence[bytes]) -> bytes:
    """The state vector of a document before its own transactions' ``updates`` (in order;
    ``state``: its vector after them). A document's transaction adds structs of its own
    client alone, from that client's clock: read off the first of them, no struct read.
    An update of structs of more than one client raises ``ProtocolError``."""
    vector = decode_state_vector(state)
    seen: set[int] = set()
    for update in updates:
        reader = _Reader(update)
        clients = reader.varuint()
        if clients > 1:
            raise ProtocolError("not one document's own transaction")
        if clients == 1:
            reader.varuint()  # its structs
            client, clock = reader.varuint(), reader.varuint()
            if client not in seen:
                seen.add(client)
                vector[client] = clock
    kept = [(client, clock) for client, clock in vector.items() if clock]
    return b"".join(
        [write_var_uint(len(kept))]
        + [write_var_uint(n) for client, clock in kept for n in (client, clock)]
    )


def lists_more_clients(state: bytes, clients: int) -> bool:
    """Whether a state vector lists more than ``clients`` clients: told by its first number,
    its entries unread (a client's vector of 690,000 entries took a second of the loop to
    read whole, and a third of one for pycrdt to diff a document against)."""
    return _Reader(state).varuint() > clients


def _start(item: tuple[int, int]) -> int:
    return item[0]


def _covered(ranges: list[tuple[int, int]], clock: int, length: int) -> bool:
    """True when ``ranges`` (sorted, merged) already delete ``length`` clocks from ``clock``:
    a binary search, since merged ranges never leave a covered span split in two."""
    if length == 0:
        return True  # deletes nothing
    at = bisect_right(ranges, clock, key=_start) - 1
    return at >= 0 and clock + length <= ranges[at][0] + ranges[at][1]


def _delete_ranges(reader: _Reader, max_ranges: int | None) -> Iterator[tuple[int, int, int]]:
    """``(client, clock, length)`` of each range of the delete set under ``reader``, refusing
    (``TooLarge``) a set that declares more than ``max_ranges`` before reading a range past
    the cap, so the cost of reading one is bounded whatever its size."""
    total = 0
    for _ in range(reader.varuint()):
        client = reader.varuint()
        count = reader.varuint()
        # A client listed with no range costs a read too (review: 520,000 of them, 1 MB,
        # read as a no-op in 0.25 s); Yjs lists only clients with deletions.
        total += max(count, 1)
        if max_ranges is not None and total > max_ranges:
            raise TooLarge(f"an update may delete at most {max_ranges} ranges")
        for _ in range(count):
            clock = reader.varuint()
            yield client, clock, reader.varuint()


def is_noop_update(
    update: bytes,
    server_state: bytes,
    server_deletes: DeleteSet,
    max_delete_ranges: int | None = None,
) -> bool:
    """True when applying ``update`` to the server's document would change nothing.

    ``server_state`` is the server's encoded state vector, ``server_deletes`` its delete set
    (merged, sorted ranges per client). Diffing the update against the server's state
    leaves only structs the server lacks; any of those, or any deletion the server has not
    made, makes the update a write. The cost is linear in the update (the diff; an update
    of deletions only is read directly), plus a binary search per deleted range; one with
    more than ``max_delete_ranges`` ranges raises ``TooLarge`` instead of being read. One
    whose values pycrdt might not decode safely (``may_nest_too_deep``) is not diffed: it
    is judged a write (a large echo of the server's own text may be refused so; it
    changes nothing the server holds).
    """
    reader = _Reader(update)
    if reader.varuint() != 0:  # structs: keep those the server lacks, then the delete set
        if may_nest_too_deep(update):
            return False  # not read: judged a write, as anything new from a client is
        reader = _diff(update, server_state)
        if reader.varuint() != 0:
            return False
    for client, clock, length in _delete_ranges(reader, max_delete_ranges):
        if not _covered(server_deletes.get(client, []), clock, length):
            return False
    if not reader.at_end():
        raise ProtocolError("trailing bytes after the update")
    return True


def add_deletes(known: DeleteSet, added: DeleteSet) -> None:
    """Merge ``added`` into ``known`` (normalised, kept so) in place: a binary search and one
    slice assignment per added range, so the server's own writes keep its delete set current
    without recomputing it from the whole document."""
    for client, ranges in added.items():
        have = known.setdefault(client, [])
        for start, size in ranges:
            if size == 0:
                continue
            end = start + size
            at = bisect_left(have, start, key=_start)
            if at > 0 and have[at - 1][0] + have[at - 1][1] >= start:
                at -= 1
                start = have[at][0]
                end = max(end, have[at][0] + have[at][1])
            stop = at
            while stop < len(have) and have[stop][0] <= end:
                end = max(end, have[stop][0] + have[stop][1])
                stop += 1
            have[at:stop] = [(start, end - start)]


def normalise_delete_set(deletes: DeleteSet) -> DeleteSet:
    """Sort and merge adjacent ranges so coverage checks can walk them in order."""
    merged: DeleteSet = {}
    for client, ranges in deletes.items():
        out: list[tuple[int, int]] = []
        for start, size in sorted(ranges):
            if size == 0:
                continue  # deletes nothing
            if out and start <= out[-1][0] + out[-1][1]:
                last_start, last_size = out[-1]
                out[-1] = (last_start, max(last_size, start + size - last_start))
            else:
                out.append((start, size))
        merged[client] = out
    return merged
