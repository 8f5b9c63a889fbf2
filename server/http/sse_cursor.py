"""Where an event stream stands (``server.http.sse``): the id of every event it sends.

A stream has sent every stored event up to ``seq`` and, of the reply running as of
``seq`` (``reply_id``; None when none runs), the first ``offset`` characters of its text.
An event's id is the cursor once it was sent: ``"12"``, or ``"12.<reply id>.340"`` while
a reply runs. Resuming from an id sends the stored events after ``seq`` and the reply's
text after ``offset``, so nothing is sent twice and nothing is skipped, on any node and
after a restart (both come from the store and the stored document).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from sqlalchemy import Select, and_, desc, select
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store.tables import REPLY_EVENT_KINDS, REPLY_EVENTS, session_events, sessions
from parley.session.errors import BadEventId, NotFound
from parley.session.events import StoredEvent

# An id as a stream's resume (``Last-Event-ID``, ``?last_event_id=``) takes it, and the API
# document says it: its numbers as the stream writes them, ASCII digits with no leading zero
# (review RB-2: "3.r.01" and "03.r.1", never sent, were taken as "3.r.1"), with a header's
# own blanks around it; at most this many characters in all (the longest id is 93).
EVENT_ID_GIVEN = (
    r"[ \t]*(0|[1-9][0-9]{0,14})(?:\.([0-9A-Za-z_-]{1,64})\.(0|[1-9][0-9]{0,11}))?[ \t]*"
)
MAX_EVENT_ID_CHARS = 100
_ID = re.compile(EVENT_ID_GIVEN)
REPLY_ENDS = frozenset({"reply_completed", "run_failed"})
assert REPLY_ENDS | {"run_started"} == set(REPLY_EVENT_KINDS)
_SCAN_PAGE = 100


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int
    reply_id: str | None = None
    offset: int = 0

    def __str__(self) -> str:
        if self.reply_id is None:
            return str(self.seq)
        return f"{self.seq}.{self.reply_id}.{self.offset}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """The cursor an id names; ``BadEventId`` when it is not one this stream sends."""
        found = _ID.fullmatch(raw)
        if found is None:
            raise BadEventId(
                "Last-Event-ID: not an id of this stream (an event number, or "
                "'<number>.<reply id>.<offset>')"
            )
        seq, reply_id, offset = found.groups()
        return cls(int(seq), reply_id, 0 if offset is None else int(offset))

    def after(self, event: StoredEvent) -> Cursor:
        """The cursor once ``event`` (the next stored one) was sent."""
        reply_id = event.data.get("reply_id")
        if event.kind == "run_started":
            return Cursor(event.seq, str(reply_id), 0)
        if event.kind in REPLY_ENDS and reply_id is not None and reply_id == self.reply_id:
            return Cursor(event.seq)
        return replace(self, seq=event.seq)

    def sent(self, chars: int) -> Cursor:
        return replace(self, offset=self.offset + chars)


def check_event_id(raw: str) -> Cursor:
    """The cursor a given ``Last-Event-ID`` names; ``BadEventId`` when too long or not an id
    of this stream."""
    if len(raw) > MAX_EVENT_ID_CHARS:
        raise BadEventId("Last-Event-ID: too long")
    return Cursor.parse(raw)


async def head_seq(connection: AsyncConnection, session_id: str) -> int:
    """The number of the session's newest stored event (0: none)."""
    found = await connection.execute(
        select(sessions.c.last_event_seq).where(sessions.c.id == session_id)
    )
    last = found.scalar_one_or_none()
    if last is None:
        raise NotFound(f"no session {session_id!r}")
    return int(last)


def reply_events_before(session_id: str, below: int) -> Select[tuple[int, str, str]]:
    """The latest page of the session's events that start or end a reply, before event
    ``below``. Its condition is the partial index's own, spelled the same (the kinds as
    literals): a database uses that index only when the query says so."""
    e = session_events
    return (
        select(e.c.seq, e.c.kind, e.c.data)
        .where(and_(e.c.session_id == session_id, e.c.seq < below, REPLY_EVENTS))
        .order_by(desc(e.c.seq))
        .limit(_SCAN_PAGE)
    )


async def running_at(connection: AsyncConnection, session_id: str, seq: int) -> str | None:
    """The reply running as of event ``seq`` (started at or before it, not ended)."""
    below = seq + 1
    while True:
        rows = (await connection.execute(reply_events_before(session_id, below))).all()
        for row in rows:
            reply_id = json.loads(row.data).get("reply_id")
            if reply_id is None:  # prompts that never ran: no reply started or ended
                continue
            return str(reply_id) if row.kind == "run_started" else None
        if len(rows) < _SCAN_PAGE:
            return None
        below = int(rows[-1].seq)


async def start_at(connection: AsyncConnection, session_id: str, last_id: str | None) -> Cursor:
    """Where a stream starts: after ``last_id`` (a ``Last-Event-ID``), checked against the
    store, or, without one, now (with the whole text so far of a reply running now)."""
    head = await head_seq(connection, session_id)
    if last_id is None:
        return Cursor(head, await running_at(connection, session_id, head), 0)
    cursor = Cursor.parse(last_id)
    if cursor.seq > head:
        raise BadEventId(f"Last-Event-ID: this session has no event {cursor.seq} yet")
    if await running_at(connection, session_id, cursor.seq) != cursor.reply_id:
        raise BadEventId("Last-Event-ID: not an id this session's stream sent")
    return cursor
