"""A member's live connection to one Parley session: the shared document kept in sync,
commands with typed acks and errors, presence, and reconnects that lose nothing.

    async with connect("ws://127.0.0.1:8765", session_id, token) as session:
        ack = await session.prompt("What changed in the last deploy?")
        reply = await session.answer(ack.prompt_id)

Every command gets an id made here and stays pending until its reply: when the socket drops
it is sent again, by the same id, after the reconnect, and the server answers a resent id
with its first ack (nothing is stored twice). Commands go out in the order they were made,
paced under the server's command budget (``pacing.py``). They travel as binary frames of
Parley's message type 100, so they share the socket with the y-websocket sync and awareness
frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Self
from urllib.parse import quote

import websockets
from pycrdt import Doc
from websockets.exceptions import InvalidStatus

from parley_client import wire
from parley_client.errors import (
    FINAL_CLOSES,
    CommandTimeout,
    InternalError,
    ParleyError,
    SessionClosed,
    TooLarge,
    close_wait,
    error_for,
    error_of_response,
    rate_wait,
    wait_of,
)
from parley_client.pacing import PACING, Pacer, Pacing
from parley_client.view import Change, Entry, Peer, QueuedPrompt, Snapshot, diff

PRESENCE_RENEW_S = 15.0  # as stock clients: the server closes a socket silent for 120 s
TOO_BIG = 1009  # the server's close for a frame over its size limit
TRY_AGAIN = 1013  # fell behind, or the database failed: reconnect (after its wait, if told)
CUT_OFF = 4429  # limits ignored again and again: final, unless its reason says when
# The server's default limit (``PARLEY_MAX_WS_MESSAGE_BYTES``). Past it the server may close
# before the frame is all written, and the client sees a reset, not 1009 (review G7): a
# command larger is refused before it is written.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# How long a socket the SDK closes (for a frame it cannot read, or ``close()``) waits for the
# server to finish the close before it is dropped: websockets waits 10 s by default, and a
# server that never answers held the reconnect that long. The TypeScript SDK's
# ``CLOSE_TIMEOUT_MS``.
CLOSE_TIMEOUT_S = 3.0
MAX_UNSOLICITED = 100
MAX_ID_CHARS = 128  # the server's bound on a command id
# Upgrades refused for good: retrying cannot help (the others, 429 and 503, are retried).
FINAL_STATUSES = frozenset({401, 403, 404})


class ConnectionState(StrEnum):
    CONNECTING = "connecting"  # no socket: opening one (first time or after a drop)
    SYNCING = "syncing"  # socket open, waiting for the document
    CONNECTED = "connected"  # in sync; updates stream in
    CLOSED = "closed"  # closed by us, or by the server for good (``closed_by``)


@dataclass(frozen=True, slots=True)
class Ack:
    """The server's acknowledgement of a command: stored (``seq`` for a prompt or message)
    or applied. ``data`` is the whole reply."""

    id: str
    seq: int | None
    data: dict[str, Any]

    @property
    def prompt_id(self) -> str | None:
        """The prompt a ``prompt`` stored (None: the ack of another command)."""
        return _id_of(self.data, "prompt_id")

    @property
    def message_id(self) -> str | None:
        """The message a ``message`` stored (None: the ack of another command)."""
        return _id_of(self.data, "message_id")


def _id_of(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How long to wait before opening the socket again: doubling from ``initial_s`` up to
    ``max_s`` (stock y-websocket: 2.5 s), back to ``initial_s`` after a sync."""

    initial_s: float = 0.1
    max_s: float = 2.5


RECONNECT = Reconnect()
SHOWN: Mapping[str, Any] = MappingProxyType({})  # present, with no state of one's own


@dataclass(slots=True)
class _Pending:
    payload: dict[str, Any]
    reply: asyncio.Future[Ack]
    waiters: int = 1  # calls waiting for the reply (a resend by id while it waits joins)
    written_on: int | None = None  # the socket (its number, ``connects``) last written to
    # Refused ``rate_limited`` so often, each time written again after its
    # ``retry_after_ms`` (review RH-2); ``resting`` until then.
    refusals: int = 0
    resting: bool = False


def _socket_url(url: str, session_id: str, token: str) -> str:
    base = url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    # ``commands=binary``: this client speaks commands (in binary frames), so the server
    # sends it the frames that answer no command from the start, after a reconnect too.
    path = f"{base}/ws/sessions/{quote(session_id, safe='')}"
    return f"{path}?token={quote(token, safe='')}&commands=binary"


