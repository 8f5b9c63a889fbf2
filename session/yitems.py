"""Yjs updates the server encodes itself, so a change to a long array costs no walk.

pycrdt (yrs) finds an array index by walking the array's items one by one from the first:
an append to a transcript of 5,000 entries followed 5,000 pointers, about a millisecond on
a loaded machine, twice a run. An update received from elsewhere is placed by the ids of
its neighbours instead, each found by a binary search in its client's items. So the session
document writes the changes it makes to entries whose item ids it knows as updates it
encodes here, in the Yjs v1 format, and applies them to its document: the document ends
byte for byte as pycrdt's own writes leave it, and every transaction's update (what is
stored and sent) is the same bytes (``tests/session/test_yitems.py``).

Only what the transcript holds is written: maps of plain values (strings, numbers, booleans,
``None``, lists of those) and one text per map (``NewText``); any other value raises
``TypeError`` (a string that is not valid UTF-8, ``UnicodeEncodeError``), leaving the update
as it was.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Text, write_var_uint

ID = tuple[int, int]
"""An item's id: the client that wrote it and its clock."""

_ORIGIN = 0x80
_RIGHT_ORIGIN = 0x40
_PARENT_SUB = 0x20
_CONTENT_DELETED = 1
_CONTENT_STRING = 4
_CONTENT_TYPE = 7
_CONTENT_ANY = 8
_TYPE_MAP = 1
_TYPE_TEXT = 2


class NewText(str):
    """A map value to be written as a Y.Text holding this string."""

    __slots__ = ()


@dataclass(slots=True)
class WrittenMap:
    """The ids of a map written here: its own item, each key's current item, where its
    text ends (``None`` while the text is empty) and how long its text's last block is."""

    item: ID
    keys: dict[str, ID] = field(default_factory=dict)
    text: ID | None = None
    text_end: ID | None = None
    text_block: int = 0


TEXT_BLOCK_UNITS = 4096
"""The most UTF-16 units a text grows in one block before the next append starts another.

yrs merges each append to a text by the same client into the block before it, and an
append's insert and its update's encoding scan that block: appending 8 characters took 2-3
µs at a reply's start and 40-120 µs after 20,000 appends (160 kB; the same with pycrdt's
insert and with an update applied). A deleted one-unit item between blocks (Yjs's
``ContentDeleted``, as yrs writes an insert deleted in its own transaction) stops the merge,
and an append costs the same at any length; readers see the text unchanged."""


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_CLIENTS: dict[int, bytes] = {}


def varuint(number: int) -> bytes:
    """lib0's var-uint, as ``pycrdt.write_var_uint`` writes it, without its loop for the
    numbers an update is mostly made of (lengths, clocks: under 2**21)."""
    if 0 <= number < 0x80:
        return _ONE_BYTE[number]
    if 0x80 <= number < 0x4000:
        return bytes((0x80 | (number & 0x7F), number >> 7))
    if 0x4000 <= number < 0x200000:
        return bytes((0x80 | (number & 0x7F), 0x80 | ((number >> 7) & 0x7F), number >> 14))
    return write_var_uint(number)


def _varstring(out: bytearray, value: str) -> None:
    data = value.encode("utf-8")
    out += varuint(len(data))
    out += data


_KEYS: dict[str, bytes] = {}
_MAX_KEYS = 256


def _key(key: str) -> bytes:
    """A map key as a varstring, kept for the few keys the schema has."""
    encoded = _KEYS.get(key)
    if encoded is None:
        out = bytearray()
        _varstring(out, key)
        encoded = bytes(out)
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[key] = encoded
    return encoded


def _id(item: ID) -> bytes:
    client = _CLIENTS.get(item[0])
    if client is None:  # a document's client id, written in most ids of its updates
        client = write_var_uint(item[0])
        if len(_CLIENTS) < _MAX_KEYS:
            _CLIENTS[item[0]] = client
    return client + varuint(item[1])


