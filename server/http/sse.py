"""A session's events as a Server-Sent Events stream, for a member or the admin.

``GET /api/v1/sessions/{id}/events`` with ``Accept: text/event-stream`` (without it, the
admin's JSON pages of ``server.http.events``). The stream sends the stored events
(``session.events``, in the session's order, with the text of new prompts and messages as
the shared document shows it), ``reply_delta`` events with a running reply's text as the
shared document holds it (restricted text never: what the document shows every member is
what the stream sends), ``queue`` events with the committed plan when it changed, and an
``end`` event when it stops on its own (the reader was removed, its token revoked or
expired, the session deleted, the server shutting down, the session's room here given up
or moved to another node: the reader resumes with its last id).

Every event's id is a ``server.http.sse_cursor.Cursor``: ``Last-Event-ID`` (or the query
parameter ``last_event_id``) resumes right after it, on any node, after a restart.

Cost: a stream keeps no queue. It reads the store's events after its cursor a page at a
time and the reply text from the room's committed state, each time it may write (a write
waits while the socket's buffers are full); so a slow reader is only behind, and costs its
socket's buffer. One that takes nothing for ``send_stall_timeout_s`` is cut (it resumes
with its last id). A member's stream spends their read budget by what it sends; what the
session's streams read and encode together is paid from the session's stream work
(``Work.STREAMS``), an event at a time, with the loop given to others between events; the
members whose replays wait for it take it in turn (``server.runtime.stream_turns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from parley.authz.policy import Do, decide
from parley.authz.roles import Capability
from parley.server.http.accept import chosen
from parley.server.http.rest import (
    Caller,
    Operation,
    admit,
    authenticate,
    check_path,
    check_query_names,
    error_response,
    judge,
    query_value,
    resume_given,
)
from parley.server.http.retry_hint import CAP_RETRY_AFTER_S
from parley.server.http.sse_cursor import REPLY_ENDS, Cursor, start_at
from parley.server.runtime.room import SessionRoom, Work
from parley.server.runtime.stream_feed import reply_text
from parley.server.state import AppState
from parley.session.errors import (
    BadEventId,
    InvalidInput,
    NotAcceptable,
    ParleyError,
    TooManyStreams,
    Unavailable,
)
from parley.session.events import StoredEvent
from parley.session.reasons import OUTCOMES

log = logging.getLogger("parley.sse")

EVENTS_PATH = "/api/v1/sessions/{session_id}/events"
EVENT_STREAM = "text/event-stream"
JSON = "application/json"
ADMIN_READER = "!admin"  # no user id contains "!"
EVENTS_PAGE = 200
MAX_DELTA_CHARS = 8192
RECONNECT_MS = 1000
# A stream past its reader's read budget, or its session's stream work, looks again this
# often (``SessionStream._paced``).
PACED_S = 0.1
# What reading a stored event and judging it costs a stream besides its frames' bytes
# (``Work.STREAMS``): about as much as encoding 1 KiB.
STREAM_EVENT_WORK_BYTES = 1024
_ENTRY_IDS = {"prompt_accepted": "prompt_id", "message_posted": "message_id"}
# A failed run's prompts' status, by its reason code.
_STATUS_OF = {code.value: statuses[0].value for code, statuses in OUTCOMES.items()}


def frame(event: str, event_id: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" + ("" if event_id is None else f"id: {event_id}\n")
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))  # one line
    return f"{head}data: {body}\n\n".encode()


def end_frame(code: str, message: str) -> bytes:
    """The last event of a stream that stops on its own (no id: resume from the one before)."""
    return frame("end", None, {"code": code, "message": message})


HEARTBEAT = b": heartbeat\n\n"


class _Ended(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.frame = end_frame(code, message)


class SessionStream:
    """One reader's stream: its cursor, and its place among the room's readers."""

    def __init__(self, state: AppState, room: SessionRoom, caller: Caller, cursor: Cursor) -> None:
        self.state = state
        self.session_id = room.session_id
        self.caller = caller
        self.reader = caller.user_id or ADMIN_READER
        self.cursor = cursor
        self.room = room
        self._sent_queue: list[dict[str, Any]] | None = None
        room.feed.readers[self.reader] += 1
        state.metrics.streams.inc()
        self._open = True

    def close(self) -> None:
        """The stream ended: it no longer counts among the room's readers."""
        if not self._open:
            return
        self._open = False
        self.state.metrics.streams.dec()
        readers = self.room.feed.readers
        readers[self.reader] -= 1
        if readers[self.reader] <= 0:
            del readers[self.reader]

    async def frames(self) -> AsyncGenerator[bytes, None]:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        heartbeat_s = self.state.settings.sse_heartbeat_s
        woken = False
        try:
            while True:
                room = self._current_room()
                generation = room.feed.generation
                head = room.feed.head
                events: list[StoredEvent] = []
                if not woken:
                    # The first look, or one after a heartbeat's wait: a read of its own,
                    # the safety net for a change nobody told the room about.
                    events = await self._read(self.cursor.seq)
                elif head is None or head > self.cursor.seq:
                    # Woken by a change: the read the streams woken by it share. (A commit
                    # that stored no event past ours, reply text say, needs none.)
                    events = await room.feed.events_after(self.cursor.seq, generation, self._read)
                caught_up = True
                # A full page: the stream is behind, replaying. Only a replay waits for the
                # session's stream work; a stream at the tail takes its events as they come
                # (review R5-1: one viewer's 16 replays held an editor's live events 1-7 s).
                replaying = len(events) == EVENTS_PAGE
                for event in events:
                    await self._pace(replaying)
                    sent = self._event_frames(room, event)
                    if sent is None:  # the document here lags the store: wait for it
                        caught_up = False
                        break
                    for chunk in self._paid(sent, STREAM_EVENT_WORK_BYTES):
                        await self._spend(chunk)
                        yield chunk
                if caught_up:
                    await self._pace(replaying=False)
                    for chunk in self._paid(list(self._live_frames(room)), 0):
                        await self._spend(chunk)
                        yield chunk
                    if len(events) == EVENTS_PAGE:
                        continue
                woken = await room.feed.wait(generation, heartbeat_s)
                if not woken:
                    yield HEARTBEAT
        except _Ended as ended:
            yield ended.frame
        except ParleyError as exc:  # the store, say: the reader resumes later
            yield end_frame(exc.code.value, exc.message)

    async def _spend(self, chunk: bytes) -> None:
        """A member's stream spends their read budget by what it sends, as ``GET
        …/transcript`` does, and is paced past it (review: a viewer replaying a session's
        whole history from ``Last-Event-ID: 0``, 16 streams at a time, read 76 MB/s and
        took a core). The admin key's streams spend none."""
        user_id = self.caller.user_id
        if user_id is not None:
            await self._paced(lambda: self.room.spend_read(user_id, len(chunk)))

    async def _pace(self, replaying: bool) -> None:
        """Before each stored event (and the live frames): the stream lets the loop serve
        everyone else, and, ``replaying`` a backlog, waits while the session's streams owe
        work (``Work.STREAMS``). Review R4-2: a stream read and encoded page after page
        without a pause, so one viewer's 16 streams replaying a session held every client
        of the node 1-3 s at a time, within their read budget. A stream at the tail pays
        and never waits: what it is sent is what the session writes as it happens (and its
        reader's read budget still paces it). The admin key's streams pay, never wait."""
        await asyncio.sleep(0)
        if replaying and self.caller.user_id is not None:
            await self._take_turn(self.caller.user_id)
        self._check(self._current_room())

    async def _take_turn(self, user_id: str) -> None:
        """Wait for the session's stream work in turn with the other members whose replays
        wait for it (``StreamTurns``: an event each, round the members): one member's many
        streams take no more of it than another's one (review RA-4: another member's
        replay waited behind a viewer's 16, 40 s against 1 s)."""
        room = self.room
        await room.stream_turns.take(
            user_id,
            lambda: room.work_wait_s(Work.STREAMS),
            lambda: self._check(self._current_room()),
            PACED_S,
        )

    async def _paced(self, allowed: Callable[[], bool]) -> None:
        while not allowed():
            await asyncio.sleep(PACED_S)  # the budget refills at a known rate: look again
            # Meanwhile: a shutdown, a deletion, the reader's access taken (review: a paced
            # stream went on after each, and held the shutdown up 11 s).
            self._check(self._current_room())

    def _paid(self, frames: list[bytes], read_bytes: int) -> list[bytes]:
        """``frames``, made after reading ``read_bytes`` of work: the session pays both."""
        self.room.spend_work(Work.STREAMS, read_bytes + sum(len(f) for f in frames))
        return frames

    async def _read(self, after: int) -> list[StoredEvent]:
        return await self.state.store.events_after(self.session_id, after, EVENTS_PAGE)

    def _current_room(self) -> SessionRoom:
        """The stream's room, while it serves (a room given up, unloaded or moved to
        another node ends its streams: their readers resume on the room loaded next)."""
        if self.state.draining or self.room.draining:
            raise _Ended("unavailable", "the server is shutting down; resume with the last id")
        if self.room.feed.ended is not None:
            raise _Ended(*self.room.feed.ended)
        if self.room.closed:
            raise _Ended("unavailable", "the session was unloaded; resume with the last id")
        return self.room

    def _check(self, room: SessionRoom) -> None:
        """May the reader still read the session (asked again before every event)?"""
        claims = self.caller.claims
        if self.caller.user_id is None or claims is None:
            return
        if claims.expires_at <= self.state.clock():
            raise _Ended("unauthenticated", "token expired")
        if self.caller.user_id not in room.membership.members:
            raise _Ended("forbidden", "removed: you are no longer a member")
        refusal = room.membership.token_refusal(claims)
        if refusal is not None:
            raise _Ended("unauthenticated", refusal)
        if not decide(room.subject(self.caller.user_id), Do(Capability.READ_SESSION)).allowed:
            raise _Ended("forbidden", "membership revoked")

    def _event_frames(self, room: SessionRoom, event: StoredEvent) -> list[bytes] | None:
        """The frames of a stored event (the rest of the reply it ends first); None while
        this node's document does not show it yet."""
        doc = room.doc
        frames: list[bytes] = []
        data: dict[str, Any] = {
            "seq": event.seq,
            "at_ms": event.at_ms,
            "kind": event.kind,
            "actor": event.actor,
            "data": dict(event.data),
        }
        entry_key = _ENTRY_IDS.get(event.kind)
        reply_id = event.data.get("reply_id")
        if entry_key is not None:
            if not doc.has_entry(str(event.data[entry_key])):
                return None
            data["text"] = doc.entry(str(event.data[entry_key])).content  # as shared
        # A stored event proves its commit: the reply it starts is in the document, and
        # the text of a reply it ends no longer changes, so both are read from the document
        # (not the feed's committed copies, which keep a few running replies only).
        elif event.kind == "run_started" and not doc.has_entry(str(reply_id)):
            return None
        elif event.kind in REPLY_ENDS and reply_id is not None and reply_id == self.cursor.reply_id:
            text = reply_text(doc, str(reply_id))
            if text is None or text.streaming:
                return None
            frames += self._deltas(text.text)
        if event.kind == "run_failed" and event.data["reason_code"] in _STATUS_OF:
            data["data"]["status"] = _STATUS_OF[event.data["reason_code"]]
        self.cursor = self.cursor.after(event)
        frames.append(frame(event.kind, str(self.cursor), data))
        return frames

    def _live_frames(self, room: SessionRoom) -> Iterator[bytes]:
        """The running reply's committed text past the cursor; the queue if it changed."""
        if self.cursor.reply_id is not None:
            text = room.writer.document.committed_reply(self.cursor.reply_id)
            if text is not None:
                yield from self._deltas(text.text)
        queue = room.writer.document.committed_queue()
        if queue != self._sent_queue:
            self._sent_queue = queue
            yield frame("queue", str(self.cursor), {"queue": queue})

    def _deltas(self, text: str) -> list[bytes]:
        frames = []
        reply_id = self.cursor.reply_id
        while self.cursor.offset < len(text):
            offset = self.cursor.offset
            piece = text[offset : offset + MAX_DELTA_CHARS]
            self.cursor = self.cursor.sent(len(piece))
            data = {"reply_id": reply_id, "offset": offset, "text": piece}
            frames.append(frame("reply_delta", str(self.cursor), data))
        return frames


