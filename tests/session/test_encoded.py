"""Sync answers from the committed document's encoding: a client ends with what the server
holds, whatever it had and whatever was committed since the full encoding was taken."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, write_var_uint

from parley.session.encoded import (
    DEFAULT_CHUNK_BYTES,
    EMPTY_STATE_VECTOR,
    MAX_UNKNOWN_CLIENTS,
    EncodedDocument,
)
from parley.session.yprotocol import (
    ProtocolError,
    SyncMessage,
    SyncType,
    decode_client_frame,
    decode_state_vector,
)
from parley.session.ysplit import split_update
from tests.ystate import state_of

Change = tuple[str, int]
CHANGES = st.lists(
    st.tuples(st.sampled_from(["append", "edit", "delete", "set"]), st.integers(0, 30)),
    max_size=25,
)


def apply_change(doc: Doc[Any], change: Change) -> None:
    kind, n = change
    entries = doc.get("transcript", type=Array)
    if kind == "append" or not len(entries):
        entries.append(Map({"id": f"e{n}", "content": Text("x" * n)}))
    elif kind == "edit":
        entries[n % len(entries)]["content"].insert(0, f"<{n}>")
    elif kind == "delete":
        del entries[n % len(entries)]
    else:
        doc.get("meta", type=Map)["n"] = n


def committed(doc: Doc[Any], encoded: EncodedDocument, changes: list[Change]) -> None:
    """Make ``changes`` on the server document, recording each update as the room does."""
    subscription = doc.observe(lambda event: encoded.committed(event.update))
    for change in changes:
        apply_change(doc, change)
    doc.unobserve(subscription)


def _served(
    before: list[Change], after: list[Change], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[Doc[Any], EncodedDocument]:
    """A server document made by ``before``, copied, then changed by ``after`` (committed),
    its answers cut in parts of ``chunk_bytes`` (the default: one part, here)."""
    server: Doc[Any] = Doc()
    for change in before:
        apply_change(server, change)
    encoded = EncodedDocument(server.get_update(), chunk_bytes)
    committed(server, encoded, after)
    return server, encoded


def ask(encoded: EncodedDocument, state_vector: bytes) -> list[bytes]:
    return encoded.answer(state_vector)


def sync_messages(answer: list[bytes]) -> list[SyncMessage]:
    messages = [decode_client_frame(frame) for frame in answer]  # the same layout both ways
    assert all(isinstance(message, SyncMessage) for message in messages)
    return messages  # type: ignore[return-value]


def step2(answer: list[bytes]) -> bytes:
    """The update a sync step 2 frame carries (the answer's one frame)."""
    [message] = sync_messages(answer)
    assert message.sync_type is SyncType.STEP2
    return message.payload


def synced_from(answer: list[bytes], client: Doc[Any]) -> Doc[Any]:
    """``client`` once it applied every frame of ``answer``, which ends with the step 2."""
    messages = sync_messages(answer)
    assert [m.sync_type for m in messages] == [SyncType.UPDATE] * (len(messages) - 1) + [
        SyncType.STEP2
    ]
    for message in messages:
        client.apply_update(message.payload)
    return client


def content(doc: Doc[Any]) -> Any:
    return (doc.get("transcript", type=Array).to_py(), doc.get("meta", type=Map).to_py())


@settings(max_examples=60, deadline=None)
@given(CHANGES, CHANGES, CHANGES, st.booleans())
def test_an_answer_brings_any_client_to_the_committed_document(
    before: list[Change], seen: list[Change], after: list[Change], empty_client: bool
) -> None:
    server, encoded = _served(before, seen)
    client: Doc[Any] = Doc()
    if not empty_client:
        client.apply_update(server.get_update())  # a client that was in sync, then fell behind
    committed(server, encoded, after)
    asked = EMPTY_STATE_VECTOR if empty_client else client.get_state()
    assert content(synced_from(ask(encoded, asked), client)) == content(server)
    # Asked again (folded by now), the answer is the same document.
    assert content(synced_from(ask(encoded, EMPTY_STATE_VECTOR), Doc())) == content(server)


@settings(max_examples=40, deadline=None)
@given(CHANGES, CHANGES, st.booleans())
def test_the_step_2_alone_holds_everything_committed(
    before: list[Change], after: list[Change], empty_client: bool
) -> None:
    """A client counts itself synced when its sync step 2 is applied (y-websocket's
    ``synced``, the SDKs' ``ready()``): the committed changes not yet folded are in it, not
    in frames after it (review: a stock client was synced with no entries, no ``meta``)."""
    server: Doc[Any] = Doc()
    for change in before:
        apply_change(server, change)
    client: Doc[Any] = Doc()
    if not empty_client:
        client.apply_update(server.get_update())
    encoded = EncodedDocument(server.get_update())
    committed(server, encoded, after)
    asked = EMPTY_STATE_VECTOR if empty_client else client.get_state()
    client.apply_update(step2(ask(encoded, asked)))
    assert content(client) == content(server)
    assert state_of(client) == state_of(server)


@settings(max_examples=60, deadline=None)
@given(CHANGES, CHANGES, CHANGES, st.booleans(), st.integers(16, 400))
def test_an_answer_in_chunks_makes_the_document_a_one_frame_answer_makes(
    before: list[Change], seen: list[Change], after: list[Change], empty: bool, chunk: int
) -> None:
    """Review RE-1: an answer larger than the chunk size goes as sync updates and the step
    2 last; applied in order the client holds what the one-frame answer gives it, and the
    step 2 (where it counts itself synced) comes after every other part."""
    server, encoded = _served(before, seen, chunk)
    client: Doc[Any] = Doc()
    if not empty:
        client.apply_update(server.get_update())
    committed(server, encoded, after)
    one_frame = EncodedDocument(server.get_update())  # the default chunk: one frame, here
    asked = EMPTY_STATE_VECTOR if empty else client.get_state()
    assert len(ask(one_frame, asked)) == 1
    reference: Doc[Any] = Doc()
    reference.apply_update(client.get_update())
    synced_from(ask(one_frame, asked), reference)
    assert content(synced_from(ask(encoded, asked), client)) == content(reference)
    assert content(client) == content(server)
    assert state_of(client) == state_of(server)
    assert encoded.size == sum(map(len, encoded.parts()))


def test_a_large_answer_comes_in_frames_within_the_chunk_size() -> None:
    chunk = 1024
    server, encoded = _served([("append", n) for n in range(30)], [], chunk)
    committed(server, encoded, [("append", n) for n in range(200)] + [("delete", 3)])
    for client in (Doc(), _partly(encoded)):
        answer = ask(encoded, client.get_state())
        assert len(answer) > 3
        assert max(map(len, answer)) <= chunk + 8  # a frame's types and length
        synced_from(answer, client)  # the step 2 last
        assert content(client) == content(server)


def _partly(encoded: EncodedDocument) -> Doc[Any]:
    """A client that took the first half of a new client's answer, then lost its socket."""
    client: Doc[Any] = Doc()
    frames = sync_messages(ask(encoded, EMPTY_STATE_VECTOR))
    for message in frames[: len(frames) // 2]:
        client.apply_update(message.payload)
    return client


def test_a_bad_state_vector_is_a_protocol_error() -> None:
    server: Doc[Any] = Doc()
    apply_change(server, ("append", 3))
    with pytest.raises(ProtocolError):
        ask(EncodedDocument(server.get_update()), b"\xff\xff\xff")


@settings(max_examples=40, deadline=None)
@given(CHANGES, CHANGES)
def test_the_copy_rebuilds_the_committed_document(
    before: list[Change], after: list[Change]
) -> None:
    """What a failed write is undone from when the store cannot be read."""
    server, encoded = _served(before, after)
    rebuilt: Doc[Any] = Doc()
    rebuilt.apply_update(encoded.update())
    assert content(rebuilt) == content(server)
    assert state_of(rebuilt) == state_of(server)


@settings(max_examples=40, deadline=None)
@given(CHANGES, CHANGES, st.booleans(), CHANGES)
def test_a_copy_from_the_stored_bytes_answers_and_measures_what_a_first_sync_sends(
    before: list[Change], after: list[Change], with_snapshot: bool, later: list[Change]
) -> None:
    """Taken at a load from the snapshot and the log as stored (nothing encoded again),
    the copy answers with the document, and its ``size`` is what a new client is sent,
    before and after later commits."""
    server: Doc[Any] = Doc()
    for change in before:
        apply_change(server, change)
    snapshot = server.get_update() if with_snapshot else None
    log = [] if with_snapshot else [server.get_update()]  # without: a log from the start
    subscription = server.observe(lambda event: log.append(event.update))
    for change in after:
        apply_change(server, change)
    server.unobserve(subscription)
    encoded = EncodedDocument.stored(snapshot, log)
    # The first answer after a load is the document in its sync step 2, not the snapshot
    # with the log after it (a client is synced at its step 2).
    size = encoded.size
    assert len(step2(ask(encoded, EMPTY_STATE_VECTOR))) <= size
    for moment in ((), later):
        committed(server, encoded, list(moment))
        size = encoded.size
        answer = ask(encoded, EMPTY_STATE_VECTOR)
        assert content(synced_from(answer, Doc())) == content(server)
        assert len(step2(answer)) <= size


def state_vector(entries: list[tuple[int, int]], listed: int | None = None) -> bytes:
    """A state vector of ``entries``, its count ``listed`` (the entries' own unless told)."""
    out = bytearray(write_var_uint(len(entries) if listed is None else listed))
    for client, clock in entries:
        out += write_var_uint(client) + write_var_uint(clock)
    return bytes(out)


def _behind() -> tuple[Doc[Any], EncodedDocument, Doc[Any]]:
    """A server document, its copy, and a client that synced, then fell behind."""
    server, encoded = _served([("append", 3), ("set", 1)], [("append", 5)])
    client: Doc[Any] = Doc()
    client.apply_update(server.get_update())
    committed(server, encoded, [("edit", 1), ("append", 7), ("delete", 0)])
    return server, encoded, client


def test_clients_the_document_does_not_know_change_nothing_in_the_answer() -> None:
    server, encoded, client = _behind()
    known = list(decode_state_vector(client.get_state()).items())
    answer = ask(encoded, state_vector(known))
    few = [(1_000_000 + n, 1) for n in range(MAX_UNKNOWN_CLIENTS)]
    assert ask(encoded, state_vector(few + known)) == answer
    # Many (review: 690,000 of them in 4 MB): answered as an empty vector, the whole
    # document, which brings the client to what the known clients alone bring it to.
    many = [(1_000_000 + n, 1) for n in range(20_000)]
    whole = ask(encoded, state_vector(known + many))
    assert whole == ask(encoded, EMPTY_STATE_VECTOR)
    client.apply_update(step2(whole))
    assert content(client) == content(server)
    assert state_of(client) == state_of(server)


def test_a_vector_listing_too_many_clients_is_answered_with_its_entries_unread() -> None:
    """The work does not grow with the clients listed: a vector claiming 690,000 and
    holding none of them (a truncated one: read, it would not decode) is answered all the
    same, from its first number alone."""
    _, encoded, _ = _behind()
    listed = encoded.clients() + MAX_UNKNOWN_CLIENTS + 1
    for claimed in (listed, 690_000):
        assert ask(encoded, state_vector([], listed=claimed)) == ask(encoded, EMPTY_STATE_VECTOR)
    with pytest.raises(ProtocolError):  # one it reads fails to decode
        ask(encoded, state_vector([], listed=listed - 1))


def _stored_large(chunk: int) -> tuple[Doc[Any], bytes, EncodedDocument]:
    """A server document, its snapshot (many parts' worth) and a copy loaded from it."""
    server: Doc[Any] = Doc()
    for n in range(60):
        apply_change(server, ("append", n))
    snapshot = server.get_update()
    assert len(snapshot) > 4 * chunk
    return server, snapshot, EncodedDocument.stored(snapshot, [], chunk)


def test_a_stored_snapshot_waits_uncut_until_cut_or_answered() -> None:
    """Cutting a snapshot reads it struct by struct (up to ~1 s for 10 MB of tiny items):
    it is left uncut by the load and by commits, for the server to cut off its event loop
    (``uncut``, ``cut``); an answer asked first cuts it there and then."""
    chunk = 1024
    server, snapshot, encoded = _stored_large(chunk)
    committed(server, encoded, [("append", n) for n in range(100)])  # folded meanwhile
    assert encoded.uncut() == [snapshot]
    rebuilt: Doc[Any] = Doc()
    rebuilt.apply_update(encoded.update())  # a rebuild needs no cut
    assert content(rebuilt) == content(server)
    assert encoded.uncut() == [snapshot]
    assert encoded.cut(bytes(snapshot), split_update(snapshot, chunk))  # an equal copy
    assert encoded.uncut() == [] and not encoded.cut(snapshot, [snapshot])
    assert encoded.size == sum(map(len, encoded.parts()))
    answer = ask(encoded, EMPTY_STATE_VECTOR)
    assert max(map(len, answer)) <= chunk + 8
    assert content(synced_from(answer, Doc())) == content(server)
    loaded, _, unasked = _stored_large(chunk)
    assert content(synced_from(ask(unasked, EMPTY_STATE_VECTOR), Doc())) == content(loaded)
    assert unasked.uncut() == []


def test_an_update_larger_than_a_part_is_committed_uncut() -> None:
    """A replica's first commit is the whole document: kept whole until cut, like a
    snapshot, and answered in parts."""
    chunk = 1024
    server, snapshot, _ = _stored_large(chunk)
    encoded = EncodedDocument(Doc().get_update(), chunk)
    encoded.committed(snapshot)
    assert encoded.uncut() == [snapshot]
    answer = ask(encoded, EMPTY_STATE_VECTOR)
    assert len(answer) > 4 and max(map(len, answer)) <= chunk + 8
    assert content(synced_from(answer, Doc())) == content(server)