class Session:
    """Use ``connect()``. The document, queue and presence are read-only views; change the
    session with the commands, which return the ack or raise the error's ``ParleyError``
    subclass (a ``SessionClosed`` if the session closes first)."""

    def __init__(
        self,
        url: str,
        session_id: str,
        token: str,
        *,
        presence: Mapping[str, Any] | None = SHOWN,
        reconnect: Reconnect | None = RECONNECT,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float | None = None,
        pacing: Pacing = PACING,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes: at least 1")
        if not close_timeout_s > 0:
            raise ValueError("close_timeout_s: more than 0")
        self.session_id = session_id
        self.max_message_bytes = max_message_bytes
        self._url = _socket_url(url, session_id, token)
        self._reconnect = reconnect
        self._connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self.command_timeout_s = command_timeout_s
        self.doc: Doc[Any] = Doc()
        self.state = ConnectionState.CONNECTING
        self.closed_by: SessionClosed | None = None  # why the session closed
        self.close_code: int | None = None  # of the last socket that closed
        self.restricted: dict[str, str] = {}  # entry id -> text only this member may read
        # This member's private side-threads as the server last sent them (docs/threads.md),
        # and the text of their replies as it streams (reply id -> text so far). A turn's
        # ``retry_at``: when a prompt a quota failed (and its reply) may be sent again, in
        # milliseconds since the epoch (UTC), as ``Entry.retry_at``; else None.
        self.threads: dict[str, dict[str, Any]] = {}
        self.thread_text: dict[str, str] = {}
        # Which replies of ``thread_text`` each thread's frames and deltas told of, and the
        # reply each thread streams now (its last delta's), to follow the stored turns.
        self._thread_replies: dict[str, set[str]] = {}
        self._streaming: dict[str, str] = {}
        self.unsolicited: deque[dict[str, Any]] = deque(maxlen=MAX_UNSOLICITED)
        self.connects = 0  # sockets opened so far
        self._pending: dict[str, _Pending] = {}
        self._ids = f"{secrets.token_hex(6)}-"
        self._next_id = 0
        self._socket: websockets.ClientConnection | None = None  # open, maybe not ready
        self._pacer = Pacer(pacing, time.monotonic())
        self._to_write = asyncio.Event()  # a command waits, or one was answered
        self._snapshot: Snapshot | None = Snapshot()
        self._peers: dict[int, tuple[int, Peer | None]] = {}  # client id -> (clock, peer)
        self._client_id = random.randrange(1, 2**32)
        self._clock = 0
        self._presence = _presence_state(presence)
        self._check_presence_size(self._presence)
        self.presence_refused: TooLarge | None = None  # the last state the server refused
        self._presence_written: tuple[int, int] = (0, 0)  # socket, its largest presence frame
        self._refused: ParleyError | None = None  # the last refusal at the upgrade
        self._open_by: float | None = None  # while opening: when ``open()`` gives up
        self._wakers: set[asyncio.Event] = set()
        self._synced = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and wait for the document (``connect_timeout_s``): raise the typed error
        of a refusal (a bad token: ``Unauthenticated``; an upgrade refused ``429`` or
        ``503`` whose ``Retry-After`` falls past the time left: ``RateLimited`` or
        ``Unavailable``, with ``retry_after``), or ``TimeoutError``."""
        self._open_by = time.monotonic() + self._connect_timeout_s
        self._runner = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self.wait_for(lambda s: s._synced.is_set() or s.closed)
        except TimeoutError as exc:
            refused = self._refused
            await self.close()
            if refused is not None:  # the last upgrade was refused: say why (review RK-4)
                raise refused from exc
            raise
        except BaseException:
            await self.close()
            raise
        finally:
            self._open_by = None
        if self.closed_by is not None:
            raise self.closed_by.cause or self.closed_by

    async def close(self) -> None:
        """Close the socket; commands still waiting for a reply raise ``SessionClosed``."""
        if self.closed_by is None:
            self._finish(SessionClosed("the session was closed"))
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def _finish(self, reason: SessionClosed) -> None:
        self.closed_by = reason
        self.state = ConnectionState.CLOSED
        for pending in self._pending.values():
            if not pending.reply.done():
                pending.reply.set_exception(reason.cause or reason)
        self._pending.clear()
        self._notify()

    async def _run(self) -> None:
        try:
            await self._reconnecting()
        except Exception as exc:  # a bug here must not leave commands waiting forever
            cause = InternalError(f"the SDK's connection loop failed: {exc!r}")
            self._finish(SessionClosed(str(cause), cause=cause))

    async def _reconnecting(self) -> None:
        delay = self._reconnect.initial_s if self._reconnect else 0.0
        while not self.closed:
            wait = await self._connection()
            if self.closed:
                return
            if self._reconnect is None:
                message = "the socket closed" if self._refused is None else str(self._refused)
                closed = SessionClosed(message, close_code=self.close_code, cause=self._refused)
                self._finish(closed)
                return
            if self._synced.is_set():
                delay = self._reconnect.initial_s  # it worked: start over
            self._synced.clear()
            self.state = ConnectionState.CONNECTING
            self._notify()
            pause = max(delay, wait)
            if self._refused is not None and self._past_opening(pause):
                # ``open()`` would time out before the next try: it raises the refusal now.
                cause = self._refused
                self._finish(SessionClosed(str(cause), cause=cause))
                return
            await asyncio.sleep(pause)
            delay = min(delay * 2, self._reconnect.max_s)

    def _past_opening(self, pause: float) -> bool:
        """Whether a try after ``pause`` comes too late for ``open()``, still waiting."""
        return self._open_by is not None and time.monotonic() + pause >= self._open_by

    async def _connection(self) -> float:
        """One socket from open to close; the least wait before the next (the server's
        ``retry_after_ms`` or ``Retry-After``). A final close finishes the session, as
        does an upgrade refused for good (401, 403, 404); the others are kept
        (``_refused``) for ``open()`` to raise."""
        try:
            ws = await websockets.connect(
                self._url,
                max_size=None,
                compression=None,
                proxy=None,
                open_timeout=10,
                close_timeout=self.close_timeout_s,
            )
        except InvalidStatus as exc:
            response = exc.response
            retry_after = response.headers.get("Retry-After")
            refusal = error_of_response(
                response.status_code, response.body, retry_after=retry_after
            )
            if response.status_code in FINAL_STATUSES:
                self._finish(SessionClosed(str(refusal), cause=refusal))
                return 0.0
            self._refused = refusal
            return refusal.retry_after or 0.0
        except (OSError, TimeoutError, websockets.InvalidHandshake):
            return 0.0
        self._refused = None
        self.connects += 1
        self._socket = ws
        self.state = ConnectionState.SYNCING
        self._notify()
        renew = asyncio.create_task(self._renew_presence(ws))
        writer: asyncio.Task[None] | None = None
        try:
            await ws.send(wire.encode_sync(wire.STEP1, self.doc.get_state()))
            if self._presence is not None:
                await ws.send(self._presence_frame())
            writer = asyncio.create_task(self._write_commands(ws, self.connects))
            async for frame in ws:
                try:
                    answer = self._on_frame(frame)
                except UNDECODABLE as exc:  # FrameError, bad JSON
                    # Not Parley on the other end, or a bug: start over on a fresh socket.
                    await ws.close(1002, f"undecodable frame: {exc}"[:120])
                    continue
                if answer is not None:
                    await ws.send(answer)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._socket = None
            # The others' states are the server's to give again (those who left meanwhile
            # are never announced to this client), as stock y-websocket clients drop them.
            # Its own is kept by its clock alone: the server tells everyone it left, so it
            # is not here until the server relays it again (review G6: ``here`` listed it).
            own = self._peers.get(self._client_id)
            self._peers = {} if own is None else {self._client_id: (own[0], None)}
            for task in (renew, writer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await task
        self.close_code = ws.close_code
        if ws.close_code == TOO_BIG:
            self._refuse_largest(self.connects)
        return self._after_close(ws.close_code, ws.close_reason or "")

    async def _write_commands(self, ws: websockets.ClientConnection, socket: int) -> None:
        """Write the commands waiting to ``socket`` for as long as it is open: those made
        while it was not, and those unanswered when the last one closed (resent by their
        ids: each is stored once), then each as it is made, in order, paced (``Pacer``)."""
        while True:
            self._to_write.clear()
            waiting = [pending for pending in self._pending.values() if not pending.resting]
            written_on = [pending.written_on for pending in waiting]
            count, wait_s = self._pacer.take(written_on, socket, time.monotonic())
            for pending in [p for p in waiting if p.written_on != socket][:count]:
                pending.written_on = socket
                await ws.send(wire.encode_command(pending.payload))
            if count:
                continue  # what changed while they were written is looked at again
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s or None):
                    await self._to_write.wait()

    def _refuse_largest(self, socket: int) -> None:
        """The server closed ``socket`` for a frame too big: the largest frame written to it
        is refused (``TooLarge``) rather than resent, which would close the next socket too.
        A command is blamed only when it was larger than the presence state written there
        (review RK-5: a state over the limit got three small prompts refused); else the
        state is refused (``presence_refused``) and this client shown with an empty one."""
        sizes = {
            key: len(wire.encode_command(p.payload))
            for key, p in self._pending.items()
            if p.written_on == socket
        }
        presence_socket, presence_bytes = self._presence_written
        if presence_socket == socket and presence_bytes >= max(sizes.values(), default=0):
            message = f"the presence state ({presence_bytes} bytes) is too large"
            self.presence_refused = TooLarge(message)
            self._presence = {}
            self._notify()
        elif sizes:
            largest = self._pending.pop(max(sizes, key=sizes.__getitem__))
            if not largest.reply.done():
                message = f"the command ({sizes[largest.payload['id']]} bytes) is too large"
                largest.reply.set_exception(TooLarge(message, command_id=largest.payload["id"]))

    def _after_close(self, code: int | None, reason: str) -> float:
        """What a close leaves: the least wait before the next socket, as a 1013's or a
        4429's reason says it (JSON ``retry_after_ms``; review FX69: a 4429 that says when
        is a "come back then", not the end, unless it does not reconnect); a final close
        finishes the session."""
        waits = code in (TRY_AGAIN, CUT_OFF) and self._reconnect is not None
        wait = close_wait(reason) if waits else None
        if code in FINAL_CLOSES and wait is None:
            cause = FINAL_CLOSES[code](reason or f"closed with {code}")
            self._finish(
                SessionClosed(f"closed with {code}: {reason}", close_code=code, cause=cause)
            )
            return 0.0
        return wait or 0.0

    # -- frames -------------------------------------------------------------------------

    def _on_frame(self, frame: str | bytes) -> bytes | None:
        """Take in one frame from the server; the frame to answer it with on the same
        socket, or None."""
        if isinstance(frame, str):
            self._on_reply(wire.decode_reply(frame))
            return None
        answer: bytes | None = None
        message = wire.decode_server_frame(frame)
        if isinstance(message, wire.SyncFrame):
            if message.sync_type == wire.STEP1:
                return None  # the server is the only writer: a client has nothing to give
            self.doc.apply_update(message.payload)
            self._snapshot = None
            if message.sync_type == wire.STEP2:
                self._synced.set()
                self.state = ConnectionState.CONNECTED
        elif isinstance(message, wire.AwarenessFrame):
            for item in message.states:
                known = self._peers.get(item.client_id)
                if known is not None and _stale(item, known[0]):
                    continue
                if item.client_id == self._client_id and item.state is None:
                    answer = self._shown_again(item.clock) or answer
                peer = None
                if item.state is not None:
                    stamp = item.state.get("parley")
                    user = stamp.get("user_id") if isinstance(stamp, dict) else None
                    peer = Peer(item.client_id, None if user is None else str(user), item.state)
                self._peers[item.client_id] = (item.clock, peer)
        elif isinstance(message, wire.CommandReply):
            self._on_reply(message.data)
        self._notify()
        return answer

    def _shown_again(self, left_at: int) -> bytes | None:
        """Told that this client left at clock ``left_at`` (it came back at or below the
        clock its leaving was told to the others at, who ignore it until it passes that):
        the frame that shows it again past it, as y-protocols' awareness does, or None when
        it is not to be shown or has shown itself past it already (review G6: the notice was
        let be, and everyone else saw the member gone until its renewal, 15 s later)."""
        if self._presence is None or left_at < self._clock:
            return None
        self._clock = left_at
        return self._presence_frame()

    def _on_reply(self, data: dict[str, Any]) -> None:
        kind, command_id = data.get("type"), data.get("id")
        # Read before the command is taken off the list: an ack that cannot be read leaves
        # its command waiting, resent by its id on the fresh socket the caller starts
        # (review SA F1: taken off first, a ``seq`` of ``"x"`` or ``1e400`` left its caller
        # waiting for good, even after the session closed).
        seq = _seq_of(data) if kind == "ack" and command_id in self._pending else None
        if kind == "error" and self._rest_after_refusal(data):
            return
        pending = self._pending.pop(command_id, None) if isinstance(command_id, str) else None
        if pending is not None:
            self._to_write.set()  # room for the next
        if pending is not None and isinstance(command_id, str) and not pending.reply.done():
            if kind == "ack":
                self._pacer.answered()
                pending.reply.set_result(Ack(command_id, seq, data))
            else:
                code, message = str(data.get("code")), str(data.get("message", ""))
                wait = wait_of(data)
                error = error_for(code, message, command_id=command_id, retry_after=wait)
                pending.reply.set_exception(error)
            return
        if kind == "restricted":
            self.restricted[str(data.get("entry_id"))] = str(data.get("text", ""))
        elif kind == "thread" and isinstance(data.get("thread"), dict):
            thread = data["thread"]
            self.threads[str(thread.get("id"))] = thread
            self._follow_stored_replies(thread)
        elif kind == "thread_deleted":
            thread_id = str(data.get("thread_id"))
            self.threads.pop(thread_id, None)
            for reply_id in self._thread_replies.pop(thread_id, ()):
                self.thread_text.pop(reply_id, None)
            self._streaming.pop(thread_id, None)
        elif kind == "thread_delta":
            thread_id = str(data.get("thread_id"))
            reply_id, text = str(data.get("reply_id")), str(data.get("text", ""))
            self._thread_replies.setdefault(thread_id, set()).add(reply_id)
            self._streaming[thread_id] = reply_id
            self.thread_text[reply_id] = _placed(
                self.thread_text.get(reply_id, ""), text, data.get("offset")
            )
        self.unsolicited.append(data)
        self._notify()

    def _follow_stored_replies(self, thread: dict[str, Any]) -> None:
        """``thread_text`` of a side-thread as its ``thread`` frame stores it: each stored
        reply's text as stored, and a reply streamed here that the thread no longer holds
        dropped (review rv37 F1: a reply cut by a crash is dropped from the thread, and
        its streamed text stayed here), except the one streaming now, while it runs (its
        frames are sent as the run goes, before its reply is stored)."""
        thread_id = str(thread.get("id"))
        stored = {
            str(turn.get("id")): str(turn.get("text", ""))
            for turn in thread.get("turns") or ()
            if isinstance(turn, dict) and turn.get("kind") == "reply"
        }
        streaming = self._streaming.get(thread_id) if thread.get("running") else None
        if streaming is None or streaming in stored:
            self._streaming.pop(thread_id, None)
            streaming = None
        for reply_id in self._thread_replies.get(thread_id, set()) - stored.keys():
            if reply_id != streaming:
                self.thread_text.pop(reply_id, None)
        self.thread_text.update(stored)
        self._thread_replies[thread_id] = set(stored) | ({streaming} if streaming else set())

    def _rest_after_refusal(self, data: dict[str, Any]) -> bool:
        """A command refused ``rate_limited`` with ``retry_after_ms`` (a member's budget
        spans their sockets, this pacing one socket: review RH-2) waits that long and is
        written again by its id (it was not stored), nothing new meanwhile, and the pacing
        slows down; refused ``MAX_RATE_RETRIES`` times, it raises. Whether it waits."""
        pending = self._pending.get(str(data.get("id")))
        if pending is None or pending.reply.done():
            return False
        refusal = error_for(str(data.get("code")), "", retry_after=wait_of(data))
        wait = rate_wait(refusal, pending.refusals)
        if wait is None:
            return False
        pending.refusals += 1
        pending.resting = True
        self._pacer.pause(time.monotonic() + wait)

        def again() -> None:
            pending.resting = False
            pending.written_on = None
            self._to_write.set()

        asyncio.get_running_loop().call_later(wait, again)
        self._to_write.set()  # room for the next, once the pause is over
        return True

    # -- commands -----------------------------------------------------------------------

    def new_id(self) -> str:
        self._next_id += 1
        return f"{self._ids}{self._next_id}"

    async def command(
        self, kind: str, *, id: str | None = None, timeout_s: float | None = None, **fields: Any
    ) -> Ack:
        """Send one command (docs/websocket.md: "Commands") and wait for its reply: the ack, or the
        error's typed exception. Pass ``id`` to resend a command by its id. No reply within
        ``timeout_s`` (None: the session's ``command_timeout_s``; None there: no bound) raises
        ``CommandTimeout``, which holds the command to ``resend``."""
        if self.closed_by is not None:
            raise self.closed_by
        if id is not None:
            _check_id(id)
        payload = {"type": kind, "id": self.new_id() if id is None else id, **fields}
        try:
            size = len(wire.encode_command(payload))  # refused here, not when (re)sent
        except UnicodeEncodeError:
            message = "a text is not valid Unicode (a lone surrogate)"
            raise error_for("invalid", message, command_id=payload["id"]) from None
        except ValueError as exc:  # a NaN or an infinity: not JSON, the server cannot read it
            message = f"the command is not JSON: {exc}"
            raise error_for("invalid", message, command_id=payload["id"]) from None
        if size > self.max_message_bytes:
            limit = f"the server's message limit ({self.max_message_bytes} bytes)"
            message = f"the command ({size} bytes) exceeds {limit}"
            raise error_for("too_large", message, command_id=payload["id"])
        waiting = self._pending.get(payload["id"])
        if waiting is not None and not waiting.reply.done():
            # Resent by its id while its first send still waits (review: the second call
            # took the first one's place, and the first waited for good): one reply for both.
            if waiting.payload != payload:
                message = "this command id waits for its reply to another command"
                raise error_for("conflict", message, command_id=payload["id"])
            pending = waiting
            pending.waiters += 1
        else:
            reply: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            pending = _Pending(payload, reply)
            self._pending[payload["id"]] = pending
            self._to_write.set()  # written once a socket is open, and its turn comes
        try:
            bound = self.command_timeout_s if timeout_s is None else timeout_s
            try:
                async with asyncio.timeout(bound):
                    return await asyncio.shield(pending.reply)
            except TimeoutError:
                if pending.reply.done():  # answered as the time ran out
                    return pending.reply.result()
                message = f"no reply to {kind} {payload['id']} within {bound} s; not resent"
                raise CommandTimeout(message, command=payload) from None
        finally:
            pending.waiters -= 1
            if not pending.reply.done() and pending.waiters == 0:
                # Given up (cancelled) by every caller: not resent.
                if self._pending.get(payload["id"]) is pending:
                    del self._pending[payload["id"]]
                    self._to_write.set()  # room for the next, if it was written
                pending.reply.cancel()

    async def resend(self, command: Mapping[str, Any], *, timeout_s: float | None = None) -> Ack:
        """Send ``command`` (a ``CommandTimeout``'s: ``type``, ``id`` and its fields) again by
        its id: a command the server stored is answered with its first ack."""
        fields = dict(command)
        kind, command_id = str(fields.pop("type")), str(fields.pop("id"))
        return await self.command(kind, id=command_id, timeout_s=timeout_s, **fields)

    async def prompt(self, text: str, *, id: str | None = None) -> Ack:
        """Ask the model; the ack's ``prompt_id`` names the prompt in the transcript."""
        return await self.command("prompt", id=id, text=text)

    async def message(self, text: str, *, id: str | None = None) -> Ack:
        """Talk to the other members (the model sees it later, as history)."""
        return await self.command("message", id=id, text=text)

    async def cancel(self, prompt_id: str, *, id: str | None = None) -> Ack:
        return await self.command("cancel", id=id, prompt_id=prompt_id)

    async def pin(self, entry_id: str, *, id: str | None = None) -> Ack:
        return await self.command("pin", id=id, entry_id=entry_id)

    async def unpin(self, entry_id: str, *, id: str | None = None) -> Ack:
        return await self.command("unpin", id=id, entry_id=entry_id)

    async def set_fact(self, key: str, value: str | None, *, id: str | None = None) -> Ack:
        """Set a session fact (``None`` removes it)."""
        return await self.command("set_fact", id=id, key=key, value=value)

    async def set_policy(self, policy: str, *, id: str | None = None) -> Ack:
        """``queue``, ``coalesce``, ``interrupt`` or ``reject`` (owners)."""
        return await self.command("set_policy", id=id, policy=policy)

    # -- private side-threads (docs/threads.md) ------------------------------------------------

    async def open_thread(
        self, *, anchor: str | None = None, title: str = "", id: str | None = None
    ) -> Ack:
        """Open a private side-thread, its context the session up to ``anchor`` (an entry
        id; None: now); the ack's ``data["thread_id"]`` names it."""
        fields: dict[str, Any] = {"title": title}
        if anchor is not None:
            fields["anchor"] = anchor
        return await self.command("thread_open", id=id, **fields)

    async def thread_prompt(self, thread_id: str, text: str, *, id: str | None = None) -> Ack:
        """Ask in a side-thread: answered to this member alone (``data["reply_id"]``)."""
        return await self.command("thread_prompt", id=id, thread_id=thread_id, text=text)

    async def thread_summarise(self, thread_id: str, *, id: str | None = None) -> Ack:
        """Ask for a draft summary of the side-thread to share (its next reply)."""
        return await self.command("thread_summarise", id=id, thread_id=thread_id)

    async def thread_share(
        self,
        thread_id: str,
        *,
        text: str | None = None,
        turn_ids: list[str] | None = None,
        id: str | None = None,
    ) -> Ack:
        """Post ``text`` (an edited summary) or the picked replies ``turn_ids`` into the
        session as this member's message (``RestrictedShare`` if it draws on what not
        every member may read, under the session's ``restricted_replies: private``)."""
        fields: dict[str, Any] = {"text": text} if turn_ids is None else {"turn_ids": turn_ids}
        return await self.command("thread_share", id=id, thread_id=thread_id, **fields)

    async def close_thread(
        self, thread_id: str, *, delete: bool = False, id: str | None = None
    ) -> Ack:
        kind = "thread_delete" if delete else "thread_close"
        return await self.command(kind, id=id, thread_id=thread_id)

    async def thread_answer(self, thread_id: str) -> dict[str, Any] | None:
        """Wait until no reply is being written in the side-thread; its last turn then
        (None if the side-thread is gone): a reply a quota failed tells ``retry_at``."""

        def idle(session: Session) -> bool:
            thread = session.threads.get(thread_id)
            return thread is None or not thread["running"]

        await self.wait_for(idle)
        thread = self.threads.get(thread_id)
        return None if thread is None or not thread["turns"] else dict(thread["turns"][-1])

    @property
    def unacknowledged(self) -> list[str]:
        """Ids of the commands sent and not yet answered (resent after a reconnect)."""
        return list(self._pending)

    # -- the document -------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = Snapshot.of(self.doc)
        return self._snapshot

    @property
    def transcript(self) -> tuple[Entry, ...]:
        return self.snapshot.entries

    @property
    def queue(self) -> tuple[QueuedPrompt, ...]:
        return self.snapshot.queue

    def entry(self, entry_id: str) -> Entry | None:
        return self.snapshot.entry(entry_id)

    def position(self, prompt_id: str) -> int | None:
        """The prompt's place in the queue (1: next), or None if it is not waiting."""
        return self.snapshot.position(prompt_id)

    def reply_to(self, prompt_id: str) -> Entry | None:
        prompt = self.entry(prompt_id)
        return None if prompt is None or prompt.reply_id is None else self.entry(prompt.reply_id)

    async def answer(self, prompt_id: str) -> Entry | None:
        """Wait until the prompt has ended and its reply (if it got one) is complete; the
        reply, or None when the prompt ended without one (cancelled while queued, …)."""

        def ended(session: Session) -> bool:
            prompt = session.entry(prompt_id)
            if prompt is None or not prompt.settled:
                return False
            reply = session.reply_to(prompt_id)
            return prompt.reply_id is None or (reply is not None and reply.settled)

        await self.wait_for(ended)
        return self.reply_to(prompt_id)

    # -- presence -----------------------------------------------------------------------

    @property
    def peers(self) -> tuple[Peer, ...]:
        """Everyone present (each awareness client), this socket included."""
        return tuple(peer for _, peer in self._peers.values() if peer is not None)

    @property
    def here(self) -> list[str]:
        """The user ids present, sorted."""
        return sorted({p.user_id for p in self.peers if p.user_id is not None})

    @property
    def typing(self) -> list[str]:
        return sorted({p.user_id for p in self.peers if p.typing and p.user_id is not None})

    async def set_presence(self, state: Mapping[str, Any] | None) -> None:
        """Show this state to the others (None: not present any more); ``InvalidInput``
        for one that is not JSON (a NaN or an infinity), ``TooLarge`` for one whose frame
        is over ``max_message_bytes``, before anything is sent (the state shown is kept)."""
        presence = _presence_state(state)
        self._check_presence_size(presence)
        self._presence, self.presence_refused = presence, None
        if self._socket is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._socket.send(self._presence_frame())

    async def set_typing(self, typing: bool) -> None:
        await self.set_presence({**(self._presence or {}), "typing": typing})

    def _check_presence_size(self, presence: dict[str, Any] | None) -> None:
        """``TooLarge`` for a state whose frame is over ``max_message_bytes``: the server
        would close the socket 1009, and every next one it is sent again to (review RK-5)."""
        if presence is None:
            return
        frame = wire.encode_awareness(
            [wire.AwarenessState(self._client_id, self._clock + 1, presence)]
        )
        if len(frame) > self.max_message_bytes:
            limit = f"the server's message limit ({self.max_message_bytes} bytes)"
            raise TooLarge(f"the presence state ({len(frame)} bytes) exceeds {limit}")

    def _presence_frame(self) -> bytes:
        """The frame of this client's state at the next clock, to write to the socket now
        open (its size kept: a close 1009 may be the state's)."""
        self._clock += 1
        frame = wire.encode_awareness(
            [wire.AwarenessState(self._client_id, self._clock, self._presence)]
        )
        if self._presence is not None:
            socket, largest = self._presence_written
            largest = max(largest, len(frame)) if socket == self.connects else len(frame)
            self._presence_written = (self.connects, largest)
        return frame

    async def _renew_presence(self, ws: websockets.ClientConnection) -> None:
        """Renew the presence state (the others drop a state not renewed in 30 s); not
        shown, send an update of no states, so the server does not close an idle socket."""
        while True:
            await asyncio.sleep(PRESENCE_RENEW_S)
            present = self._presence is not None
            await ws.send(self._presence_frame() if present else wire.encode_awareness([]))

    # -- waiting for changes ------------------------------------------------------------

    def _notify(self) -> None:
        for waker in self._wakers:
            waker.set()

    async def wait_for(self, predicate: Callable[[Session], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change); bound it with
        ``asyncio.timeout``. Raises ``SessionClosed`` if the session closes first."""
        waker = asyncio.Event()
        self._wakers.add(waker)
        try:
            while True:
                waker.clear()
                if predicate(self):
                    return
                if self.closed_by is not None:
                    raise self.closed_by
                await waker.wait()
        finally:
            self._wakers.discard(waker)

    async def changes(self) -> AsyncIterator[Change]:
        """Transcript and queue changes, from now on, until the session closes. A slow
        consumer gets the changes it missed merged into one (nothing piles up)."""
        seen = self.snapshot
        waker = asyncio.Event()
        self._wakers.add(waker)
        try:
            while True:
                waker.clear()
                change = diff(seen, self.snapshot)
                if change is not None:
                    seen = change.snapshot
                    yield change
                    continue
                if self.closed:
                    return
                await waker.wait()
        finally:
            self._wakers.discard(waker)


def connect(
    url: str,
    session_id: str,
    token: str,
    *,
    presence: Mapping[str, Any] | None = SHOWN,
    reconnect: Reconnect | None = RECONNECT,
    connect_timeout_s: float = 10.0,
    command_timeout_s: float | None = None,
    pacing: Pacing = PACING,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    close_timeout_s: float = CLOSE_TIMEOUT_S,
) -> Session:
    """A session to use as ``async with connect(...) as session``. ``url`` is the server's
    base (``ws://host:port`` or ``http://host:port``); ``presence`` the awareness state to
    show (default: an empty state, so the member is listed as here; None: not shown);
    ``reconnect=None`` ends the session when its socket closes; ``command_timeout_s`` bounds
    each command's wait for its reply (``CommandTimeout``; None: no bound); ``pacing`` how
    fast commands go out (``Pacing``: the server's default command budget);
    ``max_message_bytes`` the server's message limit (``PARLEY_MAX_WS_MESSAGE_BYTES``, its
    default here): a command whose frame is larger raises ``TooLarge`` before it is sent;
    ``close_timeout_s`` how long a socket this client closes waits for the server to finish
    the close before it is dropped (and, for one closed over a frame it could not read,
    a new one opened)."""
    return Session(
        url,
        session_id,
        token,
        presence=presence,
        reconnect=reconnect,
        connect_timeout_s=connect_timeout_s,
        command_timeout_s=command_timeout_s,
        pacing=pacing,
        max_message_bytes=max_message_bytes,
        close_timeout_s=close_timeout_s,
    )


def _presence_state(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``state`` as it is sent, a copy (what the caller changes in it later is not sent);
    ``InvalidInput`` for one the server would refuse as not JSON (a NaN or an infinity,
    which closed the socket 4400, and the session for good: review), before anything is
    sent."""
    if state is None:
        return None
    try:
        text = wire.strict_json(dict(state))
    except ValueError as exc:
        raise error_for("invalid", f"the presence state is not JSON: {exc}") from None
    copied: dict[str, Any] = json.loads(text)
    return copied


# What reading a frame that is not as the protocol says raises: a ``FrameError``, bad JSON
# (a ``ValueError``), JSON nested past the interpreter's limit (``RecursionError``: review
# SA F2, one awareness frame closed the session for good), a number past a float's range.
UNDECODABLE = (ValueError, KeyError, TypeError, OverflowError, RecursionError)


# The largest integer a JSON number holds exactly where it is read as a double (the
# TypeScript SDK's ``Number.isSafeInteger``).
MAX_SAFE_INTEGER = 2**53 - 1


def _seq_of(ack: dict[str, Any]) -> int | None:
    """An ack's ``seq`` (None: it has none); ``ValueError`` when it is no JSON number that
    is a safe integer, as the TypeScript SDK reads it (``seqOf``: ``7.0`` is 7 there, a
    string ``"7"`` is refused; FX44: it was taken here)."""
    seq = ack.get("seq")
    if seq is None:
        return None
    whole = isinstance(seq, int) or (isinstance(seq, float) and seq.is_integer())
    if isinstance(seq, bool) or not whole or abs(seq) > MAX_SAFE_INTEGER:
        raise ValueError(f"an ack's seq is no whole number: {seq!r}"[:80])
    return int(seq)


def _stale(item: wire.AwarenessState, clock: int) -> bool:
    """Whether ``item`` changes nothing for a client known at ``clock``: an older clock,
    or a state at the same clock (y-protocols: only a leaving may replace a state at its
    clock; review G6: a member's state at the clock of their leaving was shown here, and by
    no Yjs client)."""
    return item.clock < clock or (item.clock == clock and item.state is not None)


def _check_id(command_id: object) -> None:
    """Refuse, before sending, an id the server would refuse (docs/websocket.md): its error
    could not name the command (review: ``id=""`` was replaced by a fresh id, so a resend
    stored the command twice; ``id=5`` waited for a reply that came with ``"id": null``)."""
    if not isinstance(command_id, str) or not command_id.strip():
        raise error_for("invalid", "'id' must be a non-empty string")
    if len(command_id) > MAX_ID_CHARS:
        raise error_for("invalid", f"'id' exceeds {MAX_ID_CHARS} characters")


def _placed(so_far: str, text: str, offset: object) -> str:
    """A streamed reply's text with ``text`` placed at ``offset`` (the characters before
    it): a delta seen before (a socket's greeting resends the text so far) changes nothing,
    and one after a gap (deltas missed while reconnecting) waits for the stored reply (its
    ``thread`` frame) rather than run the text on. No offset (an older server): appended."""
    if not isinstance(offset, int) or isinstance(offset, bool):
        return so_far + text
    if offset > len(so_far) or offset + len(text) <= len(so_far):
        return so_far
    return so_far[:offset] + text
