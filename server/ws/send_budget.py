"""The process's budget of unsent bytes: one cap over every socket, and a deadline for
sockets whose client stopped taking what is sent.

A client that stops reading leaves its frames in the server's memory (a transport's write
buffer under ``parley serve``, a connection's outbox elsewhere). The per-socket cap
(``send_buffer_max_bytes``) bounds one such client, not twenty; and a backlog under that cap
would stay for as long as the client kept its socket open. ``SendBudget`` watches every
socket that has a backlog:

- before a frame is written, ``admit`` checks that the process may hold it. Past
  ``total_max_bytes`` it drops sockets, worst first, until the frame fits: the one that has
  gone longest without taking a byte, then the one holding most. The new frame ranks as
  just having made progress, so a stalled socket goes before a fresh send is refused; if
  the sender itself must go, ``admit`` answers False.
- a socket whose backlog has not shrunk by a byte for ``stall_timeout_s`` is dropped by a
  timer that runs while any socket has a backlog, including one that is already closing
  (its close frame waits behind the backlog): a close never waits on a dead peer for longer.

Dropping is the socket's own business (``Backlog.drop``): it frees the backlog at once and
never waits for the client. The budget holds no I/O of its own beyond that timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class DropReason(StrEnum):
    """Why a socket was given up on (a label of ``parley_send_drops_total``)."""

    SOCKET_LIMIT = "socket_limit"  # its own backlog would pass send_buffer_max_bytes
    TOTAL_LIMIT = "total_limit"  # every socket's unsent bytes would pass the process cap
    STALLED = "stalled"  # nothing taken for send_stall_timeout_s
    CLOSING = "closing"  # closed with a backlog too big to put a close frame behind


class Backlog(Protocol):
    """A socket as the budget sees it."""

    def unsent(self) -> int:
        """Bytes handed to this socket and not yet taken by its client."""

    def taken(self) -> int:
        """A count that grows whenever the client takes bytes. It may dip (a ping the
        server's protocol writes by itself), which is no progress."""

    def drop(self, reason: DropReason) -> None:
        """Give up on the client now: free its backlog without waiting for it."""


@dataclass(slots=True)
class _Watched:
    unsent: int
    taken: int
    progress_at: float  # when the client was last seen taking bytes


class SendBudget:
    def __init__(
        self,
        total_max_bytes: int,
        stall_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_max_bytes = total_max_bytes
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self._watched: dict[Backlog, _Watched] = {}
        # Unsent bytes across every socket, as last seen (refreshed by ``refresh``): the sum
        # of the watched backlogs. Read, never set, from outside (the fan-out's lean path
        # compares it with the cap for every socket: an attribute, not a property).
        self.total = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def watching(self, sock: Backlog) -> bool:
        return sock in self._watched

    def admit(self, sock: Backlog, size: int) -> bool:
        """Before ``size`` more bytes go to ``sock``: may the process hold them? Past the
        cap, drops sockets worst first until they fit; False if ``sock`` was dropped."""
        if self.total + size <= self.total_max_bytes:
            return True
        now = self._clock()
        self.refresh(now)  # buffers drain between looks: count what is left now
        if self.total + size <= self.total_max_bytes:
            return True
        mine = self._watched.get(sock)
        ranked = [(w.progress_at, -w.unsent, id(s), s) for s, w in self._watched.items()]
        ranked = [r for r in ranked if r[3] is not sock]
        ranked.append((now, -((mine.unsent if mine else 0) + size), id(sock), sock))
        ranked.sort(key=lambda r: r[:3])
        excess = self.total + size - self.total_max_bytes
        for _, negative_unsent, _, worst in ranked:
            if excess <= 0:
                break
            excess += negative_unsent
            if worst is sock:
                self.forget(sock)
                sock.drop(DropReason.TOTAL_LIMIT)
                return False
            self.forget(worst)
            worst.drop(DropReason.TOTAL_LIMIT)
        return True

    def note(self, sock: Backlog) -> None:
        """After bytes went to ``sock`` (a frame, a close frame): watch its backlog while
        it has one."""
        unsent = sock.unsent()
        watched = self._watched.get(sock)
        if watched is None:
            if unsent == 0:
                return
            self._watched[sock] = _Watched(unsent, sock.taken(), self._clock())
            self.total += unsent
            self._arm()
            return
        self.total += unsent - watched.unsent
        watched.unsent = unsent

    def forget(self, sock: Backlog) -> None:
        """Stop counting ``sock`` (it was dropped: its backlog is gone)."""
        watched = self._watched.pop(sock, None)
        if watched is not None:
            self.total -= watched.unsent

    def refresh(self, now: float) -> list[Backlog]:
        """Look at every backlog again; returns the sockets stalled past the deadline."""
        stalled = []
        for sock, watched in list(self._watched.items()):
            unsent, taken = sock.unsent(), sock.taken()
            if taken > watched.taken:
                watched.progress_at = now
            watched.taken = taken
            self.total += unsent - watched.unsent
            watched.unsent = unsent
            if unsent == 0:
                del self._watched[sock]
            elif now - watched.progress_at >= self.stall_timeout_s:
                stalled.append(sock)
        return stalled

    def sweep(self) -> None:
        """The timer's tick: drop the stalled, and tick again while anything is backed up."""
        self._timer = None
        for sock in self.refresh(self._clock()):
            self.forget(sock)
            sock.drop(DropReason.STALLED)
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._watched and not self._closed:
            period = min(max(self.stall_timeout_s / 4, 0.05), 1.0)
            self._timer = asyncio.get_running_loop().call_later(period, self.sweep)

    def close(self) -> None:
        """Stop the timer (the app is shutting down)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
