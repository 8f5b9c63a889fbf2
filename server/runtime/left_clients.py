"""The awareness client ids that left this node's sockets, written to the store off the
sockets' path, so each stays its member's (``session.presence``) across an unload, a
restart and the other nodes.

A socket's close hands its clients here (``add``: no await, no database); one task writes
what gathered in rounds, at most one every ``delay_s``, one transaction per session. A
client id that leaves again before its write replaces what waited of it; at most
``max_waiting`` wait, the oldest dropped past that (logged). A room being loaded reads the
store and what still waits here (``unwritten``). The database refusing a round is logged,
and what it held is tried again after ``retry_s``: presence never holds up or fails a
session. What waits when the process is killed is lost (at most one round's worth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from parley.server.store.port import SessionStore
from parley.session.errors import NotFound, Unavailable
from parley.session.presence import LeftClient

log = logging.getLogger("parley.presence")

_Key = tuple[str, int]  # (session id, client id)


class LeftClientWriter:
    def __init__(
        self,
        store: SessionStore,
        clock: Callable[[], float],
        *,
        delay_s: float,
        retry_s: float,
        max_waiting: int,
    ) -> None:
        self.store = store
        self.clock = clock
        self.delay_s = delay_s
        self.retry_s = retry_s
        self.max_waiting = max_waiting
        self._waiting: dict[_Key, LeftClient] = {}  # oldest first
        self._writing: dict[_Key, LeftClient] = {}  # the round under way
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0  # past ``max_waiting`` since the last round (logged with it)
        self._refused = False  # the last round was refused (logged once, until one is not)

    def add(self, session_id: str, left: Sequence[LeftClient]) -> None:
        """Write ``left``, clients of ``session_id`` that left this node's sockets, soon."""
        if not left:
            return
        for item in left:
            key = (session_id, item.client_id)
            self._waiting.pop(key, None)  # to the end: the newest
            self._waiting[key] = item
        self._bound()
        self._wake.set()
        if self._task is None and not self._closing.is_set():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="left-clients")

    def _bound(self) -> None:
        """At most ``max_waiting`` wait: the oldest go past it."""
        while len(self._waiting) > self.max_waiting:
            del self._waiting[next(iter(self._waiting))]
            self._dropped += 1

    def unwritten(self, session_id: str) -> list[LeftClient]:
        """The clients of ``session_id`` handed here and not yet written."""
        rounds = (self._writing, self._waiting)
        return [item for held in rounds for (s, _), item in held.items() if s == session_id]

    async def close(self, timeout_s: float) -> None:
        """Write what waits (the server shuts down), for at most ``timeout_s``; then stop."""
        self._closing.set()
        self._wake.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = len(self._writing) + len(self._waiting)
        if left:
            log.warning("presence: client ids that left not written at shutdown", extra={"n": left})

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._pause(self.delay_s)  # what leaves meanwhile goes in this round
            written = await self._write_round()
            if self._closing.is_set() and (not written or not self._waiting):
                return
            if not written:
                await self._pause(self.retry_s)
            if self._waiting:
                self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until the server shuts down."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _write_round(self) -> bool:
        """Write what waits, a transaction per session; False if the database refused (what
        it was not given waits again, behind nothing newer of the same client)."""
        if self._dropped:
            log.warning(
                "presence: client ids that left dropped unwritten, past the most that wait",
                extra={"n": self._dropped},
            )
            self._dropped = 0
        self._writing, self._waiting = self._waiting, {}
        by_session: dict[str, list[LeftClient]] = {}
        for (session_id, _), item in self._writing.items():
            by_session.setdefault(session_id, []).append(item)
        now = round(self.clock() * 1000)
        try:
            for session_id, left in by_session.items():
                try:
                    async with self.store.transaction("presence") as tx:
                        await tx.keep_left_clients(session_id, left, now)
                except NotFound:
                    pass  # the session was deleted meanwhile: nothing to keep
                for item in left:
                    del self._writing[(session_id, item.client_id)]
        except Unavailable as exc:
            if not self._refused:  # (each refusal is logged by the store's health, paced)
                log.warning(
                    "presence: the database refused the client ids that left; trying again",
                    extra={"error": exc.message, "n": len(self._writing)},
                )
            self._refused = True
            held = {k: v for k, v in self._writing.items() if k not in self._waiting}
            self._waiting = {**held, **self._waiting}  # in front of what left since
            self._writing = {}
            self._bound()
            return False
        except Exception:
            # Not the database's fault: the round is lost, never the task.
            log.exception("presence: the client ids that left could not be written")
            self._writing = {}
        if self._refused:
            self._refused = False
            log.warning("presence: the client ids that left are written again")
        return True
