"""The WebSocket of one private side-thread: its document, synced to its owner's clients.

``/ws/sessions/{session_id}/threads/{thread_id}?token=…`` speaks the y-websocket sync
protocol, so a stock ``WebsocketProvider`` (its room name the thread id) syncs the
thread's document (``session.core.thread_doc``): its turns, a reply's text as the model
writes it. It is admitted as the session's socket is (``server.ws.admission``, the same
close codes), then only for the thread's owner: any other thread id, another member's
included, closes it 4404, as for a thread that does not exist. The document is read-only:
a client's update is dropped as on the session's socket (``server.ws.client_writes``:
never applied, never a count toward the abuse limit, bounded by the frame rate and the
member's document bytes); awareness is shown to nobody else (the thread
has one reader): an update is sent back to its sender alone (so a stock client, which
drops a socket silent for 30 s, keeps an idle one), a query is answered with no states.
Commands go over the session's socket; one sent here closes this one (4400).

The document is stored as it changes (``server.runtime.thread_docs``): after a restart
the same document is read back, so a client that kept its ``Y.Doc`` just syncs. In
cluster mode a node that follows the session serves it too, read from the stored log and
kept up with it as the running node stores more (a reply streamed there included).

It closes 4404 when the thread is deleted or the session deleted, 4403 or 4401 when its
member is removed or their token revoked (as every socket of theirs), 1013 when the
session moves to another node or an update of the thread could not be stored (reconnect
to resync), and 4410 when the client holds a document this one does not cover: one of a
thread stored before its document was (it is built from its rows), so a new ``Y.Doc``
must sync.
"""

from __future__ import annotations

from functools import partial

from starlette.websockets import WebSocket

from parley.server.runtime.room import SessionRoom
from parley.server.runtime.thread_docs import LiveThreadDoc
from parley.server.state import AppState
from parley.server.ws.admission import (
    admit,
    charged,
    frame_count,
    over_connection_cap,
    receive,
    serve,
)
from parley.server.ws.client_writes import WriteDropped, drop_update
from parley.server.ws.connection import Connection
from parley.server.ws.deadlines import SocketDeadlines, token_expired
from parley.session.closes import CloseCode
from parley.session.errors import ParleyError, close_code_for
from parley.session.yprotocol import (
    AwarenessMessage,
    ProtocolError,
    QueryAwarenessMessage,
    SyncMessage,
    SyncType,
    encode_awareness,
    is_command_frame,
)

NO_STATES = b"\x00"  # an awareness update of no clients
READ_ONLY = "a side-thread's document is read-only; send commands instead"
REBUILT = "this side-thread's document was built anew from its rows: sync it into a new Y.Doc"


async def thread_socket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.parley
    admitted = await admit(websocket, state)
    if admitted is None:
        return
    room, connection = admitted.room, admitted.connection
    thread_id = websocket.path_params["thread_id"]
    live: LiveThreadDoc | None = None
    writes = False
    try:
        writes = await state.rooms.runs_here(room)
        if not writes:  # a follower: the thread's rows as stored now, its document's log
            await room.side_threads.read_rows()
        live = await room.side_threads.document(thread_id, connection.user_id, writes=writes)
    except ParleyError as exc:  # NotFound; Unavailable: the database, or no log yet
        connection.close(close_code_for(exc), exc.message)
    else:  # the document's read awaited: sockets counted since admission count too
        too_many = over_connection_cap(room, connection.user_id, state.settings)
        if too_many is not None:  # to come back, as one refused at the upgrade (429)
            connection.close(CloseCode.TRY_AGAIN, too_many)
            live = None
    if live is None:
        room.side_threads.docs.release(thread_id, writes=writes)
        await connection.wait_closed()
        return
    room.sockets.attach_thread(thread_id, connection)

    def cleanup() -> None:
        room.sockets.detach_thread(thread_id, connection)
        room.side_threads.docs.release(thread_id, writes=writes)

    await serve(
        state,
        admitted,
        _serve(websocket, room, connection, live, state, admitted.deadlines, thread_id),
        cleanup,
    )


async def _serve(
    websocket: WebSocket,
    room: SessionRoom,
    connection: Connection,
    live: LiveThreadDoc,
    state: AppState,
    deadlines: SocketDeadlines,
    thread_id: str,
) -> None:
    limits = connection.limits
    assert limits is not None
    dropped = partial(state.refused_writes.dropped, room.session_id, thread_id)
    while not connection.closed:
        message = await receive(websocket, deadlines, connection.inbound)
        if message is None:
            return
        data = message.get("bytes")
        if data is None or is_command_frame(data):
            connection.close(CloseCode.PROTOCOL, "commands go over the session's socket")
            return
        now = state.clock()
        if token_expired(connection, now):
            return
        if not limits.updates.allow(now, frame_count(data)):
            if limits.cut_off(connection, "too many messages", now):
                return
            continue  # dropped: the client is over its update rate
        try:
            await _on_binary(room, connection, live, data, now, dropped)
        except ProtocolError as exc:
            connection.close(close_code_for(exc), f"protocol error: {exc.message}")
            return
        except ParleyError as exc:  # a refused frame: over a budget
            state.metrics.errors.labels(code=exc.code).inc()
            if limits.cut_off(connection, "too many refused frames", now):
                return


async def _on_binary(
    room: SessionRoom,
    connection: Connection,
    live: LiveThreadDoc,
    data: bytes,
    now: float,
    dropped: WriteDropped,
) -> None:
    """Handle a binary frame, charged what it costs first (as on the session's socket); a
    refused one raises its ``ParleyError``. ``dropped`` is told the socket's first write."""
    message, _ = charged(room, connection, data, now)
    if message is None:
        return  # a resync past the socket's count
    if isinstance(message, SyncMessage):
        if message.sync_type is SyncType.STEP1:
            if room.sync_refused(connection, now):  # first: reading a state costs its size
                return
            if not live.document.covers(message.payload):
                connection.close(CloseCode.GONE, REBUILT)
                return
            answer = await live.sync_answer(message.payload)
            connection.send_sync(answer)
            room.charge_sync(connection.user_id, message.payload, answer, now)
        else:
            drop_update(connection, message.payload, live.is_noop, READ_ONLY, dropped)
    elif isinstance(message, QueryAwarenessMessage):
        connection.send(encode_awareness(NO_STATES))
    else:
        assert isinstance(message, AwarenessMessage)
        # Shown to nobody else (one reader), but answered: a stock client drops a socket
        # it heard nothing on for 30 s, and an idle thread sends nothing else.
        connection.send(data)
