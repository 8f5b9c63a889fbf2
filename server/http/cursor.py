"""Keyset cursors for lists in a stable order: the position of the last row a page gave,
as an opaque token. Unlike an offset, it stays put when rows before it are deleted
between two pages (review: ``GET /sessions?offset=`` skipped a session then)."""

from __future__ import annotations

import base64
import binascii
import json

from parley.session.errors import InvalidInput

CURSOR = r"[A-Za-z0-9_-]{1,400}"  # base64url, unpadded
MAX_ROW_ID_CHARS = 200  # longer than any row id the lists give


def make_cursor(created_at: int, row_id: str) -> str:
    """The cursor after the row created at ``created_at`` (ms) with ``row_id``."""
    raw = json.dumps([created_at, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_cursor(cursor: str) -> tuple[int, str]:
    """(created at, id) of a cursor ``make_cursor`` gave; ``InvalidInput`` for any other."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput("cursor: not a cursor this server gave") from None
    if type(created_at) is not int or not isinstance(row_id, str):
        raise InvalidInput("cursor: not a cursor this server gave")
    # Within what the columns hold: a number past a 64-bit integer failed in the database
    # driver (500 on SQLite, 503 on PostgreSQL, review), an id past any row's is no row's.
    if not 0 <= created_at < 2**63 or not 0 < len(row_id) <= MAX_ROW_ID_CHARS:
        raise InvalidInput("cursor: not a cursor this server gave")
    return created_at, row_id
