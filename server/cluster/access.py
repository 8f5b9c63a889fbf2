"""Roles and tools changed over REST, in force on every node that runs a session before the
REST call returns.

Roles and tools belong to the whole server, not to one session, and every node keeps them in
memory. The node that stored a change asks all nodes to read them again (``parley_access``);
each answers with a digest of what it now has in force (``parley_access_seen``). The asking
node returns once every node holding a live session lease has answered with the digest of
what the store holds now, or raises ``Unavailable`` after ``forward_timeout_s``. A node that
stopped renewing its leases (dead, or paused) drops out of the wait: its lapsed leases are
fenced first, so it can never write under them again, only take a session afresh, which
reads roles and tools anew. The question is asked again every ``ASK_AGAIN_S``, so a lost
notification delays an answer and never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.cluster.lease import LeaseTable
from parley.session.errors import Unavailable

log = logging.getLogger("parley.cluster.access")

CHANNEL_ACCESS = "parley_access"  # payload: the asking node's id
CHANNEL_ACCESS_SEEN = "parley_access_seen"  # payload: "<node id> <digest in force there>"
ASK_AGAIN_S = 0.5


class AccessSync:
    def __init__(
        self,
        engine: AsyncEngine,
        node_id: str,
        reload: Callable[[], Awaitable[str]],
        leases: LeaseTable,
    ) -> None:
        """``reload`` reads roles and tools again and returns the digest now in force here."""
        self.engine = engine
        self.node_id = node_id
        self.reload = reload
        self.leases = leases
        self._seen: dict[str, str] = {}  # while a change waits: what each node answered
        self._waiting = 0
        self._answered = asyncio.Event()
        self._wanted = False
        self._answering: asyncio.Task[None] | None = None

    async def confirm(self, timeout_s: float) -> None:
        """Return once every node running a session has what the store holds now in force
        (this one included); ``Unavailable`` if one has not said so within ``timeout_s``."""
        self._waiting += 1
        deadline = time.monotonic() + timeout_s
        asked = float("-inf")
        try:
            while True:
                current = await self.reload()
                kept = {n for n, seen in self._seen.items() if seen == current} | {self.node_id}
                # Fenced before the holders are read: a lease found live afterwards was
                # renewed after the fence, so its holder is waited for.
                await self.leases.fence_lapsed(kept)
                behind = await self.leases.holders() - kept
                now = time.monotonic()
                if now - asked >= ASK_AGAIN_S:
                    # At once, so that every node reloads (not only those waited for), then
                    # again while some are behind, in case a notification was lost.
                    asked = now
                    await self._ask()
                if not behind:
                    return
                if now >= deadline:
                    raise Unavailable(
                        "the change is stored, but node(s) "
                        f"{', '.join(sorted(behind))} have not put it in force yet; send it again"
                    )
                self._answered.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(ASK_AGAIN_S, deadline - now)):
                        await self._answered.wait()
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._seen.clear()

    def on_asked(self, payload: str) -> None:
        """A node changed roles or tools: read them again and say what is in force here
        (one reload at a time; asks that arrive meanwhile get one more)."""
        if payload == self.node_id:
            return
        self._wanted = True
        if self._answering is None or self._answering.done():
            self._answering = asyncio.create_task(self._answer(), name="cluster-access")

    def on_seen(self, payload: str) -> None:
        if not self._waiting:
            return
        node, _, digest = payload.partition(" ")
        self._seen[node] = digest
        self._answered.set()

    async def stop(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._answering

    async def _answer(self) -> None:
        while self._wanted:
            self._wanted = False
            try:
                digest = await self.reload()
                await self._notify(CHANNEL_ACCESS_SEEN, f"{self.node_id} {digest}")
            except Exception as exc:  # the asking node asks again
                log.warning("roles and tools not reloaded", extra={"error": repr(exc)})

    async def _ask(self) -> None:
        """Ask every node to reload. Best effort, as the change is stored: a notification
        that fails is logged and asked again in ``ASK_AGAIN_S`` (review: a stored change was
        answered 500 when it failed); the nodes still behind at the deadline are named."""
        try:
            await self._notify(CHANNEL_ACCESS, self.node_id)
        except Exception as exc:
            log.warning("roles and tools change not notified", extra={"error": repr(exc)})

    async def _notify(self, channel: str, payload: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(select(func.pg_notify(channel, payload)))
