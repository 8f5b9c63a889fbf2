"""The WebSocket endpoint: y-websocket binary frames and JSON commands on one socket.

Close codes: 4401 bad or expired token, 4403 not a member (or membership revoked, or a
browser origin that is not allowed), 4404 unknown session, 4400 malformed binary frame,
4429 rate limits ignored again and again, 1009 message too big (set by the server's size
limit), 1013 slow consumer or the database failed under a write (reconnect and resync; the
reason is JSON with ``retry_after_ms`` when it is the database), 1001 server going away or
idle timeout. 44xx codes are final for stock clients; the others make them reconnect. While
the database cannot load the session, the upgrade itself is refused: HTTP 503 with
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from authz.origins import origin_allowed
from authz.policy import Do, decide
from authz.roles import Capability
from authz.tokens import verify_token
from server.commands import handle_command
from server.connection import Connection, ConnectionLimits
from server.direct_send import SCOPE_KEY as DIRECT_WRITER
from server.retry_hint import retry_later_response
from server.room import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_TRY_AGAIN, SessionRoom
from server.state import AppState
from session.commands import command_id_of, error_reply
from session.errors import (
    Forbidden,
    NotFound,
    ParleyError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from session.presence import Presence
from session.yprotocol import (
    AwarenessMessage,
    ProtocolError,
    QueryAwarenessMessage,
    SyncMessage,
    SyncType,
    decode_client_frame,
    encode_awareness,
)

log = logging.getLogger("parley.ws")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_PROTOCOL = 4400
CLOSE_ABUSE = 4429
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL = 1011


async def session_socket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.parley
    session_id = websocket.path_params["session_id"]
    token = websocket.query_params.get("token", "")
    # Accept before refusing: a refused upgrade reaches browsers as a bare 1006, and stock
    # clients retry it forever; a close code after accepting is final and readable. The
    # one exception is a database that cannot load the session: there retrying is right,
    # and a refused upgrade is what makes every stock client back off (y-websocket before
    # 3.x resets its back-off when a socket opens, and came back ten times a second).
    refusal: tuple[int, str] | None = None
    if state.draining:
        refusal = (CLOSE_GOING_AWAY, "server shutting down")
    elif not origin_allowed(
        websocket.headers.get("origin"),
        websocket.headers.get("host"),
        state.settings.allowed_origins,
    ):
        refusal = (CLOSE_FORBIDDEN, "origin not allowed")
    else:
        try:
            claims = verify_token(state.keys.signing_key, token, now=int(state.clock()))
            if claims.session_id != session_id:
                raise Unauthenticated("the token is for another session")
            room = await state.rooms.get(session_id)
        except Unauthenticated as exc:
            refusal = (CLOSE_UNAUTHENTICATED, exc.message[:120])
        except NotFound:
            refusal = (CLOSE_NOT_FOUND, "unknown session")
        except Unavailable as exc:
            await websocket.send_denial_response(
                retry_later_response(exc, state.settings.db_retry_after_s)
            )
            return
        except ParleyError as exc:
            refusal = (CLOSE_TRY_AGAIN, exc.message[:120])
    await websocket.accept()
    if refusal is not None:
        await websocket.close(*refusal)
        return
    allowed = decide(room.subject(claims.user_id), Do(Capability.READ_SESSION))
    if not allowed.allowed:
        await websocket.close(CLOSE_FORBIDDEN, allowed.reason[:120])
        return
    connection = Connection(
        websocket,
        claims.user_id,
        state.settings.send_queue_max_messages,
        direct=websocket.scope.get(DIRECT_WRITER),
        buffer_limit=state.settings.send_buffer_max_bytes,
    )
    connection.limits = ConnectionLimits.from_settings(state.settings, state.clock())
    connection.on_overflow = state.metrics.slow_consumers.inc
    connection.start()
    state.metrics.connections.inc()
    room.connections.add(connection)
    presence = room.presence
    snapshot = presence.snapshot()
    if snapshot is not None:
        connection.send(encode_awareness(snapshot))
    if state.rooms.cluster is not None:
        state.rooms.cluster.presence.joined(session_id)  # and from the other nodes
    expiry = asyncio.get_running_loop().call_later(
        max(claims.expires_at - state.clock(), 0),
        connection.close,
        CLOSE_UNAUTHENTICATED,
        "token expired",
    )
    try:
        serving = asyncio.create_task(_serve(websocket, room, connection, presence, state))
        finished = asyncio.create_task(connection.finished.wait())
        try:
            # Stop reading once the connection is closed from our side (a slow or revoked
            # client may never send the frame that would end the read).
            await asyncio.wait({serving, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, finished):
                task.cancel()
            await asyncio.gather(serving, finished, return_exceptions=True)
            crash = None if serving.cancelled() else serving.exception()
            if crash is not None:
                log.error(
                    "socket handler failed",
                    exc_info=crash,
                    extra={"session_id": session_id, "user_id": claims.user_id},
                )
                connection.close(CLOSE_INTERNAL, "internal error")
    finally:
        state.metrics.connections.dec()
        expiry.cancel()
        room.connections.discard(connection)
        left = presence.drop(connection)
        if left is not None:
            room.broadcast(encode_awareness(left))
            if state.rooms.cluster is not None:
                state.rooms.cluster.presence.publish(session_id, left)
        if not connection.closed:
            connection.close(1000)
        await connection.wait_closed()


async def _serve(
    websocket: WebSocket,
    room: SessionRoom,
    connection: Connection,
    presence: Presence,
    state: AppState,
) -> None:
    limits = connection.limits
    assert limits is not None
    while not connection.closed:
        try:
            async with asyncio.timeout(state.settings.ws_idle_timeout_s):
                message = await websocket.receive()
        except TimeoutError:
            connection.close(CLOSE_GOING_AWAY, "idle timeout")
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        text = message.get("text")
        now = state.clock()
        if data is not None and not limits.updates.allow(now):
            if limits.abuse.refused(now):
                connection.close(CLOSE_ABUSE, "too many messages")
                return
            continue  # dropped: the client is over its update rate
        if text is not None and not (
            limits.commands.allow(now) and room.user_bucket(connection.user_id).allow(now)
        ):
            connection.speaks_json = True
            state.metrics.errors.labels(code="rate_limited").inc()
            connection.send(
                error_reply(command_id_of(text), RateLimited("too many commands; slow down"))
            )
            if limits.abuse.refused(now):
                connection.close(CLOSE_ABUSE, "too many commands")
                return
            continue
        if data is not None:
            try:
                relay = await _on_binary(room, connection, presence, data)
                if relay is not None and state.rooms.cluster is not None:
                    state.rooms.cluster.presence.publish(room.session_id, relay)
            except ProtocolError as exc:
                log.info("protocol error; closing socket", extra={"error": exc.message})
                connection.close(CLOSE_PROTOCOL, f"protocol error: {exc.message}"[:120])
                return
            except ParleyError as exc:
                connection.send_error(exc)
        elif text is not None:
            connection.speaks_json = True
            if state.rooms.cluster is not None:  # run where the session runs
                connection.send(await state.rooms.cluster.command(room, connection, text))
            else:
                connection.send(await handle_command(room, connection, text))


async def _on_binary(
    room: SessionRoom, connection: Connection, presence: Presence, data: bytes
) -> bytes | None:
    """Handle a binary frame; returns the awareness update it relayed, if any."""
    message = decode_client_frame(data)
    if isinstance(message, SyncMessage):
        if message.sync_type is SyncType.STEP1:
            try:
                connection.send(await room.sync_step2_for(message.payload))
            except ParleyError:
                raise
            except Exception as exc:
                raise ProtocolError(f"bad state vector: {exc}") from None
        elif not room.is_noop(message.payload):
            # The server is the only writer: a client's change is neither applied nor relayed.
            log.info("refused a client write", extra={"user_id": connection.user_id})
            room.refused_writes += 1
            connection.send_error(
                Forbidden("the shared document is read-only; send commands instead")
            )
    elif isinstance(message, AwarenessMessage):
        relay = presence.apply(connection, connection.user_id, message.update)
        room.broadcast(encode_awareness(relay))
        return relay
    elif isinstance(message, QueryAwarenessMessage):
        snapshot = presence.snapshot()
        if snapshot is not None:
            connection.send(encode_awareness(snapshot))
    return None
