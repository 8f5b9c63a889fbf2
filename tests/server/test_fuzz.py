"""Hostile input on live session sockets: every frame is answered or refused cleanly.

One server, one session, 300 hostile binary frames (y-websocket) and 300 hostile text frames
(JSON commands) from an editor, a viewer and an owner. Cases come from hand-written
generators driven by a seeded ``random.Random`` and from hypothesis strategies, drawn by a
``@given`` function that only records what it is given (no I/O inside hypothesis, and no
``.example()``). ``PARLEY_FUZZ_SEED`` picks another seed.

After each case a probe (a ``cancel`` of a prompt that does not exist) on the same socket
marks where the case's replies end, since one socket's frames are handled in order. Then:

- a text frame got exactly one reply, an ``ack`` of its own kind or an ``error`` with a
  stable code, carrying the command's id (``null`` when it could not be read), and the
  socket is still open; only a frame over the size limit (1009) or invalid UTF-8 (1007)
  may close it;
- a binary frame left the socket open, with only the ``null``-id errors its kind can cause
  (``forbidden`` for a write, once a socket, or too many awareness ids, ``too_large`` for presence,
  ``invalid`` for an awareness clock out of range or a state that is no object),
  or closed it with 4400 (malformed) or 1009 (too big);
- nothing was logged at ERROR, and no socket closed with 1000, 1006 or 1011 where a reply or
  a refusal was due: that is an exception escaping the socket loop (a "crash").

After every batch of 50 a healthy owner in the same session still gets a prompt acked and
answered, ``/healthz`` answers 200, its presence is untouched, it could read every frame
the server relayed, and no relayed awareness client id is past what a stock Yjs client can
read (2**53 - 1). At the end its copy of the document equals the stored transcript, which
holds only acknowledged entries and replies. Violations are collected, not raised at once,
so one run reports every misbehaving category; ``-s`` prints the tallies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hypothesis
import pytest
import websockets
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from parley.session.commands import command_id_unread
from parley.session.json_values import json_values_refusal
from parley.session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.yclient import YClient

T = TypeVar("T")

SEED = int(os.environ.get("PARLEY_FUZZ_SEED", "1729"))
BINARY_CASES = 300
JSON_CASES = 300
BATCHES = 12
MAX_WS_BYTES = 256 * 1024  # small, so oversized cases are cheap to send
REPLY_TIMEOUT_S = 20.0
# The README's error table, plus ``unknown_command`` (its prose and session/errors.py) and
# ``rate_limited`` (its settings table; the fuzz server's limits are raised out of reach).
STABLE_CODES = frozenset(
    {"invalid", "too_large", "unknown_command", "unauthenticated", "forbidden", "not_found"}
    | {"conflict", "busy", "queue_full", "unavailable", "rate_limited"}
)
FUZZERS = {"mallory": "editor", "vera": "viewer", "olga": "owner"}
HEALTH_CLIENT_ID = 4242
HEALTH_STATE = {"user": {"name": "health"}}
TYPES = ["prompt", "message", "cancel", "set_policy", "pin", "unpin", "set_fact"]
ACK_KEYS = {
    "prompt": "prompt_id",
    "message": "message_id",
    "cancel": "prompt_id",
    "set_policy": "policy",
    "pin": "entry_id",
    "unpin": "entry_id",
    "set_fact": "key",
}
FACT_KEYS = ["account", "env", "owner.team", "a:b-c_1"]
POLICIES = ["queue", "coalesce", "interrupt", "reject"]
REPLY_AUTHOR = "parley-offline"
JS_MAX_SAFE_INTEGER = 2**53 - 1
# What uvicorn logs (at ERROR) when it closes a socket with 1007: a refusal, not a crash.
UVICORN_BAD_UTF8 = "Invalid UTF-8 sequence received from client."
# Generous command and update rates: the fuzzer probes parsing, not the rate limiter.
# (Settings ignores names it does not know.)
UNLIMITED = {
    "commands_per_second": 1e6,
    "commands_burst": 1_000_000,
    "user_commands_per_second": 1e6,
    "updates_per_second": 1e6,
    "updates_burst": 1_000_000,
    "abuse_refusals": 1_000_000,
    "document_write_bytes_per_s": 1e12,
    "document_write_burst_bytes": 10**12,
    "awareness_bytes_per_s": 1e12,
    "awareness_burst_bytes": 10**12,
    "sync_requests_per_minute": 1e9,
    "sync_requests_burst": 10**9,
    "socket_opens_per_minute": 1e9,  # the fuzzer opens a socket again after each close
    "socket_opens_burst": 10**9,
}


@dataclass(frozen=True, slots=True)
class Case:
    kind: str  # "binary" or "json"
    category: str
    frame: bytes | str
    user: str = "mallory"
    closes: frozenset[int] = frozenset()  # close codes this case may cause
    stays_open: bool = True  # whether leaving the socket open is acceptable
    errors: frozenset[str] = frozenset()  # null-id errors a binary case may cause
    required_error: str | None = None
    as_text: bool = False  # bytes sent in a text frame: invalid UTF-8

    def describe(self) -> str:
        frame = self.frame if len(self.frame) <= 400 else self.frame[:400]
        more = f" (+{len(self.frame) - 400})" if len(self.frame) > 400 else ""
        return f"{self.kind}/{self.category} by {self.user}: {frame!r}{more}"


@dataclass(slots=True)
class Outcome:
    replies: list[dict[str, Any]]
    close_code: int | None
    close_reason: str = ""


# -- hypothesis strategies, drawn without I/O ---------------------------------------------

_SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
TEXTS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None), max_size=40),
    st.text(st.characters(codec=None) | _SURROGATES, max_size=12),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXTS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXTS, kids, max_size=4),
    max_leaves=12,
)
COMMANDS = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | JSON_VALUES, "id": TEXTS | JSON_VALUES},
    optional={
        "text": TEXTS | JSON_VALUES,
        "prompt_id": TEXTS | JSON_VALUES,
        "policy": st.sampled_from(POLICIES) | JSON_VALUES,
        "entry_id": TEXTS | JSON_VALUES,
        "key": st.sampled_from(FACT_KEYS) | TEXTS | JSON_VALUES,
        "value": TEXTS | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
AWARENESS_STATES = st.dictionaries(TEXTS, JSON_VALUES, max_size=6)
BINARY = st.binary(max_size=64)


def draw(strategy: st.SearchStrategy[T], count: int, seed: int) -> list[T]:
    """``count`` values of ``strategy``, collected by a test that only records them."""
    drawn: list[T] = []

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(strategy)
    def collect(value: T) -> None:
        drawn.append(value)

    collect()
    return drawn


@dataclass(slots=True)
class Drawn:
    commands: list[dict[str, Any]]
    states: list[dict[str, Any]]
    binaries: list[bytes]

    @classmethod
    def new(cls, seed: int) -> Drawn:
        return cls(
            draw(COMMANDS, 150, seed), draw(AWARENESS_STATES, 60, seed), draw(BINARY, 60, seed)
        )


# -- wire helpers ----------------------------------------------------------------------------


def varuint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varbytes(data: bytes) -> bytes:
    return varuint(len(data)) + data


def awareness(entries: list[tuple[int, int, bytes]], count: int | None = None) -> bytes:
    body = varuint(len(entries) if count is None else count)
    body += b"".join(varuint(cid) + varuint(clock) + varbytes(raw) for cid, clock, raw in entries)
    return b"\x01" + varbytes(body)


def state_json(state: Any) -> bytes:
    return json.dumps(state).encode()


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def _finite(text: str) -> float:
    """A JSON number as a float, refused past a double's range (``1e400`` is malformed, as
    ``Infinity`` is: review I2-1)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(text)
    return value


