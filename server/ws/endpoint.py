"""The WebSocket endpoint: y-websocket binary frames and JSON commands on one socket.

A command is a JSON text frame or a binary frame of message type 100 (``varstring`` JSON,
``session.yprotocol.encode_command_frame``); its reply comes back the same way, and so do
errors and events later sent to that socket. A socket that never sent a command is sent
neither (stock Yjs providers decode every frame as y-websocket binary).

Close codes: 4401 bad, expired or revoked token, 4403 not a member (or membership revoked,
or a browser origin that is not allowed), 4404 unknown session, 4400 malformed binary frame,
4429 rate limits ignored (or frames refused) again and again, or too many sockets of the user
or the session (a client's document update is dropped and counts toward nothing:
``server.ws.client_writes``; the reason is JSON with ``retry_after_ms``, when to come
back), 1009 message too big (set by the server's size limit), 1013
slow consumer or the database failed under a write (reconnect and resync; the reason is JSON with
``retry_after_ms`` when it is the database), 1001 server going away or idle timeout.
44xx codes are final for stock clients; the others make them reconnect. While the database
cannot load the session, the upgrade itself is refused: HTTP 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
from functools import partial

from starlette.websockets import WebSocket

from parley.authz.policy import Do, decide
from parley.authz.roles import Capability
from parley.server.cluster.relay import resends_only
from parley.server.runtime.commands import resend_allowed, stored_resend
from parley.server.runtime.room import SessionRoom
from parley.server.state import AppState
from parley.server.ws.admission import (
    NO_PRESENCE,
    PresenceDropped,
    admit,
    charged,
    credit_echo,
    frame_count,
    receive,
    serve,
)
from parley.server.ws.client_writes import WriteDropped, drop_update
from parley.server.ws.connection import CommandChannel, Connection
from parley.server.ws.deadlines import SocketDeadlines, token_expired
from parley.session.commands import (
    command_id_of,
    command_id_unread,
    error_reply,
    reply_error,
)
from parley.session.errors import (
    ErrorCode,
    Forbidden,
    ParleyError,
    RateLimited,
    close_code_for,
)
from parley.session.presence import Presence
from parley.session.ratelimit import command_bytes_refusal
from parley.session.yprotocol import (
    AwarenessMessage,
    ProtocolError,
    QueryAwarenessMessage,
    StateNotAnObject,
    SyncMessage,
    SyncType,
    decode_command_frame,
    encode_awareness,
    is_command_frame,
)

log = logging.getLogger("parley.ws")

READ_ONLY = "the shared document is read-only; send commands instead"


async def session_socket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.parley
    admitted = await admit(websocket, state)
    if admitted is None:
        return
    room, connection = admitted.room, admitted.connection
    room.sockets.attach(connection)
    presence = room.presence
    connection.echo_mark = room.awareness.sent_bytes  # credited from here on
    connection.echo_own_mark = room.awareness.member_bytes.get(connection.user_id, 0)
    snapshot = presence.snapshot()
    if snapshot is not None:
        _send_presence(connection, encode_awareness(snapshot))
    if state.rooms.cluster is not None:
        state.rooms.cluster.presence.joined(room.session_id)  # and from the other nodes
    if connection.channel is not None:  # said so up front (``commands=``)
        await room.side_threads.greet(connection)
        room.greet_private(connection)

    def cleanup() -> None:
        room.sockets.detach(connection)
        room.drop_presence(connection, state.clock())

    await serve(
        state,
        admitted,
        _serve(websocket, room, connection, presence, state, admitted.deadlines),
        cleanup,
    )


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
    dropped = partial(state.refused_writes.dropped, room.session_id, None)
    while not connection.closed:
        message = await receive(websocket, deadlines, connection.inbound)
        if message is None:
            return
        data = message.get("bytes")
        text = message.get("text")
        channel = CommandChannel.TEXT
        if data is not None and is_command_frame(data):
            try:
                text, data, channel = decode_command_frame(data), None, CommandChannel.BINARY
            except ProtocolError as exc:
                connection.close(close_code_for(exc), f"protocol error: {exc.message}")
                return
        now = state.clock()
        if token_expired(connection, now):
            return
        if data is not None and not limits.updates.allow(now, frame_count(data)):
            if limits.cut_off(connection, "too many messages", now):
                return
            continue  # dropped: the client is over its update rate
        refusal = None
        if text is not None:
            connection.channel = channel  # answered the way it asked
            # Charged before it is parsed, or refused unread (``command_bytes_refusal``).
            refusal = command_bytes_refusal(room.budgets, connection.user_id, len(text), now)
        if text is not None and refusal is not None:
            state.metrics.errors.labels(code=refusal.code.value).inc()
            connection.send_json(error_reply(command_id_unread(text), refusal))
            if limits.cut_off(connection, "too many commands", now):
                return
            continue
        user_bucket = None if text is None else room.user_bucket(connection.user_id)
        if (
            text is not None
            and user_bucket is not None
            and not (limits.commands.allow(now) and user_bucket.allow(now))
        ):
            # When both budgets have room again: the refusal says so (review RH-2).
            wait_s = max(limits.commands.wait_s(now), user_bucket.wait_s(now))
            answer, refused = await _past_the_rate(
                state, room, connection.user_id, text, now, wait_s
            )
            connection.send_json(answer)
            if refused:
                state.metrics.errors.labels(code="rate_limited").inc()
                if limits.cut_off(connection, "too many commands", now):
                    return
            continue
        if data is not None:
            try:
                await _on_binary(room, connection, presence, data, now, dropped)
            except ProtocolError as exc:
                log.info("protocol error; closing socket", extra={"error": exc.message})
                connection.close(close_code_for(exc), f"protocol error: {exc.message}")
                return
            except ParleyError as exc:
                # A refused frame (over a budget, too large; a write, told once): the
                # client is told, and one refused again and again is cut off.
                state.metrics.errors.labels(code=exc.code).inc()
                connection.send_error(exc)
                if not isinstance(exc, PresenceDropped) and limits.cut_off(
                    connection, "too many refused frames", now
                ):
                    return
        elif text is not None:
            reply = await state.rooms.command(room, connection.user_id, text, connection.claims)
            connection.send_json(reply)


async def _past_the_rate(
    state: AppState, room: SessionRoom, user_id: str, text: str, now: float, wait_s: float
) -> tuple[str, bool]:
    """The answer to a command over the member's rate, and whether it was refused. A resend
    gets its first answer all the same (a client may resend everything unanswered at once
    after a reconnect; Parley's SDKs pace theirs), within the member's resend allowance
    (``resend_allowed``, as over REST); anything else, or past it, is ``rate_limited``,
    with ``wait_s`` (when the rate has a command again) as its ``retry_after_ms``."""
    command_id = command_id_of(text)
    # Review: one acknowledged command resent 24,000 times past the rate was answered from
    # the recent acks each time, uncharged, until the command bytes ran out (another
    # member's acks waited 100 times longer meanwhile).
    if not resend_allowed(room, user_id, now):
        return error_reply(command_id, RateLimited("too many commands; slow down", wait_s)), True
    if room.recent_acks.knows(user_id, command_id):
        return await state.rooms.command(room, user_id, text), False
    resent = await stored_resend(room, user_id, text)  # a read of the store
    if resent is not None:
        return resent, False
    # Where another node runs the session, it alone knows its acks: it answers a resend,
    # and refuses anything else as this node would (``resends_only``).
    answer = await _resend_elsewhere(state, room, user_id, text, command_id, wait_s)
    return answer, json.loads(answer).get("type") == "error"


async def _resend_elsewhere(
    state: AppState,
    room: SessionRoom,
    user_id: str,
    text: str,
    command_id: str | None,
    wait_s: float,
) -> str:
    """The answer to a command over the member's rate: the first answer of a resend, from
    the node that runs the session if another one does; else ``rate_limited``."""
    cluster = state.rooms.cluster
    if cluster is not None and room.session_id not in cluster.running:
        answer = await cluster.relay.forward(room, resends_only(user_id), text)
        reply = json.loads(answer)
        refused = reply_error(reply) if reply.get("code") == ErrorCode.RATE_LIMITED else None
        if not isinstance(refused, RateLimited):
            return answer  # the first answer of a resend
        # Refused there: when both this node's budgets and the running node's have room.
        wait_s = max(wait_s, refused.retry_after_s or 0.0)
    return error_reply(command_id, RateLimited("too many commands; slow down", wait_s))


async def _on_binary(
    room: SessionRoom,
    connection: Connection,
    presence: Presence,
    data: bytes,
    now: float,
    dropped: WriteDropped,
) -> None:
    """Handle a binary frame, charged first (``charged``); a refused one raises its
    ``ParleyError``. ``dropped`` is told each socket's first document write."""
    message, echo_bytes = charged(room, connection, data, now, room.awareness)
    if message is None:
        return  # a resync past the socket's count
    if isinstance(message, SyncMessage):
        if message.sync_type is SyncType.STEP1:
            # The answer is the document, or what the client lacks of it: the member's
            # sockets together pay its bytes (review: a viewer's sockets, each with its own
            # budget of syncs, reconnecting in a loop, made the server diff a 5 MB document
            # a hundred times in 5 s, and everyone waited up to 3 s).
            if room.sync_refused(connection, now):
                return
            answer = await room.writer.document.sync_answer(message.payload)
            connection.send_sync(answer)
            room.charge_sync(connection.user_id, message.payload, answer, now)
        else:  # the server is the only writer: neither applied nor relayed
            drop_update(
                connection, message.payload, room.writer.document.is_noop, READ_ONLY, dropped
            )
    elif isinstance(message, AwarenessMessage):
        try:
            _on_awareness(room, connection, presence, message, now, echo_bytes)
        except StateNotAnObject:
            # Refused, the socket told once: a stock client renews its state every 15 s
            # and may change it at any rate, and each refusal would count toward the
            # abuse limit, whose 4429 is as final as the 4400 it had (review RE-3).
            if connection.told_not_an_object:
                return
            connection.told_not_an_object = True
            raise
    elif isinstance(message, QueryAwarenessMessage):
        snapshot = presence.snapshot()
        if snapshot is not None:
            _send_presence(connection, encode_awareness(snapshot))


def _on_awareness(
    room: SessionRoom,
    connection: Connection,
    presence: Presence,
    message: AwarenessMessage,
    now: float,
    echo_bytes: int,
) -> None:
    """Show a socket's awareness update to the session, or drop it for a member without
    ``be_present``; a refused one raises its ``ParleyError``."""
    if not decide(room.subject(connection.user_id), Do(Capability.BE_PRESENT)).allowed:
        # Seeing the others is reading the session; showing oneself is ``be_present``.
        # A state shown before the capability was taken away goes too.
        room.drop_presence(connection, now)
        # A stock client echoes every state it receives, as often as others' presence
        # changes: those, and its own state taken away, show nothing and are dropped
        # unanswered (refused, they counted towards the abuse limit and cut it off).
        user_id, update = connection.user_id, message.update
        if presence.would_show(connection, user_id, update, now, echo_bytes):
            # Its own state, renewed every 15 s: nothing comes back to a member alone
            # in a quiet session, whose stock client then closes the socket after 30 s
            # of silence, and syncs the whole document again (review). An update of
            # no states keeps it open.
            connection.send(NO_PRESENCE)
            if not connection.told_no_presence:  # once: a client renews every 15 s
                # (review: the SDKs and the demo showed the same error each time)
                connection.told_no_presence = True
                raise Forbidden("you may not show presence here (be_present)")
        return
    name = room.membership.display_names.get(connection.user_id)
    presence.apply(connection, connection.user_id, message.update, name, now, echo_bytes)
    connection.told_presence_budget = False  # shown: a state past the budget is told again
    behind = presence.take_behind(connection)
    if behind is not None:
        connection.send(encode_awareness(behind))
    room.awareness.changed()


def _send_presence(connection: Connection, frame: bytes) -> None:
    """Send every present state to one socket, which may echo them back free."""
    connection.send(frame)
    credit_echo(connection, len(frame))
