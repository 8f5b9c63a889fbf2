"""Keyset cursors for lists in a stable order: the position of the last row a page gave,
as an opaque token. Unlike an offset, it stays put when rows before it are deleted
between two pages (review: ``GET /sessions?offset=`` skipped a session then).

A cursor is not signed: it names a place and grants nothing (each list checks its reader as
it would without one), so one not of the form this server gives is refused, and one of that
form is read as the place it names, whoever made it (docs/api.md; review I7)."""

from __future__ import annotations

import base64
import binascii
import json

from parley.server.http.rest import QueryStr
from parley.server.store.horizon import Place
from parley.session.commands import unstorable
from parley.session.errors import InvalidInput

# A cursor's form: unpadded base64url of a JSON array of a number first ("[1…": "Wz…")
# and last ("…]": the last group ends "d", "XQ" or "[FVl1]0" as the length falls). The
# document says it, so ``?cursor=0`` is refused by the form it gives (review RC-1); one of
# the form that does not decode to a place is refused too (``_NOT_A_CURSOR``).
_B64 = "[A-Za-z0-9_-]"
CURSOR = f"Wz{_B64}{{2}}(?:{_B64}{{4}})*(?:{_B64}{{2}}[BFJNRVZdhlptx159]d|XQ|{_B64}[FVl1]0)"
MAX_ROW_ID_CHARS = 200  # longer than any row id the lists give
# A place's cursor: two numbers below 2**63 take 56 characters.
PLACE_CURSOR_CHARS = 64
_NOT_A_CURSOR = "cursor: not of the form of a cursor this server gives"


def make_cursor(created_at: int, row_id: str) -> str:
    """The cursor after the row created at ``created_at`` (ms) with ``row_id``."""
    return _encode([created_at, row_id])


def read_cursor(cursor: str) -> tuple[int, str]:
    """(created at, id) of a cursor of ``make_cursor``'s form; ``InvalidInput`` for any other."""
    created_at, row_id = _decode(cursor)
    if type(created_at) is not int or not isinstance(row_id, str):
        raise InvalidInput(_NOT_A_CURSOR)
    # Within what the columns hold: a number past a 64-bit integer failed in the database
    # driver (500 on SQLite, 503 on PostgreSQL, review), an id past any row's is no row's,
    # and so did an id with a NUL or a lone surrogate, JSON escapes (review RL-5).
    if not 0 <= created_at < 2**63 or not 0 < len(row_id) <= MAX_ROW_ID_CHARS:
        raise InvalidInput(_NOT_A_CURSOR)
    if unstorable(row_id) is not None:  # (checked past the length: it may copy the id)
        raise InvalidInput(_NOT_A_CURSOR)
    return created_at, row_id


def make_place_cursor(place: Place) -> str:
    """The cursor after the row at ``place`` (an id-ordered list's: ``store.horizon``)."""
    return _encode([place.xid, place.id])


def read_place_cursor(cursor: str) -> Place:
    """The place of a cursor of ``make_place_cursor``'s form; ``InvalidInput`` for any other."""
    xid, row_id = _decode(cursor)
    if type(xid) is not int or type(row_id) is not int:
        raise InvalidInput(_NOT_A_CURSOR)
    if not (0 <= xid < 2**63 and 0 <= row_id < 2**63):  # what the columns hold
        raise InvalidInput(_NOT_A_CURSOR)
    return Place(xid, row_id)


PLACE_CURSOR = QueryStr(
    "cursor",
    PLACE_CURSOR_CHARS,
    required=False,
    pattern=CURSOR,
    read=read_place_cursor,
)


def page_start(after: int, cursor: Place | None) -> Place | int:
    """Where a page of an id-ordered list starts: ``?cursor=``'s place, or the older
    ``?after=``'s id (``store.horizon``); ``InvalidInput`` for both."""
    if cursor is None:
        return after
    if after:
        raise InvalidInput("cursor: give it or after, not both")
    return cursor


def _encode(position: list[int | str]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(cursor: str) -> tuple[object, object]:
    """The two parts of a cursor's JSON; ``InvalidInput`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        first, second = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput(_NOT_A_CURSOR) from None
    return first, second