class EventStreamResponse(Response):
    """Writes a stream's frames; ends when they end, the client goes, or a write stalls."""

    media_type = EVENT_STREAM

    def __init__(self, stream: SessionStream, stall_timeout_s: float) -> None:
        # As ``StreamingResponse`` does: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.stream = stream
        self.stall_timeout_s = stall_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frames = self.stream.frames()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            writing = asyncio.create_task(self._write(frames, send))
            leaving = asyncio.create_task(_disconnected(receive))
            try:
                await asyncio.wait({writing, leaving}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (writing, leaving):
                    task.cancel()
                await asyncio.gather(writing, leaving, return_exceptions=True)
            if writing.done() and not writing.cancelled() and writing.result():
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.stall_timeout_s):
                        await send({"type": "http.response.body", "body": b""})
        finally:
            self.stream.close()
            await frames.aclose()

    async def _write(self, frames: AsyncIterator[bytes], send: Send) -> bool:
        """Send every frame; False when the client stalled and the stream is cut."""
        async for chunk in frames:
            try:
                async with asyncio.timeout(self.stall_timeout_s):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                self.stream.state.metrics.streams_cut.inc()
                log.info(
                    "event stream cut: the reader took nothing",
                    extra={"session_id": self.stream.session_id, "user_id": self.stream.reader},
                )
                return False
        return True


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _stream_only(state: AppState, session_id: str) -> None:
    raise InvalidInput("send 'Accept: text/event-stream'")  # never routed: for ``admit``, ``judge``