def readable_id(frame: str) -> str | None:
    """The id a reply must carry: the command's, or ``None`` when it cannot be read; of a
    frame refused unparsed (more JSON values than any command holds), the id found at
    either end, as a frame over the command bytes is answered (docs/websocket.md)."""
    if json_values_refusal(frame) is not None:
        return command_id_unread(frame)
    try:
        data = json.loads(frame, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        return None
    ident = data.get("id") if isinstance(data, dict) else None
    return ident if isinstance(ident, str) else None


# -- the generators --------------------------------------------------------------------------


@dataclass(slots=True)
class Memory:
    """What earlier cases produced, so later ones can aim at real prompts and ids."""

    prompts: list[str] = field(default_factory=list)
    used_ids: dict[str, dict[str, str]] = field(default_factory=dict)  # user -> id -> type
    server_update: bytes = b"\x00\x00"  # the server's document, as the healthy client sees it
    acked: set[str] = field(default_factory=set)  # entry ids named in acks


def _pick(rng: random.Random, generators: dict[str, tuple[int, Any]]) -> str:
    """A generator's name, chosen by weight."""
    return rng.choices(list(generators), weights=[w for w, _ in generators.values()])[0]


CLOSE_4400 = frozenset({4400})
CRASH_CLOSES = frozenset({1000, 1006, 1011})  # the server gave up on a socket it had to answer
PRESENCE_ERRORS = frozenset({"forbidden", "too_large"})


def binary_case(rng: random.Random, drawn: Drawn, memory: Memory) -> Case:
    category = _pick(rng, BINARY_GENERATORS)
    user = rng.choice(list(FUZZERS))
    frame, closes, stays_open, errors, required = BINARY_GENERATORS[category][1](rng, drawn, memory)
    return Case("binary", category, frame, user, closes, stays_open, errors, required)


BinaryResult = tuple[bytes, frozenset[int], bool, frozenset[str], str | None]


def _malformed(frame: bytes) -> BinaryResult:
    return frame, CLOSE_4400, False, frozenset(), None


def _random_bytes(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    if rng.random() < 0.5:
        frame = rng.choice(drawn.binaries)
    else:
        frame = rng.randbytes(rng.randrange(0, 48))
    return frame, CLOSE_4400, True, PRESENCE_ERRORS, None


def _truncated_varint(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    prefix = rng.choice([b"", b"\x00", b"\x00\x02", b"\x01", b"\x00\x00"])
    tail = bytes(0x80 | rng.randrange(128) for _ in range(rng.randrange(0 if prefix else 1, 7)))
    return _malformed(prefix + tail)


def _overlong_varint(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    prefix = rng.choice([b"", b"\x00", b"\x01", b"\x00\x02"])
    return _malformed(prefix + b"\xff" * rng.randrange(9, 16) + b"\x01")


def _unknown_message_type(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    kind = rng.choice([2, 4, 5, 127, 128, 2**20, 2**40 + 3])
    return _malformed(varuint(kind) + rng.randbytes(rng.randrange(0, 12)))


def _bad_sync_type(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    sync_type = rng.choice([3, 4, 100, 2**14, 2**50])
    return _malformed(b"\x00" + varuint(sync_type) + varbytes(rng.randbytes(4)))


def _huge_length(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    declared = rng.choice([5, 1000, 2**20, 2**31, 2**56 - 1])
    head = rng.choice([b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x01"])
    if head == b"\x01" and rng.random() < 0.5:  # inside the awareness update: a state's length
        inner = varuint(1) + varuint(7) + varuint(1) + varuint(declared) + b"{}"
        return _malformed(b"\x01" + varbytes(inner))
    return _malformed(head + varuint(declared) + rng.randbytes(rng.randrange(0, 4)))


def _trailing_bytes(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    valid = rng.choice(
        [
            b"\x03",
            encode_sync(SyncType.STEP1, b"\x00"),
            encode_sync(SyncType.UPDATE, b"\x00\x00"),
            awareness([(rng.randrange(1, 2**31), 1, b"{}")]),
        ]
    )
    if valid[0] == 1 and rng.random() < 0.5:  # trailing bytes inside the awareness update
        inner = varuint(1) + varuint(9) + varuint(1) + varbytes(b"{}") + b"\x00"
        return _malformed(b"\x01" + varbytes(inner))
    return _malformed(valid + rng.randbytes(rng.randrange(1, 8)))


def _garbage_state_vector(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    junk = rng.randbytes(rng.randrange(1, 40))
    if rng.random() < 0.3:
        junk = varuint(rng.randrange(1, 2**40)) + junk  # a huge client count
    return encode_sync(SyncType.STEP1, junk), CLOSE_4400, True, frozenset(), None


def _garbage_update(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    junk = rng.choice([rng.randbytes(rng.randrange(1, 60)), rng.choice(drawn.binaries)])
    sync = rng.choice([SyncType.STEP2, SyncType.UPDATE])
    return encode_sync(sync, junk), CLOSE_4400, True, frozenset({"forbidden"}), None


def _forged_update(rng: random.Random) -> bytes:
    forged: Doc[Any] = Doc()
    choice = rng.randrange(3)
    if choice == 0:
        entry = Map({"id": f"forged-{rng.randrange(10**6)}", "kind": "reply", "content": Text("x")})
        forged.get("transcript", type=Array).append(entry)
    elif choice == 1:
        forged.get("meta", type=Map)["policy"] = "reject"
    else:
        forged.get("evil", type=Text).insert(0, "pwned" * rng.randrange(1, 50))
    return forged.get_update()


def _corrupted_update(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    update = bytearray(_forged_update(rng))
    for _ in range(rng.randrange(1, 4)):
        update[rng.randrange(len(update))] = rng.randrange(256)
    if rng.random() < 0.4:
        update = update[: rng.randrange(len(update))]
    return (
        encode_sync(SyncType.UPDATE, bytes(update)),
        CLOSE_4400,
        True,
        frozenset({"forbidden"}),
        None,
    )


def _client_write(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    # Dropped, never a close, ``forbidden`` told once a socket (review RE F1: each write
    # counted toward the abuse limit, and a stock client typing was closed 4429 for good).
    if rng.random() < 0.5 and memory.server_update != b"\x00\x00":
        copy: Doc[Any] = Doc()
        copy.apply_update(memory.server_update)
        before = copy.get_state()
        transcript = copy.get("transcript", type=Array)
        if len(transcript):
            del transcript[rng.randrange(len(transcript))]  # a deletion only
            update = copy.get_update(before)
            return (
                encode_sync(SyncType.UPDATE, update),
                frozenset(),
                True,
                frozenset({"forbidden"}),
                None,
            )
    sync = rng.choice([SyncType.STEP2, SyncType.UPDATE])
    return encode_sync(sync, _forged_update(rng)), frozenset(), True, frozenset({"forbidden"}), None


def _noop_update(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    update = rng.choice([Doc().get_update(), memory.server_update])
    sync = rng.choice([SyncType.STEP2, SyncType.UPDATE])
    return encode_sync(sync, update), frozenset(), True, frozenset(), None


def _query_awareness(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    return b"\x03", frozenset(), True, frozenset(), None


def _awareness_bad_json(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    raw = rng.choice(
        [
            b"{",
            b"{'a': 1}",
            b"undefined",
            b'{"a":}',
            b'{"a":1,}',
            b"[1,2",
            b"tru",
            b'"unterminated',
            b'{"a" 1}',
            b'{"a":1}}',
            b'{"a":01}',
            b"\xff\xfe{}",
            b'{"a":"\xc3\x28"}',  # invalid UTF-8
            b'{"n":' + b"9" * 5000 + b"}",  # past Python's int digit limit
        ]
    )
    return _malformed(awareness([(rng.randrange(1, 2**31), 1, raw)]))


def _awareness_not_an_object(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    # JSON, and what y-protocols sends for setLocalState(x), but no object: refused (told
    # once a socket), never a close (review RE-3: 4400 ended a stock client for good).
    raw = rng.choice([b"[]", b"[1,2]", b"1", b'"a string"', b"true", b"false"])
    frame = awareness([(rng.randrange(1, 2**31), 1, raw)])
    return frame, frozenset(), True, frozenset({"invalid"}), None


def _awareness_non_finite(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    raw = rng.choice([b'{"x":NaN}', b'{"x":Infinity}', b'{"x":[-Infinity]}'])
    return _malformed(awareness([(rng.randrange(1, 2**31), 1, raw)]))


def _awareness_out_of_range(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    # Valid JSON whose number overflows a double: refuse it, or relay it as JSON.
    raw = rng.choice(
        [b'{"x":1e400}', b'{"x":-1e999}', b'{"cursor":{"x":1.5e308e0}}', b'{"y":2e308}']
    )
    frame = awareness([(rng.randrange(1, 2**31), 1, raw)])
    return frame, CLOSE_4400, True, PRESENCE_ERRORS, None


def _awareness_deep(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    if rng.random() < 0.5:
        depth = rng.randrange(20_000, 60_000)  # past any recursion limit, under too_large
        raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
        return _malformed(awareness([(rng.randrange(1, 2**31), 1, raw)]))
    depth = rng.randrange(10, 400)
    raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    frame = awareness([(rng.randrange(1, 2**31), 1, raw)])
    return frame, CLOSE_4400, True, PRESENCE_ERRORS, None


def _awareness_huge_state(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    raw = state_json({"blob": "x" * rng.randrange(16_400, 120_000)})
    frame = awareness([(rng.randrange(1, 2**31), 1, raw)])
    return frame, frozenset(), True, PRESENCE_ERRORS, "too_large"


def _awareness_spoof(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    # Ignored or refused (stock clients echo others' states); the health check sees it fail.
    state = rng.choice([{"user": {"name": "not health"}}, None, {"parley": {"user_id": "health"}}])
    raw = b"null" if state is None else state_json(state)
    frame = awareness([(HEALTH_CLIENT_ID, rng.randrange(2, 2**40), raw)])
    return frame, frozenset(), True, frozenset({"forbidden"}), None


def _awareness_many_clients(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    entries = [(rng.randrange(10**6, 2**31), 1, b"{}") for _ in range(rng.randrange(9, 30))]
    # Refused ``forbidden`` on a socket that shows no client of its own; one that shows one
    # already relays the others (other tabs' clients: review RH-3), so whether the refusal
    # is due hangs on what an earlier case left shown (it failed CI once). The refusal
    # itself is tested in tests/session/test_presence.py.
    return awareness(entries), frozenset(), True, PRESENCE_ERRORS, None


def _awareness_count_mismatch(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    entries = [(rng.randrange(1, 2**31), 1, b"{}") for _ in range(rng.randrange(0, 3))]
    count = len(entries) + rng.choice([1, 2, 1000, 2**40])
    return _malformed(awareness(entries, count=count))


def _awareness_extreme_ids(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    cid = rng.choice([0, 2**32 - 1, 2**32, 2**53 + 1, 2**56 - 1])
    clock = rng.choice([0, 2**31, 2**56 - 1])
    frame = awareness([(cid, clock, b'{"user":{"name":"edge"}}')])
    # An unreadable id closes 4400; a clock at the top is refused, the socket kept.
    return frame, CLOSE_4400, True, PRESENCE_ERRORS | frozenset({"invalid"}), None


def _awareness_leave(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    frame = awareness([(rng.randrange(1, 2**31), rng.randrange(0, 100), b"null")])
    return frame, frozenset(), True, PRESENCE_ERRORS, None


def _awareness_drawn(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    raw = json.dumps(rng.choice(drawn.states)).encode()  # may hold NaN: 4400
    frame = awareness([(rng.randrange(1, 2**31), rng.randrange(1, 10), raw)])
    return frame, CLOSE_4400, True, PRESENCE_ERRORS, None


def _binary_oversized(rng: random.Random, drawn: Drawn, memory: Memory) -> BinaryResult:
    head = rng.choice([b"\x00\x02", b"\x01"])
    body = rng.randbytes(MAX_WS_BYTES + rng.randrange(1, 4096))
    return head + varbytes(body), frozenset({1009}), False, frozenset(), None


BINARY_GENERATORS: dict[str, tuple[int, Callable[[random.Random, Drawn, Memory], BinaryResult]]] = {
    "random_bytes": (8, _random_bytes),
    "truncated_varint": (4, _truncated_varint),
    "overlong_varint": (2, _overlong_varint),
    "unknown_type": (3, _unknown_message_type),
    "bad_sync_type": (2, _bad_sync_type),
    "huge_length": (4, _huge_length),
    "trailing_bytes": (3, _trailing_bytes),
    "garbage_state_vector": (4, _garbage_state_vector),
    "garbage_update": (5, _garbage_update),
    "corrupted_update": (5, _corrupted_update),
    "client_write": (4, _client_write),
    "noop_update": (3, _noop_update),
    "query_awareness": (1, _query_awareness),
    "awareness_bad_json": (5, _awareness_bad_json),
    "awareness_non_finite": (2, _awareness_non_finite),
    "awareness_not_an_object": (2, _awareness_not_an_object),
    "awareness_out_of_range": (2, _awareness_out_of_range),
    "awareness_deep": (3, _awareness_deep),
    "awareness_huge_state": (2, _awareness_huge_state),
    "awareness_spoof": (3, _awareness_spoof),
    "awareness_many_clients": (2, _awareness_many_clients),
    "awareness_count_mismatch": (3, _awareness_count_mismatch),
    "awareness_extreme_ids": (2, _awareness_extreme_ids),
    "awareness_leave": (2, _awareness_leave),
    "awareness_drawn": (6, _awareness_drawn),
    "oversized": (1, _binary_oversized),
}


def _command(rng: random.Random, memory: Memory, kind: str | None = None) -> dict[str, Any]:
    """A well-formed command (which the role may still refuse)."""
    kind = kind or rng.choice(TYPES)
    command: dict[str, Any] = {"type": kind, "id": f"c{rng.randrange(10**9)}"}
    if kind in ("prompt", "message"):
        command["text"] = rng.choice(["hi", "what changed?", "the log is in #ops", "x " * 50])
    elif kind == "cancel":
        command["prompt_id"] = rng.choice([*memory.prompts[-20:], "no-such-prompt"])
    elif kind in ("pin", "unpin"):
        command["entry_id"] = rng.choice([*sorted(memory.acked)[-20:], "no-such-entry"])
    elif kind == "set_fact":
        command["key"] = rng.choice(FACT_KEYS)
        command["value"] = rng.choice([None, "7731", "prod", "x" * rng.randrange(1, 2000)])
    else:
        command["policy"] = rng.choice(POLICIES)
    return command


JsonResult = tuple[str | bytes, frozenset[int], bool, str | None]


def _text(frame: str, required: str | None = None) -> JsonResult:
    return frame, frozenset(), True, required


def _not_json(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    valid = json.dumps(_command(rng, memory))
    frame = rng.choice(
        [
            "",
            " ",
            "{not json",
            "nul",
            "{'type': 'prompt'}",
            '{"type":"prompt","id":"a",}',
            valid[: rng.randrange(1, len(valid))],
            valid + "}",
            valid + valid,
            "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 60))),
            "\ufeff" + valid,
        ]
    )
    return _text(frame, "invalid")


def _not_object(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    value = rng.choice([[], [_command(rng, memory)], 1, -0.5, "prompt", None, True, {"a": 1}])
    required = None if isinstance(value, dict) else "invalid"
    return _text(json.dumps(value), required)


def _non_finite(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory)
    key = rng.choice([*command, "extra"])
    literal = rng.choice(["NaN", "Infinity", "-Infinity"])
    body = json.dumps({k: v for k, v in command.items() if k != key})
    return _text(body[:-1] + f', "{key}": {literal}}}', "invalid")


def _huge_number(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory)
    number = rng.choice(["9" * rng.randrange(4400, 20_000), "1e400", "-1e999", "1" + "0" * 400])
    frame = json.dumps(command)[:-1] + f', "n": {number}}}'
    # Past Python's digits for an int, or a float past a double's range: malformed.
    return _text(frame, "invalid" if len(number) > 4300 or "e" in number else None)


def _deep_nesting(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    depth = rng.randrange(20_000, 100_000)
    if rng.random() < 0.5:
        return _text("[" * depth + "]" * depth * rng.randrange(2), "invalid")
    if rng.random() < 0.5:
        return _text(
            '{"type":"prompt","id":"deep","text":' + "[" * depth + "]" * depth + "}", "invalid"
        )
    depth = rng.randrange(10, 400)
    field_name = rng.choice(["text", "id", "type", "prompt_id", "policy"])
    command = _command(rng, memory, "prompt")
    command[field_name] = json.loads("[" * depth + "]" * depth)
    return _text(json.dumps(command))


def _wrong_types(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory)
    key = rng.choice(list(command))
    command[key] = rng.choice([0, -1, 2**70, 1.5, True, None, [], {}, ["prompt"], {"id": "x"}])
    return _text(json.dumps(command))


def _missing_fields(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory)
    for key in rng.sample(list(command), rng.randrange(1, len(command) + 1)):
        del command[key]
    return _text(json.dumps(command))


def _unknown_command(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    kind = rng.choice(
        ["dance", "", "PROMPT", "Prompt", " prompt", "__proto__", "ack", "error", "sync"]
    )
    return _text(json.dumps({"type": kind, "id": f"u{rng.randrange(10**6)}"}), "unknown_command")


WEIRD = [
    "\u0000",
    "\u202eevil",
    "\u200b",
    "\ufeff",
    "\U0001f600",
    "e\u0301",
    "\ud800",
    "\udfff",
    "\ud83d",
    "a\u0000b",
    "\\",
    '"',
    "\n\r\t",
    "\uffff",
]


def _unicode(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory, rng.choice(["prompt", "message", "cancel", "set_fact", "pin"]))
    key = rng.choice([k for k in command if k != "type"])
    command[key] = "".join(rng.choice(WEIRD) for _ in range(rng.randrange(1, 6)))
    if key == "text" and not command[key].strip():
        command[key] += "!"
    raw = json.dumps(command, ensure_ascii=False)
    with contextlib.suppress(UnicodeEncodeError):  # lone surrogates travel only as \u escapes
        if rng.random() < 0.5 and raw.encode():
            return _text(raw)
    return _text(json.dumps(command))


def _huge_id(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory)
    command["id"] = "i" * rng.choice([129, 1000, 100_000])
    return _text(json.dumps(command), "invalid")


def _huge_text(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory, rng.choice(["prompt", "message"]))
    command["text"] = "y" * rng.randrange(32_001, 120_000)
    return _text(json.dumps(command), "too_large")


def _huge_other_field(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory, rng.choice(["cancel", "set_policy", "pin", "set_fact"]))
    key = rng.choice([k for k in command if k not in ("type", "id")])
    command[key] = "z" * rng.randrange(1000, 200_000)
    return _text(json.dumps(command))


def _json_oversized(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory, "prompt")
    command["text"] = "w" * (MAX_WS_BYTES + rng.randrange(1, 4096))
    return json.dumps(command), frozenset({1009}), False, None


def _invalid_utf8(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    frame = json.dumps(_command(rng, memory)).encode()
    cut = rng.randrange(len(frame))
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"])
    return frame[:cut] + bad + frame[cut:], frozenset({1007}), False, None


def _valid(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    return _text(json.dumps(_command(rng, memory)))


def _duplicate_keys(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    command = _command(rng, memory)
    key = rng.choice(list(command))
    other = json.dumps({key: rng.choice([5, None, "other", ["x"]])})[1:-1]
    return _text("{" + other + ", " + json.dumps(command)[1:])


def _drawn_command(rng: random.Random, drawn: Drawn, memory: Memory) -> JsonResult:
    return _text(json.dumps(rng.choice(drawn.commands)))


JSON_GENERATORS: dict[str, tuple[int, Callable[[random.Random, Drawn, Memory], JsonResult]]] = {
    "not_json": (5, _not_json),
    "not_object": (3, _not_object),
    "non_finite": (3, _non_finite),
    "huge_number": (3, _huge_number),
    "deep_nesting": (4, _deep_nesting),
    "wrong_types": (6, _wrong_types),
    "missing_fields": (5, _missing_fields),
    "unknown_type": (3, _unknown_command),
    "unicode": (6, _unicode),
    "huge_id": (2, _huge_id),
    "huge_text": (2, _huge_text),
    "huge_other_field": (2, _huge_other_field),
    "oversized": (1, _json_oversized),
    "invalid_utf8": (1, _invalid_utf8),
    "valid": (8, _valid),
    "duplicate_keys": (3, _duplicate_keys),
    "drawn": (14, _drawn_command),
}


def json_case(rng: random.Random, drawn: Drawn, memory: Memory) -> Case:
    used = [(user, cid, kind) for user, ids in memory.used_ids.items() for cid, kind in ids.items()]
    if used and rng.random() < 0.05:
        # The id of an earlier prompt or message, reused for the other kind by its author.
        user, cid, kind = rng.choice(used)
        other = "message" if kind == "prompt" else "prompt"
        reused = json.dumps({"type": other, "id": cid, "text": "a different command"})
        return Case("json", "reused_id", reused, user)
    category = _pick(rng, JSON_GENERATORS)
    frame, closes, stays_open, required = JSON_GENERATORS[category][1](rng, drawn, memory)
    user = rng.choice(list(FUZZERS))
    return Case(
        "json",
        category,
        frame,
        user,
        closes,
        stays_open,
        required_error=required,
        as_text=isinstance(frame, bytes),
    )


# -- sockets ---------------------------------------------------------------------------------


class FuzzSocket:
    """A raw session socket that speaks JSON (so binary-frame errors reach it as text)."""

    _probes = itertools.count()

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str) -> FuzzSocket:
        # Unbounded: between cases nobody reads the broadcasts, and a full queue would stall
        # the closing handshake (10 s) behind frames that are never read.
        sock = cls(await websockets.connect(url, max_size=None, max_queue=None))
        hello = await sock.exchange(None)
        assert hello.close_code is None and hello.replies == [], hello
        return sock

    async def exchange(self, case: Case | None) -> Outcome:
        """Send the case, then a probe; what came back before the probe's reply, or the close."""
        probe_id = f"zz-probe-{next(self._probes)}"
        probe = json.dumps({"type": "cancel", "id": probe_id, "prompt_id": "zz-no-such-prompt"})
        replies: list[dict[str, Any]] = []
        with contextlib.suppress(websockets.ConnectionClosed):
            if case is not None:
                if case.as_text:
                    assert isinstance(case.frame, bytes)
                    await self.ws.send(case.frame, text=True)
                else:
                    await self.ws.send(case.frame)
            await self.ws.send(probe)
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                while True:
                    message = await self.ws.recv()
                    if isinstance(message, bytes):
                        continue  # document updates and presence
                    reply = json.loads(message)
                    if reply.get("id") == probe_id:
                        # Unknown to whoever may cancel; a viewer may cancel nothing.
                        assert reply.get("code") in {"not_found", "forbidden"}, reply
                        return Outcome(replies, None)
                    replies.append(reply)
        except websockets.ConnectionClosed:
            return Outcome(replies, self.ws.close_code, self.ws.close_reason or "")
        except TimeoutError:
            raise AssertionError(
                f"no answer in {REPLY_TIMEOUT_S} s to {case.describe() if case else 'hello'}"
            ) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


class ErrorLog(logging.Handler):
    """Collects ERROR records: an exception that escaped the socket loop, or a task."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != UVICORN_BAD_UTF8:
            self.records.append(record)

    def since(self, start: int) -> list[str]:
        found = []
        for record in self.records[start:]:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"[:300]
            found.append(f"{record.name}: {text}")
        return found


# -- checks ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    acks: int = 0
    crashes: int = 0
    violations: list[str] = field(default_factory=list)


def judge(case: Case, outcome: Outcome, tally: Tally, memory: Memory) -> list[str]:
    """What is wrong with ``outcome`` as an answer to ``case`` (nothing, ideally)."""
    problems: list[str] = []
    if outcome.close_code is not None:
        tally.closes[outcome.close_code] += 1
        if outcome.close_code not in case.closes:
            problems.append(f"closed with {outcome.close_code} {outcome.close_reason!r}")
    elif not case.stays_open:
        problems.append(f"socket stayed open; expected a close with {sorted(case.closes)}")
    for reply in outcome.replies:
        if reply.get("type") == "error":
            tally.errors[str(reply.get("code"))] += 1
            if reply.get("code") not in STABLE_CODES:
                problems.append(f"unstable error code {reply.get('code')!r}")
            if not isinstance(reply.get("message"), str):
                problems.append(f"error without a message: {reply}")
        elif reply.get("type") == "ack":
            tally.acks += 1
        else:
            problems.append(f"reply of unknown type: {_short(reply)}")
    if case.kind == "binary":
        problems += _judge_binary(case, outcome)
    else:
        problems += _judge_json(case, outcome, memory)
    return problems


def _judge_binary(case: Case, outcome: Outcome) -> list[str]:
    problems = []
    codes = [r.get("code") for r in outcome.replies]
    for reply in outcome.replies:
        if reply.get("type") != "error" or reply.get("id") is not None:
            problems.append(f"a binary frame got {_short(reply)}")
        elif reply.get("code") not in case.errors:
            problems.append(f"unexpected error {reply.get('code')!r}: {reply.get('message')!r}")
    if case.required_error and outcome.close_code is None and case.required_error not in codes:
        problems.append(f"expected a {case.required_error!r} error, got {codes}")
    return problems


def _judge_json(case: Case, outcome: Outcome, memory: Memory) -> list[str]:
    if outcome.close_code is not None and outcome.close_code in case.closes:
        return []
    if not isinstance(case.frame, str):
        return []  # invalid UTF-8 that stayed open: reported by ``judge``
    if len(outcome.replies) != 1:
        return [f"expected exactly one reply, got {[_short(r) for r in outcome.replies]}"]
    reply = outcome.replies[0]
    expected_id = readable_id(case.frame)
    problems = []
    if reply.get("id") != expected_id:
        problems.append(f"reply id {_short(reply.get('id'))} is not {_short(expected_id)}")
    if case.required_error and reply.get("code") != case.required_error:
        problems.append(f"expected error {case.required_error!r}, got {_short(reply)}")
    if reply.get("type") == "ack":
        command = json.loads(case.frame)
        wanted = ACK_KEYS.get(command.get("type"))
        if wanted is None or wanted not in reply:
            problems.append(f"a {command.get('type')!r} command was acked with {_short(reply)}")
        memory.acked.update(str(reply[k]) for k in ("prompt_id", "message_id") if k in reply)
        if not problems and command.get("type") in ("prompt", "message"):
            memory.used_ids.setdefault(case.user, {})[command["id"]] = command["type"]
            if command["type"] == "prompt":
                memory.prompts.append(reply["prompt_id"])
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


# -- the test --------------------------------------------------------------------------------


async def test_hostile_frames_are_refused_cleanly(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "data", max_ws_message_bytes=MAX_WS_BYTES, **UNLIMITED)
    errors = ErrorLog()
    async with serve_in_process(settings) as server:
        # Only now: starting uvicorn reconfigures its loggers and drops their handlers.
        watched = [logging.getLogger(name) for name in ("parley", "uvicorn.error", "asyncio")]
        for logger in watched:
            logger.addHandler(errors)
        try:
            await _fuzz(server, errors)
        finally:
            for logger in watched:
                logger.removeHandler(errors)


async def _fuzz(server: RunningServer, errors: ErrorLog) -> None:
    rng = random.Random(SEED)
    drawn = Drawn.new(SEED)
    sid = await server.new_session({**FUZZERS, "health": "owner"}, title="fuzz")
    tokens = {user: await server.token(sid, user) for user in FUZZERS}
    health = await _healthy_client(server, sid)
    memory = Memory()
    tally = Tally()
    sockets: dict[str, FuzzSocket] = {}
    acked: set[str] = set()

    try:
        for batch in range(BATCHES):
            memory.server_update = health.doc.get_update()
            cases = [binary_case(rng, drawn, memory) for _ in range(BINARY_CASES // BATCHES)]
            cases += [json_case(rng, drawn, memory) for _ in range(JSON_CASES // BATCHES)]
            rng.shuffle(cases)
            for case in cases:
                sock = sockets.get(case.user)
                if sock is None:
                    url = f"{server.ws_url}/ws/sessions/{sid}?token={tokens[case.user]}"
                    sock = sockets[case.user] = await FuzzSocket.open(url)
                logged = len(errors.records)
                tally.sent[f"{case.kind}/{case.category}"] += 1
                outcome = await sock.exchange(case)
                if outcome.close_code is not None:
                    del sockets[case.user]
                    await sock.close()
                    await asyncio.sleep(0.02)  # the server logs a crash after the close
                problems = judge(case, outcome, tally, memory)
                logged_now = errors.since(logged)
                if logged_now:
                    problems.append(f"server logged {logged_now[:2]}")
                crashed = (
                    outcome.close_code in CRASH_CLOSES and outcome.close_code not in case.closes
                )
                if logged_now or crashed:
                    tally.crashes += 1
                if problems:
                    tally.violations.append(f"{case.describe()} -> {'; '.join(problems)}")
            failure = _reader_failure(health)
            if failure is not None:
                tally.violations.append(
                    f"health/reader batch {batch}: the healthy client could not read a frame the "
                    f"server sent it: {type(failure).__name__}: {failure}"
                )
                health.ws.transport.abort()  # its reader is gone: no closing handshake
                health = await _healthy_client(server, sid)
            acked.add(await _check_health(server, health, batch))
            tally.violations += [f"health/{p}" for p in _presence_problems(health, batch)]
        await _check_document(server, health, sid, memory, acked)
    finally:
        for sock in sockets.values():
            await sock.close()
        _summarise(tally)
    if tally.violations:
        pytest.fail(_report(tally), pytrace=False)


async def _healthy_client(server: RunningServer, sid: str) -> YClient:
    health = await server.connect(sid, "health")
    await health.set_awareness(HEALTH_CLIENT_ID, 1, HEALTH_STATE)
    await health.wait_until(lambda c: HEALTH_CLIENT_ID in c.awareness)
    return health


def _reader_failure(client: YClient) -> BaseException | None:
    """Why the client's reader stopped, if it failed on a frame (not on a close)."""
    reader = client._reader  # a test client: its reader task is fair game
    if not reader.done() or reader.cancelled():
        return None
    return reader.exception()


async def _check_health(server: RunningServer, health: YClient, batch: int) -> str:
    """The healthy owner still prompts and is answered; returns its prompt's id."""
    assert (await server.http.get("/healthz")).status_code == 200
    policy = await health.command(
        {"type": "set_policy", "id": f"health-policy-{batch}", "policy": "queue"}
    )
    assert policy["type"] == "ack", policy
    ack = await health.command(
        {"type": "prompt", "id": f"health-{batch}", "text": f"health check {batch}"}, timeout=20
    )
    assert ack["type"] == "ack", f"batch {batch}: the healthy client was refused: {ack}"
    prompt_id = str(ack["prompt_id"])

    def answered(client: YClient) -> bool:
        entries = {e["id"]: e for e in client.entries()}
        prompt = entries.get(prompt_id)
        if prompt is None or prompt["status"] != "done":
            return False
        reply = entries.get(prompt.get("reply_id"))
        return reply is not None and reply["status"] == "done"

    await health.wait_until(answered, timeout=60)
    assert health.close_code is None
    own = {**HEALTH_STATE, "parley": {"user_id": "health"}}
    assert health.awareness.get(HEALTH_CLIENT_ID) == own, "presence was spoofed"
    for client_id, state in health.awareness.items():
        if state is not None:
            user = state.get("parley", {}).get("user_id")
            assert user in {*FUZZERS, "health"}, (client_id, state)
    return prompt_id


def _presence_problems(health: YClient, batch: int) -> list[str]:
    """Client ids a stock Yjs peer cannot read: lib0 refuses varuints past 2**53 - 1."""
    unreadable = sorted(cid for cid in health.awareness if cid > JS_MAX_SAFE_INTEGER)
    if not unreadable:
        return []
    return [
        f"presence batch {batch}: awareness client ids past 2**53 - 1 were relayed: {unreadable}"
    ]


async def _check_document(
    server: RunningServer, health: YClient, sid: str, memory: Memory, acked: set[str]
) -> None:
    """No client write got in: the live document equals the store, holding acked entries."""
    assert (await server.http.get("/readyz")).status_code == 200

    def settled(client: YClient) -> bool:
        busy = {"queued", "running", "streaming"}
        return len(client.queue) == 0 and all(e["status"] not in busy for e in client.entries())

    await health.wait_until(settled, timeout=60)
    stored = await server.transcript(sid)
    await health.wait_until(lambda c: len(c.transcript) >= len(stored), timeout=20)
    assert [e["id"] for e in health.entries()] == [e["id"] for e in stored]
    known = acked | memory.acked
    for entry in stored:
        if entry["kind"] == "reply":
            assert entry["author"] == REPLY_AUTHOR, entry
        else:  # stored only with an ack, so never without one
            assert entry["kind"] in ("prompt", "message") and entry["id"] in known, entry


def _report(tally: Tally) -> str:
    """Every misbehaving category, with a count and its first two cases."""
    groups: dict[str, list[str]] = {}
    for violation in tally.violations:
        groups.setdefault(violation.split(" ", 1)[0], []).append(violation)
    lines = [
        f"{len(tally.violations)} violations in {sum(tally.sent.values())} cases "
        f"({tally.crashes} crashed the socket loop), seed {SEED}:"
    ]
    for group, found in sorted(groups.items()):
        lines.append(f"- {group}: {len(found)}")
        lines += [f"    {v}" for v in found[:2]]
    return "\n".join(lines)


def _summarise(tally: Tally) -> None:
    def by_kind(kind: str) -> str:
        items = {k.split("/", 1)[1]: n for k, n in sorted(tally.sent.items()) if k.startswith(kind)}
        return f"{sum(items.values())} {items}"

    print(
        f"\nfuzz (seed {SEED}): binary {by_kind('binary/')}; json {by_kind('json/')}; "
        f"closes {dict(sorted(tally.closes.items()))}; "
        f"errors {dict(sorted(tally.errors.items()))}; "
        f"acks {tally.acks}; crashes {tally.crashes}; violations {len(tally.violations)}"
    )
