"""The WebSocket endpoint: y-websocket binary frames and JSON commands on one socket.

A command is a JSON text frame or a binary frame of message type 100 (``varstring`` JSON,
``session.yprotocol.encode_command_frame``); its reply comes back the same way, and so do
errors and events later sent to that socket. A socket that never sent a command is sent
neither (stock Yjs providers decode every frame as y-websocket binary).

Close codes: 4401 bad, expired or revoked token, 4403 not a member (or membership revoked,
or a browser origin that is not allowed), 4404 unknown session, 4400 malformed binary frame,
4429 rate limits ignored (or frames refused) again and again, or too many sockets of the user
or the session, 1009 message too big (set by the server's size limit), 1013 slow consumer
or the database failed under a write (reconnect and resync; the reason is JSON with
``retry_after_ms`` when it is the database), 1001 server going away or idle timeout.
44xx codes are final for stock clients; the others make them reconnect. While the database
cannot load the session, the upgrade itself is refused: HTTP 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from parley.authz.origins import origin_allowed, own_origins
from parley.authz.policy import Do, decide
from parley.authz.roles import Capability
from parley.authz.tokens import ClientClaims, verify_token
from parley.server.http.retry_hint import retry_later_response
from parley.server.runtime.room import SessionRoom
from parley.server.settings import Settings
from parley.server.state import AppState
from parley.server.ws.connection import CommandChannel, Connection, ConnectionLimits
from parley.server.ws.deadlines import SocketDeadlines
from parley.server.ws.direct_send import SCOPE_KEY as DIRECT_WRITER
from parley.session.closes import CloseCode
from parley.session.commands import command_id_of, error_reply
from parley.session.errors import (
    Forbidden,
    NotFound,
    ParleyError,
    RateLimited,
    Unauthenticated,
    Unavailable,
    close_code_for,
)
from parley.session.presence import Presence
from parley.session.ratelimit import cost_of
from parley.session.yprotocol import (
    AwarenessMessage,
    ProtocolError,
    QueryAwarenessMessage,
    SyncMessage,
    SyncType,
    decode_client_frame,
    decode_command_frame,
    encode_awareness,
    is_command_frame,
)

log = logging.getLogger("parley.ws")


class SessionSocket:
    """The endpoint as an ASGI app rather than a function: for a function, Starlette's route
    adds two coroutines and an exception wrapper of its own, and they last as long as the
    socket (1.5 kB on each). The app's ``ExceptionMiddleware`` applies the same handlers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await session_socket(WebSocket(scope, receive, send))


async def session_socket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.parley
    admitted = await _admit(websocket, state)
    if admitted is None:
        return
    room, claims = admitted
    session_id = room.session_id
    connection = Connection(
        websocket,
        claims.user_id,
        state.settings.send_queue_max_messages,
        direct=websocket.scope.get(DIRECT_WRITER),
        buffer_limit=state.settings.send_buffer_max_bytes,
        budget=state.send_budget,
        on_drop=state.metrics.send_dropped,
        claims=claims,
    )
    connection.limits = ConnectionLimits.from_settings(state.settings, state.clock())
    connection.start()
    state.metrics.connections.inc()
    room.sockets.attach(connection)
    presence = room.presence
    _send_presence(connection, presence)
    if state.rooms.cluster is not None:
        state.rooms.cluster.presence.joined(session_id)  # and from the other nodes
    deadlines = SocketDeadlines(
        claims.expires_at - state.clock(), state.settings.ws_idle_timeout_s, connection.close
    )
    try:
        serving = asyncio.create_task(
            _serve(websocket, room, connection, presence, state, deadlines)
        )
        # Stop reading once the connection is closed from our side (a slow or revoked
        # client may never send the frame that would end the read).
        connection.on_finished = serving.cancel
        if connection.finished:
            serving.cancel()
        try:
            await _reading(serving)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            crash = None if serving.cancelled() else serving.exception()
            if crash is not None:
                log.error(
                    "socket handler failed",
                    exc_info=crash,
                    extra={"session_id": session_id, "user_id": claims.user_id},
                )
                connection.close(CloseCode.INTERNAL, "internal error")
    finally:
        state.metrics.connections.dec()
        deadlines.cancel()
        room.sockets.detach(connection)
        if presence.drop(connection) is not None:
            room.awareness.changed()
        if not connection.closed:
            connection.close(CloseCode.NORMAL)
        await connection.wait_closed()


