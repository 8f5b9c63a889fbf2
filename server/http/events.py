"""Admin route for a session's semantic events (``session.events``), oldest first.

Events carry ids, authors and codes, never content; these JSON pages are for the admin key
only. With ``Accept: text/event-stream`` the same path is the events' stream, for members
too (``server.http.sse``).
"""

from __future__ import annotations

from parley.server.http.resource_models import EventList, EventOut
from parley.server.http.rest import Operation, QueryParam
from parley.server.http.sessions import session_row
from parley.server.state import AppState

MAX_EVENTS_PER_PAGE = 500


async def list_events(state: AppState, session_id: str, after: int, limit: int) -> EventList:
    """The session's events numbered above ``after``, at most ``limit``."""
    await session_row(state, session_id)
    rows = await state.store.events_after(session_id, after, limit)
    return EventList(
        events=[
            EventOut(seq=e.seq, at_ms=e.at_ms, kind=e.kind, actor=e.actor, data=e.data)
            for e in rows
        ],
        next_after=rows[-1].seq if len(rows) == limit else None,
    )


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/events",
        list_events,
        "The session's semantic events in commit order (admin only); with "
        "'Accept: text/event-stream' a Server-Sent Events stream for members too",
        response=EventList,
        errors=(404,),
        streams=True,
        query=(
            QueryParam("after", 0, 999_999_999, 0),
            QueryParam("limit", 1, MAX_EVENTS_PER_PAGE, 100),
        ),
    ),
]
