"""``server.ws.client_writes.drop_update``: which of a socket's document updates are
judged, seen (counted and logged) and told (over real sockets: ``tests/server/test_ws.py``)."""

from __future__ import annotations

import pytest

from parley.server.ws.client_writes import drop_update
from parley.server.ws.connection import CommandChannel, Connection
from parley.session.errors import Forbidden, TooLarge

NOOP, WRITE, UNREADABLE = b"noop", b"write", b"unreadable"
REFUSAL = "read-only"


def _is_noop(update: bytes) -> bool:
    if update == UNREADABLE:
        raise TooLarge("an update may delete at most 1 ranges")
    return update == NOOP


class Seen:
    """The writes ``drop_update`` reports: (user, told) each."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, bool]] = []

    def __call__(self, connection: Connection, told: bool) -> None:
        self.writes.append((connection.user_id, told))


def _socket() -> Connection:
    return Connection(None, "sam", 10)  # type: ignore[arg-type]


def test_a_stock_socket_has_its_first_write_seen_and_is_never_told() -> None:
    seen, sam = Seen(), _socket()
    for update in (NOOP, UNREADABLE, WRITE, WRITE):  # one it cannot read is a write
        drop_update(sam, update, _is_noop, REFUSAL, seen)
    assert seen.writes == [("sam", False)]


def test_a_socket_that_wrote_before_it_spoke_is_told_at_its_next_write() -> None:
    seen, sam = Seen(), _socket()
    drop_update(sam, WRITE, _is_noop, REFUSAL, seen)
    sam.channel = CommandChannel.BINARY
    drop_update(sam, NOOP, _is_noop, REFUSAL, seen)
    with pytest.raises(TooLarge):  # refused unread, as on any socket that speaks
        drop_update(sam, UNREADABLE, _is_noop, REFUSAL, seen)
    with pytest.raises(Forbidden, match=REFUSAL):
        drop_update(sam, WRITE, _is_noop, REFUSAL, seen)
    drop_update(sam, WRITE, _is_noop, REFUSAL, seen)  # told once
    assert seen.writes == [("sam", False)]  # seen once, as the stock socket it was


def test_a_socket_that_speaks_is_seen_and_told_at_its_first_write() -> None:
    seen, ann = Seen(), _socket()
    ann.channel = CommandChannel.TEXT
    drop_update(ann, NOOP, _is_noop, REFUSAL, seen)
    with pytest.raises(Forbidden):
        drop_update(ann, WRITE, _is_noop, REFUSAL, seen)
    drop_update(ann, WRITE, _is_noop, REFUSAL, seen)
    assert seen.writes == [("sam", True)]