def _any(out: bytearray, value: Any) -> None:
    """One value as yrs writes ``Any`` (lib0's encoding): a Python number is a float64,
    stored in four bytes when that loses nothing; an integer a float64 cannot hold exactly
    is a 64-bit integer."""
    if value is None:
        out.append(0x7E)
    elif value is True:
        out.append(0x78)
    elif value is False:
        out.append(0x79)
    elif isinstance(value, str):
        out.append(0x77)
        _varstring(out, value)
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise TypeError(f"integer out of range: {value}")
        if float(value) == value:
            _number(out, float(value))
        else:
            out.append(0x7A)
            out += struct.pack(">q", value)
    elif isinstance(value, float):
        _number(out, value)
    elif isinstance(value, list | tuple):
        out.append(0x75)
        out += varuint(len(value))
        for item in value:
            _any(out, item)
    else:
        raise TypeError(f"not written here: {type(value).__name__}")


def _number(out: bytearray, value: float) -> None:
    try:
        single = struct.pack(">f", value)
    except OverflowError:
        single = None
    if single is not None and struct.unpack(">f", single)[0] == value:
        out.append(0x7C)
        out += single
    else:
        out.append(0x7B)
        out += struct.pack(">d", value)


def utf16_length(text: str) -> int:
    """A string's length in Yjs clock units: UTF-16 code units."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


class UpdateWriter:
    """Items by one client from ``clock`` on, and the items they delete, as one update.

    Each method writes an item (its clocks taken in order) and returns what names it for
    the next change; ``update`` encodes them all.
    """

    def __init__(self, client: int, clock: int) -> None:
        self.client = client
        self.start = clock
        self.clock = clock
        self._structs = bytearray()
        self._count = 0
        self._deleted: list[ID] = []

    def _item(
        self,
        content_ref: int,
        *,
        origin: ID | None = None,
        right_origin: ID | None = None,
        parent: str | ID | None = None,
        parent_sub: str | None = None,
    ) -> bytearray:
        """Write an item's header; the caller writes its content after it, then ``_took``."""
        out = self._structs
        info = content_ref
        if origin is not None:
            info |= _ORIGIN
        if right_origin is not None:
            info |= _RIGHT_ORIGIN
        if parent_sub is not None:
            info |= _PARENT_SUB
        out.append(info)
        if origin is not None:
            out += _id(origin)
        if right_origin is not None:
            out += _id(right_origin)
        if origin is None and right_origin is None:
            # Only an item with no neighbour names its parent (else the neighbour's is its).
            if isinstance(parent, str):
                out.append(1)
                _varstring(out, parent)
            elif parent is not None:
                out.append(0)
                out += _id(parent)
            else:
                raise ValueError("an item with no neighbour needs its parent")
            if parent_sub is not None:
                out += _key(parent_sub)
        return out

    def _took(self, length: int) -> ID:
        item = (self.client, self.clock)
        self.clock += length
        self._count += 1
        return item

    def insert_map(
        self,
        fields: Mapping[str, Any],
        *,
        origin: ID | None,
        right_origin: ID | None,
        root: str,
    ) -> WrittenMap:
        """A new map in the array ``root`` (a root type of the document) between the items
        ``origin`` and ``right_origin`` (``None``: the array's start, its end), its keys
        set in the order given."""
        mark = (len(self._structs), self.clock, self._count)
        try:
            return self._insert_map(fields, origin, right_origin, root)
        except Exception:  # a value not written here (or not UTF-8): nothing of it is left
            del self._structs[mark[0] :]
            self.clock, self._count = mark[1], mark[2]
            raise

    def _insert_map(
        self, fields: Mapping[str, Any], origin: ID | None, right_origin: ID | None, root: str
    ) -> WrittenMap:
        self._item(
            _CONTENT_TYPE,
            origin=origin,
            right_origin=right_origin,
            parent=root if origin is None and right_origin is None else None,
        ).append(_TYPE_MAP)
        written = WrittenMap(self._took(1))
        for key, value in fields.items():
            if isinstance(value, NewText):
                self._item(_CONTENT_TYPE, parent=written.item, parent_sub=key).append(_TYPE_TEXT)
                written.keys[key] = written.text = self._took(1)
                if value:
                    written.text_end = self._string(value, parent=written.text)
                    written.text_block = utf16_length(value)
            else:
                self.set_key(written, key, value)
        return written

    def set_key(self, written: WrittenMap, key: str, value: Any) -> ID:
        """Set ``key`` of a written map to a plain value: the item it replaces is deleted."""
        content = bytearray(b"\x01")
        _any(content, value)  # before the header: a value refused leaves nothing written
        current = written.keys.get(key)
        if current is None:
            out = self._item(_CONTENT_ANY, parent=written.item, parent_sub=key)
        else:
            out = self._item(_CONTENT_ANY, origin=current, parent_sub=key)
            self._deleted.append(current)
        out += content
        item = written.keys[key] = self._took(1)
        return item

    def append_text(
        self, written: WrittenMap, text: str, block_units: int = TEXT_BLOCK_UNITS
    ) -> None:
        """Add ``text`` at the end of the map's text, in a new block once the last holds
        ``block_units`` (``TEXT_BLOCK_UNITS``)."""
        if written.text is None:
            raise ValueError("the map has no text")
        if text:
            if written.text_end is None:
                written.text_end = self._string(text, parent=written.text)
            else:
                if written.text_block >= block_units:
                    self._item(_CONTENT_DELETED, origin=written.text_end).append(1)
                    written.text_end = self._took(1)
                    self._deleted.append(written.text_end)
                    written.text_block = 0
                written.text_end = self._string(text, origin=written.text_end)
            written.text_block += utf16_length(text)

    def _string(self, text: str, *, parent: ID | None = None, origin: ID | None = None) -> ID:
        _varstring(self._item(_CONTENT_STRING, origin=origin, parent=parent), text)
        length = utf16_length(text)
        first = self._took(length)
        return (first[0], first[1] + length - 1)

    @property
    def empty(self) -> bool:
        return self._count == 0

    def update(self) -> bytes:
        """The update: every item written, then the delete set."""
        out = bytearray()
        if self._count:
            out += varuint(1)
            out += varuint(self._count)
            out += varuint(self.client)
            out += varuint(self.start)
            out += self._structs
        else:
            out += varuint(0)
        _delete_set(out, self._deleted)
        return bytes(out)


