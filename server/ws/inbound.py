"""A member's budget of bytes the server reads from their sockets to one session.

Every other budget charges a frame once it is read and decoded; reading it (and unmasking
it, and gathering a large message) is a cost of its own, paid on the event loop before any
judgement. A viewer's 16 sockets, each sending 4 MB frames as fast as the kernel took them,
made the server read 192 MB in a second or so, and another member's acks (another session)
waited up to a second behind it (review R2-1). ``InboundMeter`` counts the bytes read from
one member's sockets to one session on this node (its own and its side-threads'), at
``PARLEY_INBOUND_BYTES_PER_S`` after a burst of ``PARLEY_INBOUND_BURST_BYTES``. Past it the
server reads no more from them until the budget refills: not a refusal, backpressure. TCP's
flow control then holds the sender at no cost to the server, and a client just sees its
sends slow down.

Under ``parley serve`` the socket's protocol (``server.ws.uvicorn_protocol``) counts each
chunk it reads (``over``: an addition and a comparison while within the budget) and pauses
its transport when past it; one loop timer per member in debt resumes them all once it is
paid (``Reader``). Under another ASGI server, which reads ahead of the app by itself, the
socket's handler counts each message it takes and waits for the refill before taking the
next (``refilled``): the server reads on until its own queue of messages is full, then its
flow control holds the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from parley.session.ratelimit import Rate


class Reader(Protocol):
    """A socket whose reading a meter holds back: it paused its own reading when the
    meter said so (``over``), and resumes it when told (``release_reading``), unless it
    holds it paused for a reason of its own."""

    def release_reading(self) -> None: ...


class InboundMeter:
    """One member's bytes read in one session (on this node). ``clock``: the loop's (the
    protocol compares its own times with ``short_at``)."""

    __slots__ = (
        "_counted",
        "_held",
        "_refill",
        "_timer",
        "_tokens",
        "_unpaid",
        "_updated",
        "clock",
        "on_short",
        "rate",
        "short_at",
    )

    def __init__(
        self,
        rate: Rate,
        clock: Callable[[], float],
        on_short: Callable[[], None] | None = None,
    ) -> None:
        if rate.per_second <= 0:
            raise ValueError("an inbound rate must be positive")
        self.rate = rate
        self.clock = clock
        self.on_short = on_short  # each time the member goes past the budget
        self._tokens = rate.burst  # as of ``_updated``, before ``_unpaid``
        self._updated = clock()
        self._unpaid = 0  # bytes read since ``_updated``
        self._counted = 0  # bytes read before ``_updated``
        # The readers held back, made at the first hold (a meter within its budget holds
        # none), and the refill's timer and waiters while in debt.
        self._held: set[Reader] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refill: asyncio.Future[None] | None = None
        self.short_at = -float("inf")  # when the member was last seen past the budget

    @property
    def read_bytes(self) -> int:
        """Every byte counted so far."""
        return self._counted + self._unpaid

    def over(self, size: int) -> bool:
        """Count ``size`` bytes read; True when the member is past the budget: read no
        more from the socket until it refills (``hold``). The hot path: within what the
        budget held at its last look, no clock is read."""
        unpaid = self._unpaid + size
        self._unpaid = unpaid
        return unpaid > self._tokens and self._settle() < 0

    def short(self) -> bool:
        """Whether the member is past the budget now."""
        return self._settle() < 0

    def _settle(self) -> float:
        """Refill to now and pay what was read: the tokens left (below 0: in debt)."""
        now = self.clock()
        rate = self.rate
        refilled = self._tokens + max(0.0, now - self._updated) * rate.per_second
        tokens = min(rate.burst, refilled) - self._unpaid
        was_short = self._tokens < 0
        self._counted += self._unpaid
        self._tokens, self._unpaid, self._updated = tokens, 0, now
        if tokens < 0:
            self.short_at = now
            if not was_short and self.on_short is not None:
                self.on_short()
        return tokens

    def hold(self, reader: Reader) -> None:
        """``reader`` paused its reading (``over`` said so): tell it to resume once the
        budget is paid back."""
        if self._held is None:
            self._held = set()
        self._held.add(reader)
        self._arm()

    def holds(self, reader: Reader) -> bool:
        held = self._held
        return held is not None and reader in held

    def forget(self, reader: Reader) -> None:
        """``reader`` is gone (its connection lost)."""
        if self._held is not None:
            self._held.discard(reader)

    async def refilled(self) -> None:
        """Return once the member is within the budget (at once if they are)."""
        while self.short():
            if self._refill is None or self._refill.done():
                self._refill = asyncio.get_running_loop().create_future()
            self._arm()
            await asyncio.shield(self._refill)

    def _arm(self) -> None:
        if self._timer is not None:
            return
        wait_s = max(0.0, -self._tokens / self.rate.per_second)
        self._timer = asyncio.get_running_loop().call_later(wait_s, self._paid)

    def _paid(self) -> None:
        self._timer = None
        if self._settle() < 0:  # read more meanwhile (a socket not held yet)
            self._arm()
            return
        held, self._held = self._held, None
        for reader in held or ():
            reader.release_reading()
        refill, self._refill = self._refill, None
        if refill is not None and not refill.done():
            refill.set_result(None)