async def _admit(websocket: WebSocket, state: AppState) -> tuple[SessionRoom, ClientClaims] | None:
    """Accept the socket, then close it with a code unless it may join its session: the
    room and the token's claims when it may. A function apart, so that what is needed
    only to decide (the token, the origins, the refusal) is not kept for the socket's life
    in the handler's frame; so the token is read from the scope, not from Starlette's
    ``query_params`` (which it caches on the socket)."""
    session_id = websocket.path_params["session_id"]
    token = QueryParams(websocket.scope.get("query_string", b"")).get("token", "")
    # Accept before refusing: a refused upgrade reaches browsers as a bare 1006, and stock
    # clients retry it forever; a close code after accepting is final and readable. The
    # one exception is a database that cannot load the session: there retrying is right,
    # and a refused upgrade is what makes every stock client back off (y-websocket before
    # 3.x resets its back-off when a socket opens, and came back ten times a second).
    local_host, local_port = websocket.scope.get("server") or (None, None)
    own = own_origins(websocket.scope.get("scheme") == "wss", local_host, local_port)
    origin = Headers(scope=websocket.scope).get("origin")
    refusal: tuple[CloseCode, str] | None = None
    if state.draining:
        refusal = (CloseCode.GOING_AWAY, "server shutting down")
    elif not origin_allowed(origin, state.settings.allowed_origins, own):
        refusal = (CloseCode.FORBIDDEN, "origin not allowed")
    else:
        try:
            claims = verify_token(state.keys.signing_key, token, now=int(state.clock()))
            if claims.session_id != session_id:
                raise Unauthenticated("the token is for another session")
            room = await state.rooms.get(session_id)
        except Unauthenticated as exc:
            refusal = (close_code_for(exc), exc.message[:120])
        except NotFound as exc:
            refusal = (close_code_for(exc), "unknown session")
        except Unavailable as exc:
            await websocket.send_denial_response(
                retry_later_response(exc, state.settings.db_retry_after_s)
            )
            return None
        except ParleyError as exc:
            refusal = (close_code_for(exc), exc.message[:120])
    await websocket.accept()
    if refusal is not None:
        await websocket.close(*refusal)
        return None
    allowed = decide(room.subject(claims.user_id), Do(Capability.READ_SESSION))
    if not allowed.allowed:
        await websocket.close(CloseCode.FORBIDDEN, allowed.reason[:120])
        return None
    revoked = room.membership.token_refusal(claims)
    if revoked is not None:
        await websocket.close(CloseCode.UNAUTHENTICATED, revoked[:120])
        return None
    too_many = _over_connection_cap(room, claims.user_id, state.settings)
    if too_many is not None:  # checked and counted with no await between: no race
        state.metrics.errors.labels(code="rate_limited").inc()
        await websocket.close(CloseCode.ABUSE, too_many)
        return None
    return room, claims


def _send_presence(connection: Connection, presence: Presence) -> None:
    snapshot = presence.snapshot()
    if snapshot is not None:
        connection.send(encode_awareness(snapshot))


async def _reading(serving: asyncio.Task[None]) -> None:
    """Wait for the socket's reading task to end, however it ends: a cancellation of the
    reader alone (the connection finished) is not one of the caller's."""
    try:
        await serving
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # the caller reads it from the task
        pass


def _over_connection_cap(room: SessionRoom, user_id: str, settings: Settings) -> str | None:
    """Why one more socket of ``user_id`` to ``room`` is refused, or None (caps per node)."""
    if len(room.connections) >= settings.max_connections_per_session:
        return f"too many connections to this session ({settings.max_connections_per_session})"
    mine = sum(1 for c in room.connections if c.user_id == user_id)
    if mine >= settings.max_connections_per_user:
        return f"too many connections of this user ({settings.max_connections_per_user})"
    return None


