"""Split one Yjs update (v1) into several valid updates of bounded size (sans I/O).

A stock y-websocket client closes its socket when no whole message has reached it for 30 s
and starts over: a document sent as one frame never reaches a client whose link carries
less than the document in 30 s (review RE-1: 15.5 MB at 400 KB/s never synced). Sent as
parts, each a valid update, every part arrives well within that.

An update is its structs, grouped by client (``varuint clients``, then per client
``varuint structs, varuint client, varuint clock`` and the structs), then its delete set.
The structs are cut between one struct and the next; a part starts a client's run at the
clock its first struct has. Each part is an update Yjs applies by itself (a struct whose
origin has not arrived yet waits, pending, for it); clients are ordered so that one whose
structs refer to another's comes after it where it can, so that little waits. The delete set
goes with the last part. A single struct larger than the bound is a part of its own.

Reading struct by struct in Python costs about 1 ns a byte for a session's text and up to
80 ns for a document of tiny items (14.9 MB of 60,000 short messages: 1.2 s of CPU):
``EncodedDocument`` cuts only what it must (a stored snapshot, once per load; an update
larger than a part), and keeps the parts; the session's writer has it cut in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycrdt import write_var_uint

from parley.session.yprotocol import MAX_VARUINT_BYTES, ProtocolError

# lib0's tags for the values of ``ContentAny`` (and ``ContentDoc``'s options).
_ANY_NO_BODY = frozenset({127, 126, 121, 120})  # undefined, null, false, true
_ANY_FIXED = {124: 4, 123: 8, 122: 8}  # float32, float64, bigint64
_ANY_BYTES = frozenset({119, 116})  # string, Uint8Array
_ANY_VARINT, _ANY_OBJECT, _ANY_ARRAY = 125, 118, 117
# The content refs (an item's info & 31) whose item is one clock long and what follows it.
_XML_NAMED_TYPES = frozenset({3, 5})  # YXmlElement, YXmlHook: the type ref has a name
# Room for one run's header (three varuints) in a part, and for the part's own counts.
_RUN_HEADER_BYTES = 30
_PART_HEADER_BYTES = 10


# The struct reader keeps its place in a local ``pos`` that each step takes and returns:
# an update holds millions of varuints, and attribute and method lookups were most of the
# cost. Reading past the end raises IndexError (``split_update`` takes it as unreadable).


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """The varuint at ``pos`` and where it ends."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    for at in range(pos + 1, pos + MAX_VARUINT_BYTES):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at + 1
        shift += 7
    raise ProtocolError("overlong varuint")


def _past_bytes(data: bytes, pos: int) -> int:
    """Where the length-prefixed bytes at ``pos`` end."""
    size, pos = _uint(data, pos)
    end = pos + size
    if end > len(data):
        raise ProtocolError("truncated update")
    return end


def _past_any(data: bytes, pos: int) -> int:
    """Where the lib0 value at ``pos`` ends (nested ones read without recursion)."""
    stack = [(False, 1)]  # (inside an object: keys first, values left to read)
    while stack:
        in_object, left = stack.pop()
        if left == 0:
            continue
        stack.append((in_object, left - 1))
        if in_object:
            pos = _past_bytes(data, pos)
        tag = data[pos]
        pos += 1
        if tag in _ANY_NO_BODY:
            continue
        if tag in _ANY_BYTES:
            pos = _past_bytes(data, pos)
        elif tag in _ANY_FIXED:
            pos += _ANY_FIXED[tag]
        elif tag == _ANY_VARINT:
            while data[pos] >= 0x80:
                pos += 1
            pos += 1
        elif tag in (_ANY_OBJECT, _ANY_ARRAY):
            count, pos = _uint(data, pos)
            stack.append((tag == _ANY_OBJECT, count))
        else:
            raise ProtocolError(f"unknown value tag {tag}")
    return pos


def _struct(data: bytes, pos: int, refers: set[int]) -> tuple[int, int]:
    """The struct at ``pos``: where it ends and its length in clocks; adds the clients it
    refers to to ``refers``."""
    info = data[pos]
    pos += 1
    ref = info & 31
    if ref == 0 or ref == 10:  # GC, Skip
        length, pos = _uint(data, pos)
        return pos, length
    if info & 0x80:  # origin: client, clock
        client, pos = _uint(data, pos)
        refers.add(client)
        _, pos = _uint(data, pos)
    if info & 0x40:  # right origin
        client, pos = _uint(data, pos)
        refers.add(client)
        _, pos = _uint(data, pos)
    if not info & 0xC0:
        named, pos = _uint(data, pos)
        if named == 1:
            pos = _past_bytes(data, pos)  # a root type's name
        else:
            client, pos = _uint(data, pos)
            refers.add(client)
            _, pos = _uint(data, pos)
        if info & 0x20:
            pos = _past_bytes(data, pos)  # the key in a map
    return _content(data, pos, ref)


