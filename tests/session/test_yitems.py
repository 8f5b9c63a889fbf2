"""Updates encoded by ``session.yitems`` are byte for byte what pycrdt writes, and a session
document writing its transcript encoded ends in the same state as one writing through
pycrdt, whatever it is asked (``SessionDocument(encode_from=...)``)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, write_var_uint

from parley.session.entries import EntryKind
from parley.session.errors import InvalidInput, NotFound
from parley.session.lifecycle import IllegalTransition
from parley.session.reasons import Ending, ReasonCode
from parley.session.schema import SessionDocument
from parley.session.yitems import (
    TEXT_BLOCK_UNITS,
    NewText,
    UpdateWriter,
    append_in_blocks,
    utf16_length,
    varuint,
)
from parley.session.yprotocol import decode_state_vector, delete_set_of

CLIENT = 1234567

VALUES: list[Any] = [
    "",
    "plain",
    'quote " back \\ slash \n newline \x00 nul',
    "é 😀 𝄞 mixed",
    0,
    3,
    -5,
    2**24 + 1,
    2**31,
    1_733_443_200_000,
    2**53,
    2**53 + 1,
    -(2**60) - 1,
    2**63 - 1,
    -(2**63),
    1.5,
    0.1,
    -0.0,
    float("inf"),
    1e300,
    True,
    False,
    None,
    ["a", "b"],
    [],
    ["x", 1, None, ["nested"]],
]


def _prelim(value: Any) -> Any:
    return Text(value) if isinstance(value, NewText) else value


def _pair() -> tuple[Doc[Any], Array[Any], Doc[Any]]:
    reference = Doc(client_id=CLIENT)
    return reference, reference.get("transcript", type=Array), Doc(client_id=CLIENT)


def _clock(doc: Doc[Any]) -> int:
    return decode_state_vector(doc.get_state()).get(CLIENT, 0)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_value_is_encoded_as_pycrdt_encodes_it(value: Any) -> None:
    reference, array, encoded = _pair()
    array.append(Map({"key": value}))
    writer = UpdateWriter(CLIENT, 0)
    writer.insert_map({"key": value}, origin=None, right_origin=None, root="transcript")
    encoded.apply_update(writer.update())
    assert encoded.get_update() == reference.get_update()


def test_unsupported_values_are_refused() -> None:
    writer = UpdateWriter(CLIENT, 0)
    for value in ({"a": 1}, b"bytes", object(), 2**70):
        with pytest.raises(TypeError):
            writer.insert_map({"key": value}, origin=None, right_origin=None, root="t")


@pytest.mark.parametrize("block_units", [TEXT_BLOCK_UNITS, 3])
def test_inserts_key_changes_and_text_match_pycrdt_byte_for_byte(block_units: int) -> None:
    rng = random.Random(7)
    reference, array, encoded = _pair()
    written: list[Any] = []  # the maps as the writer knows them, in array order
    blocks: list[int] = []  # the units of the last block of each map's text, in pycrdt
    texts = ["", "a", "😀", "é𝄞z", "tok ", "line\n"]
    for step in range(300):
        writer = UpdateWriter(CLIENT, _clock(encoded))
        for _ in range(rng.randint(1, 3)):  # several changes in one update
            action = rng.random()
            if action < 0.35 or not written:
                index = rng.randint(0, len(written))
                fields = {
                    "id": f"e{step}",
                    "content": NewText(rng.choice(texts)),
                    "n": rng.choice(VALUES),
                }
                array.insert(index, Map({k: _prelim(v) for k, v in fields.items()}))
                blocks.insert(index, utf16_length(fields["content"]))
                written.insert(
                    index,
                    writer.insert_map(
                        fields,
                        origin=written[index - 1].item if index > 0 else None,
                        right_origin=written[index].item if index < len(written) else None,
                        root="transcript",
                    ),
                )
            elif action < 0.7:
                index = rng.randrange(len(written))
                key, value = rng.choice(["n", "status", "k"]), rng.choice(VALUES)
                array[index][key] = value
                writer.set_key(written[index], key, value)
            else:
                index = rng.randrange(len(written))
                text = rng.choice(texts)
                content = array[index]["content"]
                blocks[index] = append_in_blocks(content, text, blocks[index], block_units)
                writer.append_text(written[index], text, block_units)
        encoded.apply_update(writer.update())
        assert _clock(encoded) == writer.clock
    assert encoded.get_update() == reference.get_update()
    assert encoded.get("transcript", type=Array).to_py() == array.to_py()


def test_varuint_writes_what_pycrdt_writes() -> None:
    edges = [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 2**32, 2**53 - 1, 2**63]
    rng = random.Random(7)
    for number in edges + [rng.randrange(2 ** rng.randrange(1, 64)) for _ in range(2000)]:
        assert varuint(number) == write_var_uint(number), number
    with pytest.raises(ValueError):
        varuint(-1)


def test_utf16_length_counts_code_units() -> None:
    assert [utf16_length(t) for t in ("", "a", "é", "😀", "a😀𝄞")] == [0, 1, 1, 2, 5]


class _Driver:
    """The same random, mostly valid, calls on two session documents: one writing through
    pycrdt only, one writing encoded from ``encode_from`` entries on."""

    def __init__(
        self,
        seed: int,
        encode_from: int,
        start: bytes | None = None,
        text_block_units: int = TEXT_BLOCK_UNITS,
    ) -> None:
        self.rng = random.Random(seed)
        self.docs = []
        self.frames: list[list[bytes]] = []
        for threshold in (10**9, encode_from):
            doc = Doc(client_id=CLIENT)
            if start is not None:
                doc.apply_update(start)
            frames: list[bytes] = []
            doc.observe(lambda event, frames=frames: frames.append(event.update))
            self.frames.append(frames)
            self.docs.append(
                SessionDocument(doc, encode_from=threshold, text_block_units=text_block_units)
            )
        self.queued: list[str] = []
        self.running: list[tuple[list[str], str]] = []
        self.ended: list[str] = []
        self.count = 0

    def both(self, method: str, *args: Any, **kwargs: Any) -> None:
        outcomes = []
        for doc in self.docs:
            try:
                getattr(doc, method)(*args, **kwargs)
                outcomes.append(None)
            except (InvalidInput, NotFound, IllegalTransition, ValueError) as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1], (method, args, outcomes)

    def step(self) -> None:
        rng = self.rng
        self.count += 1
        n = self.count
        action = rng.random()
        if action < 0.3:
            self.both(
                "add_prompt", id=f"p{n}", seq=n, author="u1", text=f"ask {n} 😀", created_at=n
            )
            self.queued.append(f"p{n}")
        elif action < 0.45:
            self.both("add_message", id=f"m{n}", seq=n, author="u2", text=f"say {n}", created_at=n)
        elif action < 0.6 and self.queued:
            take = self.queued[: rng.randint(1, min(3, len(self.queued)))]
            del self.queued[: len(take)]
            reply = f"r{n}"
            self.both("start_reply", prompt_ids=take, reply_id=reply, author="bot", created_at=n)
            self.running.append((take, reply))
        elif action < 0.8 and self.running:
            _, reply = rng.choice(self.running)
            self.both("append_reply_text", reply, rng.choice(["", "a", "é😀", "tok "]))
        elif action < 0.85 and self.running:
            _, reply = rng.choice(self.running)
            self.both(
                "add_tool_step",
                id=f"t{n}",
                reply_id=reply,
                author="u1",
                tool="search",
                status="done",
                text="found",
                created_at=n,
            )
        elif action < 0.95 and self.running:
            prompts, reply = self.running.pop(rng.randrange(len(self.running)))
            ending = rng.choice(
                [
                    None,
                    Ending(ReasonCode.CANCELLED, "cancelled"),
                    Ending(ReasonCode.SERVER_RESTART, "r"),
                ]
            )
            self.both("finish_prompts", prompts, ending)
            self.ended.append(reply)
        elif self.ended:  # refused calls change nothing on either
            self.both("append_reply_text", rng.choice(self.ended), "late")
            self.both("finish_prompts", ["nope"])
            self.both("pin", self.ended[-1])

    def check(self) -> None:
        """The same entries, the same document, and every transaction's update (what the
        server stores and sends) the same bytes."""
        plain, encoded = self.docs
        assert encoded.entries() == plain.entries()
        assert encoded.doc.get_update() == plain.doc.get_update()
        assert self.frames[1] == self.frames[0]


@pytest.mark.parametrize("seed", range(6))
def test_a_document_writing_encoded_ends_as_one_writing_through_pycrdt(seed: int) -> None:
    # Seeds 4 and 5 write replies' text in blocks of a few units (``TEXT_BLOCK_UNITS``).
    blocks = [TEXT_BLOCK_UNITS] * 4 + [5, 1]
    driver = _Driver(seed, encode_from=[0, 1, 5, 30, 60, 0][seed], text_block_units=blocks[seed])
    for step in range(250):
        driver.step()
        if step % 50 == 0:
            driver.check()
    driver.check()
    assert driver.docs[1]._written  # the encoded path was taken
    # A third document loaded from the encoded one's update reads the same entries.
    loaded = Doc(client_id=CLIENT + 1)
    loaded.apply_update(driver.docs[1].doc.get_update())
    assert SessionDocument(loaded).entries() == driver.docs[1].entries()


def test_a_loaded_document_finds_its_last_entry_once_then_writes_encoded() -> None:
    first = _Driver(11, encode_from=10**9)
    for _ in range(120):
        first.step()
    start = first.docs[0].doc.get_update()
    # Loaded: the entries are handles with unknown ids, so the first append goes through
    # pycrdt (its id noted) and the ones after it are encoded.
    driver = _Driver(12, encode_from=0, start=start)
    driver.queued, driver.running = list(first.queued), list(first.running)
    driver.count = first.count
    for _ in range(150):
        driver.step()
    driver.check()
    assert driver.docs[1]._written


def test_remote_changes_rebuild_the_mirrors_and_writing_goes_on() -> None:
    driver = _Driver(21, encode_from=0)
    for _ in range(80):
        driver.step()
    driver.check()
    # Another client's change to the transcript: both documents see it; the encoded one
    # drops what it knew and goes on correctly.
    other = Doc(client_id=CLIENT + 7)
    other.apply_update(driver.docs[0].doc.get_update())
    transcript = other.get("transcript", type=Array)
    transcript[len(transcript) - 1]["status"] = "changed elsewhere"
    update = other.get_update(driver.docs[0].doc.get_state())
    for doc in driver.docs:
        doc.doc.apply_update(update)
    for _ in range(80):
        driver.step()
    driver.check()
    assert driver.docs[1].entries()[-1].kind in set(EntryKind)


@pytest.mark.parametrize("bad", [{"x": 1}, "lone \ud800 surrogate", NewText("\udfff")])
def test_a_map_refused_part_way_leaves_the_update_as_it_was(bad: Any) -> None:
    writer = UpdateWriter(CLIENT, 0)
    writer.insert_map({"id": "a"}, origin=None, right_origin=None, root="transcript")
    before = (writer.update(), writer.clock)
    with pytest.raises((TypeError, UnicodeEncodeError)):
        writer.insert_map({"id": "b", "bad": bad}, origin=(CLIENT, 0), right_origin=None, root="t")
    assert (writer.update(), writer.clock) == before


def test_a_settled_entry_changed_again_is_taken_back_as_a_handle() -> None:
    """No mutator changes an entry in its final status today; should one, the entry is
    found by a walk and changed through pycrdt, as the plain document would."""
    driver = _Driver(31, encode_from=0)
    for doc in driver.docs:
        doc.add_message(id="m", seq=1, author="u", text="hi", created_at=1)
        doc.add_prompt(id="p", seq=2, author="u", text="q", created_at=2)
    encoded = driver.docs[1]
    assert "m" in encoded._settled
    for doc in driver.docs:
        with doc._transaction():
            doc._set("m", status="edited")
    assert "m" in encoded._entries and "m" not in encoded._settled
    driver.check()
    assert encoded.entry("m").status == "edited"


@pytest.mark.parametrize("encode_from", [0, 10**9])
def test_a_long_reply_is_written_in_blocks_readers_see_as_one_text(encode_from: int) -> None:
    """A reply's text starts a new block once its last holds ``text_block_units`` (a
    deleted item between them, so yrs does not merge them): encoded and through pycrdt."""
    doc = Doc(client_id=CLIENT)
    document = SessionDocument(doc, encode_from=encode_from, text_block_units=10)
    document.add_prompt(id="p", seq=1, author="u", text="go", created_at=1)
    document.start_reply(prompt_ids=["p"], reply_id="r", author="bot", created_at=2)
    deleted_before = _deleted_ranges(doc)
    pieces = ["tok " * 2, "é😀", "", "x" * 25, "y", "𝄞"] * 5
    for piece in pieces:
        document.append_reply_text("r", piece)
    # A new block before an append whenever the last reached 10 units (UTF-16).
    breaks, block = 0, 0
    for piece in filter(None, pieces):
        if block >= 10:
            breaks, block = breaks + 1, 0
        block += utf16_length(piece)
    assert _deleted_ranges(doc) - deleted_before == breaks >= 10
    assert document.entry("r").content == "".join(pieces)
    loaded = Doc(client_id=CLIENT + 1)
    loaded.apply_update(doc.get_update())
    assert SessionDocument(loaded).entry("r").content == "".join(pieces)


def _deleted_ranges(doc: Doc[Any]) -> int:
    deletes = delete_set_of(doc.get_update(), doc.get_state())
    return sum(len(ranges) for ranges in deletes.values())