async def _serve(
    websocket: WebSocket,
    room: SessionRoom,
    connection: Connection,
    presence: Presence,
    state: AppState,
    deadlines: SocketDeadlines,
) -> None:
    limits = connection.limits
    assert limits is not None
    while not connection.closed:
        deadlines.waiting()  # closes the socket if no frame comes in time
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        deadlines.received()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        text = message.get("text")
        channel = CommandChannel.TEXT
        if data is not None and is_command_frame(data):
            try:
                text, data, channel = decode_command_frame(data), None, CommandChannel.BINARY
            except ProtocolError as exc:
                connection.close(close_code_for(exc), f"protocol error: {exc.message}"[:120])
                return
        now = state.clock()
        if data is not None and not limits.updates.allow(now):
            if limits.abuse.refused(now):
                connection.close(CloseCode.ABUSE, "too many messages")
                return
            continue  # dropped: the client is over its update rate
        if text is not None:
            connection.channel = channel  # answered the way it asked
        if text is not None and not (
            limits.commands.allow(now) and room.user_bucket(connection.user_id).allow(now)
        ):
            state.metrics.errors.labels(code="rate_limited").inc()
            connection.send_json(
                error_reply(command_id_of(text), RateLimited("too many commands; slow down"))
            )
            if limits.abuse.refused(now):
                connection.close(CloseCode.ABUSE, "too many commands")
                return
            continue
        if data is not None:
            try:
                await _on_binary(room, connection, presence, data, now)
            except ProtocolError as exc:
                log.info("protocol error; closing socket", extra={"error": exc.message})
                connection.close(close_code_for(exc), f"protocol error: {exc.message}"[:120])
                return
            except ParleyError as exc:
                # A refused frame (a write, over a budget, too large): the client is told,
                # and one refused again and again is cut off.
                state.metrics.errors.labels(code=exc.code).inc()
                connection.send_error(exc)
                if limits.abuse.refused(now):
                    connection.close(CloseCode.ABUSE, "too many refused frames")
                    return
        elif text is not None:
            connection.send_json(await state.rooms.command(room, connection.user_id, text))


async def _on_binary(
    room: SessionRoom, connection: Connection, presence: Presence, data: bytes, now: float
) -> None:
    """Handle a binary frame; a refused one raises its ``ParleyError``.

    A frame is charged what it costs (``cost_of``) before it is judged: bytes for document
    writes and presence (per member), a count for full resyncs (per socket)."""
    message = decode_client_frame(data)
    cost = cost_of(message, len(data))
    limits = connection.limits
    assert limits is not None
    if not (
        limits.budgets.allow(connection, cost, now)
        and room.budgets.allow(connection.user_id, cost, now)
    ):
        raise RateLimited(f"over the {cost.spend.value} budget; slow down")
    if isinstance(message, SyncMessage):
        if message.sync_type is SyncType.STEP1:
            for frame in await room.writer.sync_answer(message.payload):
                connection.send(frame)
        elif not room.writer.is_noop(message.payload):
            # The server is the only writer: a client's change is neither applied nor relayed.
            log.info("refused a client write", extra={"user_id": connection.user_id})
            raise Forbidden("the shared document is read-only; send commands instead")
    elif isinstance(message, AwarenessMessage):
        if not decide(room.subject(connection.user_id), Do(Capability.BE_PRESENT)).allowed:
            # Seeing the others is reading the session; showing oneself is ``be_present``.
            # A state shown before the capability was taken away goes too.
            if presence.drop(connection) is not None:
                room.awareness.changed()
            raise Forbidden("you may not show presence here (be_present)")
        name = room.membership.display_names.get(connection.user_id)
        presence.apply(connection, connection.user_id, message.update, name)
        room.awareness.changed()
    elif isinstance(message, QueryAwarenessMessage):
        _send_presence(connection, presence)