def _content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    if ref == 8:  # any
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _past_any(data, pos)
        return pos, count
    if ref == 4:  # string: its length counts UTF-16 units
        start = _uint(data, pos)[1]
        end = _past_bytes(data, pos)
        raw = data[start:end]
        if raw.isascii():
            return end, end - start
        try:
            return end, len(raw.decode().encode("utf-16-le")) // 2
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None
    if ref == 1:  # deleted
        length, pos = _uint(data, pos)
        return pos, length
    if ref == 2:  # JSON
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _past_bytes(data, pos)
        return pos, count
    if ref in (3, 5):  # binary, embed
        pos = _past_bytes(data, pos)
    elif ref == 6:  # format: key, value
        pos = _past_bytes(data, _past_bytes(data, pos))
    elif ref == 7:  # type
        kind, pos = _uint(data, pos)
        if kind in _XML_NAMED_TYPES:
            pos = _past_bytes(data, pos)
    elif ref == 9:  # subdocument: guid, options
        pos = _past_any(data, _past_bytes(data, pos))
    else:
        raise ProtocolError(f"unknown content ref {ref}")
    return pos, 1


@dataclass(slots=True)
class _Run:
    """Structs of one client, one after another: bytes ``start:end`` of the update."""

    client: int
    clock: int
    structs: int
    start: int
    end: int

    def encode(self, data: bytes) -> bytes:
        head = write_var_uint(self.structs) + write_var_uint(self.client)
        return head + write_var_uint(self.clock) + data[self.start : self.end]


def split_update(update: bytes, max_bytes: int) -> list[bytes]:
    """``update`` as updates of at most about ``max_bytes`` each (one struct larger than
    that alone), which applied in order (Yjs: in any order) make the same document. An
    update within ``max_bytes``, or one this reader does not know, is returned whole."""
    if len(update) <= max_bytes:
        return [update]
    room = max(max_bytes - _PART_HEADER_BYTES, 1)
    try:
        runs, order, deletes_at = _read_runs(update, max(room - _RUN_HEADER_BYTES, 1))
    except (ProtocolError, IndexError):  # IndexError: it ends before its structs do
        return [update]
    parts: list[list[_Run]] = [[]]
    size = 0
    for client in order:
        for run in runs[client]:
            run_size = run.end - run.start + _RUN_HEADER_BYTES
            if parts[-1] and size + run_size > room:
                parts.append([])
                size = 0
            parts[-1].append(run)
            size += run_size
    deletes = update[deletes_at:]
    encoded = [_encode_part(update, part, b"\x00") for part in parts[:-1]]
    last = _encode_part(update, parts[-1], deletes)
    if len(last) > max_bytes and len(deletes) > 1 and parts[-1]:
        # A large delete set: on its own, after the last structs.
        encoded.append(_encode_part(update, parts[-1], b"\x00"))
        last = _encode_part(update, [], deletes)
    return [*encoded, last]


def _encode_part(update: bytes, runs: list[_Run], deletes: bytes) -> bytes:
    return b"".join([write_var_uint(len(runs)), *(run.encode(update) for run in runs), deletes])


def _read_runs(update: bytes, max_run_bytes: int) -> tuple[dict[int, list[_Run]], list[int], int]:
    """Each client's structs cut into runs of at most ``max_run_bytes`` (or one struct),
    the clients in the order to send them, and where the delete set starts."""
    runs: dict[int, list[_Run]] = {}
    refers: dict[int, set[int]] = {}
    clients, pos = _uint(update, 0)
    for _ in range(clients):
        count, pos = _uint(update, pos)
        client, pos = _uint(update, pos)
        clock, pos = _uint(update, pos)
        if client in runs:
            raise ProtocolError("a client listed twice")
        own = runs[client] = []
        others = refers[client] = set()
        first, start, structs = clock, pos, 0
        for _ in range(count):
            at = pos
            pos, length = _struct(update, pos, others)
            if structs and pos - start > max_run_bytes:
                own.append(_Run(client, first, structs, start, at))
                first, start, structs = clock, at, 0
            structs += 1
            clock += length
        if structs:
            own.append(_Run(client, first, structs, start, pos))
    if pos > len(update):
        raise ProtocolError("truncated update")
    return runs, _causal_order(list(runs), refers), pos


def _causal_order(clients: list[int], refers: dict[int, set[int]]) -> list[int]:
    """``clients`` with each after the clients it refers to, where that is possible (the
    update's own order otherwise)."""
    order: list[int] = []
    placed: set[int] = set()
    left = list(clients)
    while left:
        ready = next(
            (c for c in left if not (refers[c] - placed - {c}) & set(left)),
            left[0],
        )
        order.append(ready)
        placed.add(ready)
        left.remove(ready)
    return order