def append_in_blocks(content: Text, text: str, block: int, block_units: int) -> int:
    """Add ``text`` at the end of ``content`` through pycrdt, whose last block holds
    ``block`` units, as ``UpdateWriter.append_text`` writes it (``TEXT_BLOCK_UNITS``):
    returns the units the last block holds after."""
    if not text:
        return block
    with content.doc.transaction():
        end = len(content)
        if block >= block_units and end:
            content.insert(end, "-")
            del content[end : end + 1]
            block = 0
        content.insert(end, text)
    return block + utf16_length(text)


def _delete_set(out: bytearray, deleted: Iterable[ID]) -> None:
    """Deleted items as lib0 delete ranges, merged and sorted per client."""
    by_client: dict[int, list[int]] = {}
    for client, clock in deleted:
        by_client.setdefault(client, []).append(clock)
    out += varuint(len(by_client))
    for client, clocks in by_client.items():
        ranges: list[list[int]] = []
        for clock in sorted(set(clocks)):
            if ranges and ranges[-1][0] + ranges[-1][1] == clock:
                ranges[-1][1] += 1
            else:
                ranges.append([clock, 1])
        out += varuint(client)
        out += varuint(len(ranges))
        for clock, length in ranges:
            out += varuint(clock)
            out += varuint(length)
