"""Every frame a client sends is counted, whatever it carries.

uvicorn's WebSocket protocol parses with websockets' sans-I/O ``ServerProtocol``, which
parses every frame of a read in one loop and limits only a message's bytes
(``PARLEY_MAX_WS_MESSAGE_BYTES``). A frame that adds no bytes costs as much to parse:
one client with no valid token sent a text fragment and then empty continuation frames
(6 bytes each, 4.5 million in 10 s), which never completed the message and which no
rate counted, and the node answered nobody for as long as it sent; unsolicited empty
pongs did the same (review RD-1). Here:

- a message may come in ``FREE_FRAGMENTS`` frames, and one more per ``FRAGMENT_BYTES``
  it holds; past that it is closed 1009, as a message over the size limit is. Stock
  clients send a message in one frame, except Chromium's over 64 KiB, in pieces as large
  as its pipe to the network process holds (128 kB; 64 KiB on Android), and websockets'
  given an iterable;
- every frame of a socket, the control frames and those read while it closes included,
  is charged to a budget of ``FRAME_RATE``; past it the socket is closed 4429, as a
  client that ignores its limits is, its reason saying when to come back (JSON:
  ``retry_reason``; once the budget is whole again). A close frame is always taken: it
  ends the reading.

A refusal takes effect inside the parser's loop, as a close frame does in websockets:
the loop stops at the frame over the limit, what else was read is dropped unparsed, and
the connection is closed (``LeanWebSocketProtocol.handle_parser_exception``).
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from parley.server.http.retry_hint import retry_reason
from parley.session.errors import ErrorCode, ParleyError, RateLimited, TooLarge, close_code_for
from parley.session.ratelimit import Rate, TokenBucket

FREE_FRAGMENTS = 64
FRAGMENT_BYTES = 1024
# Far above what the app lets a socket send (``PARLEY_UPDATES_PER_SECOND``, 50 a second
# with a burst of 200, and 10 commands a second), so its own refusals come first; 1,000
# empty frames take the parser about 2 ms.
FRAME_RATE = Rate(per_second=200.0, burst=1000)
# How long the budget takes to fill again from empty: the wait a 4429's reason tells.
REFILL_S = FRAME_RATE.burst / FRAME_RATE.per_second


class FrameLimitedProtocol(ServerProtocol):
    """websockets' server protocol, refusing frames past the limits above: it fails the
    connection with the refusal's close code and sets ``parser_exc`` to the refusal (a
    ``TooLarge`` or ``RateLimited``), as it does for a frame it cannot parse."""

    __slots__ = ("_fragments", "_frames", "_left")  # beside the base's dictionary, not in it

    def __init__(self, **kwargs: Any) -> None:
        self._fragments = 0  # frames of the message being read
        self._frames = TokenBucket(FRAME_RATE, monotonic())
        self._left = 0  # frames the budget allows in the read being parsed
        super().__init__(**kwargs)

    def receive_data(self, data: bytes | bytearray) -> None:
        # The budget is read once a read, and paid after it: a frame costs a decrement
        # (charged one by one, the budget added half to a frame's parsing).
        now = monotonic()
        self._left = allowed = int(self._frames.left(now))
        try:
            super().receive_data(data)
        finally:
            self._frames.spend(now, allowed - max(self._left, 0))

    def recv_frame(self, frame: Frame) -> None:
        refusal = self._refusal(frame)
        if refusal is None:
            super().recv_frame(frame)
            return
        # Fails the connection: a close frame (none yet while the handshake is unanswered,
        # none again while closing), the end of the stream, and the rest of the read and
        # every later one dropped (``discard``). The loop that called this then waits for
        # data that ``parse``'s successor reads.
        reason = refusal.message
        if isinstance(refusal, RateLimited):  # when to come back: the budget whole again
            reason = retry_reason(reason, REFILL_S, ErrorCode.RATE_LIMITED)
        self.fail(close_code_for(refusal), reason)
        self.parser_exc = refusal

    def _refusal(self, frame: Frame) -> ParleyError | None:
        opcode = frame.opcode
        if opcode is Opcode.CLOSE:
            return None
        self._left -= 1
        if self._left < 0:
            rate = self._frames.rate
            return RateLimited(
                f"more than {rate.burst:.0f} frames at once, or {rate.per_second:.0f} a second"
            )
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fragments = 1
        elif opcode is Opcode.CONT and self.current_size is not None:
            self._fragments += 1
            held = self.current_size + len(frame.data)
            if self._fragments > FREE_FRAGMENTS + held // FRAGMENT_BYTES:
                return TooLarge(
                    f"a message in more than {FREE_FRAGMENTS} frames"
                    f" and one per {FRAGMENT_BYTES} bytes it holds"
                )
        return None
