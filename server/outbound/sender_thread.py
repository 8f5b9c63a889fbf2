"""The webhook sender in a thread of its own: its own event loop and store connections.

On the sessions' event loop the sender cost them its claims, its reads and its POSTs
(about 28 ms of the loop per delivery under load, issue #18), and with SQLite called
from that loop's thread (``server.store.sqlite_inline``) every query of the sender was
a query no session could answer during. Here it runs on a loop in another thread, with
its own engine: on SQLite its own connection (WAL, so reads never wait on writes), which
waits for the write lock in SQLite's busy handler on the sender's thread, for up to
``db_lock_timeout_s``; the sessions' writers wait for the sender's short transactions
as for another process's (in a worker thread, never in the loop's). On PostgreSQL, a
small pool of its own. A commit that wrote deliveries wakes it thread-safely.

Python runs one thread at a time: the sender's own CPU is still the process's, but it
no longer holds the sessions' loop while it waits on the database or a receiver. Opt-in
(``webhook_sender_thread``): on SQLite it made the sessions' acks slower, not faster
(the interpreter and the write lock are shared; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from sqlalchemy import make_url

from parley.server.outbound.targets import Resolver, system_resolver
from parley.server.outbound.webhook_sender import WebhookSender
from parley.server.settings import Settings
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.server.store.sqlite_inline import file_path

# PostgreSQL connections the sender keeps (and as many more at busy times).
POOL_SIZE = 2
# How long the server waits for the sender's thread to start and to stop.
THREAD_WAIT_S = 30.0


def own_thread_possible(database_url: str) -> bool:
    """Whether a second engine reaches the same database: not an in-memory SQLite one."""
    parsed = make_url(database_url)
    return parsed.get_backend_name() != "sqlite" or file_path(parsed) is not None


class SenderThread:
    """A ``WebhookSender`` on its own loop in its own thread, woken by ``sessions``'
    commits that wrote deliveries."""

    def __init__(
        self,
        sessions: Store,
        settings: Settings,
        clock: Callable[[], float],
        resolver: Resolver = system_resolver,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.resolver = resolver
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: WebhookSender | None = None
        self._stopping: asyncio.Event | None = None

    async def start(self, *, sole_sender: bool) -> None:
        """Start the thread and its sender (``WebhookSender.start``); raises what the
        sender's start raised."""
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve(sole_sender),),
            name="webhook-sender",
            daemon=True,  # never holds the process up at exit
        )
        self._thread.start()
        if not await asyncio.to_thread(self._ready.wait, THREAD_WAIT_S):
            raise RuntimeError("the webhook sender's thread did not start")
        if self._failed is not None:
            raise self._failed
        self.sessions.on_outbox = self.wake

    def wake(self) -> None:
        """Look for due deliveries now; from any thread."""
        loop, sender = self._loop, self._sender
        if loop is not None and sender is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed: stopping
                loop.call_soon_threadsafe(sender.wake)

    async def stop(self) -> None:
        """Stop the sender (attempts under way are abandoned: their leases bring them
        back), close its connections and end the thread."""
        self.sessions.on_outbox = None
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, THREAD_WAIT_S)

    async def _serve(self, sole_sender: bool) -> None:
        settings = self.settings
        store = Store(
            create_engine(
                settings.database_url,
                idle_in_transaction_s=settings.lease_ttl_s if settings.cluster else None,
                sqlite_busy_timeout_s=settings.db_lock_timeout_s,
                pool_size=POOL_SIZE,
            ),
            lock_timeout_s=settings.db_lock_timeout_s,
        )
        sender = WebhookSender(store, settings, self.clock, self.resolver)
        try:
            await sender.start(sole_sender=sole_sender)
        except BaseException as exc:
            self._failed = exc
            self._ready.set()
            await store.close()
            return
        self._stopping = asyncio.Event()
        self._sender = sender
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            self._loop = None
            await sender.stop()
            await store.close()