# What a member needs to read the stream (the JSON pages stay the admin's).
STREAM = Operation(
    "GET",
    EVENTS_PATH,
    _stream_only,
    "The session's events as a stream",
    capability=Capability.READ_SESSION,
)


async def open_stream(request: Request, op: Operation) -> Response:
    """The events of ``op``'s route (the JSON pages' operation: the query it takes) as a
    stream, judged in every route's order (``rest.route``): the member let in, then the
    path, query and ``Last-Event-ID``'s form, then their rights."""
    state: AppState = request.app.state.parley
    try:
        caller, session_id, room = await _let_in(request, state)
        check_path(STREAM, request.path_params)
        refused = _query_refusal(op, request)
        if refused is not None:
            raise refused
        last_id = resume_given(request)
        await judge(STREAM, caller, state, room)
        if state.draining:
            raise Unavailable("the server is shutting down")
        room = await state.rooms.get(session_id)
        reader = caller.user_id or ADMIN_READER
        _check_caps(room, reader, state)  # before reading the store
        async with state.store.read() as connection:
            cursor = await start_at(connection, session_id, last_id)
        _check_offset(room, cursor)
        # Again, with no await before the stream counts itself: streams opened at once
        # all passed the first check while this one read the store.
        _check_caps(room, reader, state)
        stream = SessionStream(state, room, caller, cursor)
    except ParleyError as exc:
        state.metrics.errors.labels(code=exc.code.value).inc()
        return error_response(exc, state.settings.db_retry_after_s)
    return EventStreamResponse(stream, state.settings.send_stall_timeout_s)


async def _let_in(request: Request, state: AppState) -> tuple[Caller, str, SessionRoom | None]:
    """The caller of the events route, its session and their room (None: the admin), let in
    at the stream's door (``rest.admit``): what every answer of the route is judged after,
    a refusal of its ``Accept`` header too (FX44: a stranger was told ``not_acceptable``
    before ``unauthenticated``)."""
    caller = authenticate(request, state, query_token=True)  # EventSource's ``?token=``
    session_id = str(request.path_params["session_id"])
    return caller, session_id, await admit(STREAM, caller, state, session_id)


def _check_offset(room: SessionRoom, cursor: Cursor) -> None:
    if cursor.reply_id is None:
        return
    text = room.writer.document.committed_reply(cursor.reply_id)
    if text is not None and not text.streaming and cursor.offset > len(text.text):
        raise BadEventId("Last-Event-ID: past the end of its reply")


def _check_caps(room: SessionRoom, reader: str, state: AppState) -> None:
    """Refuse a stream past a cap, saying when to try again (``Retry-After``), as a socket
    past a cap on sockets is told: a cap frees as other streams end."""
    settings = state.settings
    if sum(room.feed.readers.values()) >= settings.max_streams_per_session:
        raise TooManyStreams(
            f"too many event streams to this session ({settings.max_streams_per_session})",
            CAP_RETRY_AFTER_S,
        )
    if room.feed.readers[reader] >= settings.max_streams_per_user:
        raise TooManyStreams(
            f"too many event streams of this user ({settings.max_streams_per_user})",
            CAP_RETRY_AFTER_S,
        )


def with_stream(json_route: Route, op: Operation) -> Route:
    """The events route (``op``'s): a stream for ``Accept: text/event-stream``, else the
    JSON pages."""
    json_endpoint = json_route.endpoint

    async def endpoint(request: Request) -> Response:
        # Matched as HTTP says (``server.http.accept``), not by a substring: a member's
        # ``TEXT/EVENT-STREAM`` was the admin's JSON pages (403), ``text/event-stream;q=0``
        # and ``text/event-stream-x`` a stream (review).
        media = chosen(request.headers.get("accept"), (JSON, EVENT_STREAM))
        if media is None:
            state: AppState = request.app.state.parley
            try:
                await _let_in(request, state)  # the caller first, as on every route
                raise NotAcceptable(
                    f"this route answers {JSON} or {EVENT_STREAM}; the Accept header takes "
                    f"neither (got {request.headers['accept'][:100]!r})"
                )
            except ParleyError as exc:
                state.metrics.errors.labels(code=exc.code.value).inc()
                return error_response(exc, state.settings.db_retry_after_s)
        # Not for HEAD: headers alone, with nothing to stream after them.
        if request.method == "GET" and media == EVENT_STREAM:
            return await open_stream(request, op)
        response: Response = await json_endpoint(request)
        return response

    return Route(json_route.path, endpoint, methods=["GET"], name=json_route.name)


def _query_refusal(op: Operation, request: Request) -> InvalidInput | None:
    """A query parameter ``op`` does not take, or one given more than once, refused as
    every route refuses it (``rest.check_form``; review: the stream took the last
    ``last_event_id`` of two, and so resumed where the caller may not have meant; RY-8: it
    ignored a typo'd one)."""
    try:
        check_query_names(op, request)
        for name in request.query_params:
            query_value(request, name)
    except InvalidInput as exc:
        return exc
    return None
