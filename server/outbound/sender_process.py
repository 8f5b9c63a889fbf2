"""The webhook sender in a process of its own (``server.outbound.sender_child``).

On the sessions' event loop the sender cost them its claims, its reads and its POSTs
(10 to 28 ms of the loop per delivery under load, issue #18); in a thread of the same
process it cost them more (Python runs one thread at a time, and on SQLite the thread's
queries met the sessions' at the write lock from the same process). In a process of its
own, with its own engine, its CPU and its waits are the operating system's to schedule
on another core: the sessions share with it only the database (on SQLite, the write lock
for its short claim and record transactions, waited for as another process's).

The server hands the child its settings on stdin (the first line), waits for its
``ready``, and then writes a byte to its stdin after commits that wrote deliveries: at
most one per ``WAKE_EVERY_S`` (a byte per commit cost the sessions' loop a pipe write and
the child a wake-up each, 3% of the server's CPU at 500 events/s, for deliveries that wait
seconds for their receivers anyway), and at most one waiting in the pipe (the child's
wake-ups are coalesced, never buffered without bound).
Closing stdin stops it; a server killed outright closes it too (the kernel does), so the
child never outlives its server. A child that dies on its own is logged and started
again after a back-off (doubling, bounded).

The child starts with the server only when a subscription exists; otherwise at the first
wake-up, the commit of the first delivery: a server that nobody subscribes to (most test
servers, many deployments) never pays for a second interpreter. A cluster node also asks
every ``cluster_poll_s`` whether a subscription exists yet, and starts its child once one
does: deliveries a stopped node left are claimed by the others' children, and a node that
writes none itself would otherwise have none to claim them (review RI-1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable

from sqlalchemy import make_url, select

from parley.server.outbound.sender_child import READY
from parley.server.settings import Settings
from parley.server.store.sessions import Store
from parley.server.store.sqlite_inline import file_path
from parley.server.store.tables import webhooks
from parley.session.backoff import doubling_s
from parley.session.errors import ConfigurationError

log = logging.getLogger("parley.webhooks")

CHILD_MODULE = "parley.server.outbound.sender_child"
# How long the server waits for the child's ``ready``, and for it to end once told to.
START_WAIT_S = 30.0
STOP_WAIT_S = 10.0
# A child that died is started again after this, doubling up to the maximum; one that
# ran for ``STEADY_S`` before it died starts the doubling over.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STEADY_S = 60.0
# Settings the child has no use for stay in the server.
NOT_HANDED = {"admin_key", "secret_key"}
NOT_STARTED = "the webhook sender's process did not start"
# Commits that wrote deliveries within this of the first wake the child once.
WAKE_EVERY_S = 0.01


def own_process_possible(database_url: str) -> bool:
    """Whether another process reaches the same database: not an in-memory SQLite one."""
    parsed = make_url(database_url)
    return parsed.get_backend_name() != "sqlite" or file_path(parsed) is not None


async def spawn_child() -> asyncio.subprocess.Process:
    """The sender's process, not yet handed its settings: its stdin and stdout piped, its
    stderr the server's own (its JSON log lines join the server's)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        CHILD_MODULE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


class SenderProcess:
    """A ``WebhookSender`` in a child process, woken by ``sessions``' commits that wrote
    deliveries, started again if it dies. ``on_exit`` is told each unexpected end."""

    def __init__(
        self,
        sessions: Store,
        settings: Settings,
        *,
        on_exit: Callable[[], None] = lambda: None,
        restart_first_s: float = RESTART_FIRST_S,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.on_exit = on_exit
        self.restart_first_s = restart_first_s
        self.process: asyncio.subprocess.Process | None = None
        self._sole_sender = True
        self._watch: asyncio.Task[None] | None = None
        self._looking: asyncio.Task[None] | None = None  # for a subscription (a cluster)
        self._waking: asyncio.TimerHandle | None = None  # a wake-up due to be written

    async def start(self, *, sole_sender: bool) -> None:
        """Start the child now if a subscription exists, waiting for its ``ready`` (raises
        ``ConfigurationError`` with what failed: the server does not start without its
        sender); else at the first ``wake``, or (not ``sole_sender``: a cluster) once a
        subscription exists."""
        self._sole_sender = sole_sender
        if await self._subscribed():
            self.process = await self._spawn()
            self._watch = asyncio.create_task(self._keep_running(), name="webhook-sender-watch")
        elif not sole_sender:
            self._looking = asyncio.create_task(
                self._start_once_subscribed(), name="webhook-sender-look"
            )
        self.sessions.on_outbox = self.wake

    async def _start_once_subscribed(self) -> None:
        """Every ``cluster_poll_s`` until the child runs: start it if a subscription
        exists (a database fault is logged once and asked again)."""
        failing: str | None = None
        while self._watch is None:
            await asyncio.sleep(self.settings.cluster_poll_s)
            try:
                subscribed = await self._subscribed()
            except Exception as exc:
                if failing != str(exc):  # once per outage, not once per round
                    log.warning("could not look for a webhook subscription: %s", exc)
                failing = str(exc)
                continue
            failing = None
            if subscribed:
                self.wake()

    async def _subscribed(self) -> bool:
        async with self.sessions.read() as connection:
            found = await connection.execute(select(webhooks.c.id).limit(1))
            return found.first() is not None

    def wake(self) -> None:
        """Look for due deliveries: one byte to the child within ``WAKE_EVERY_S`` (one for
        every commit in that time), unless one is waiting; the first wake-up of a server
        that started without its child starts it."""
        if self._watch is None:
            if self.sessions.on_outbox is not None:  # not stopped
                self._watch = asyncio.create_task(self._keep_running(), name="webhook-sender-watch")
            return
        if self._waking is None and self.process is not None:
            self._waking = asyncio.get_running_loop().call_later(WAKE_EVERY_S, self._write_wake)

    def _write_wake(self) -> None:
        self._waking = None
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        transport = process.stdin.transport
        # A byte still in the pipe's user-space buffer is a wake-up the child has not
        # taken: it will look at everything committed so far when it does.
        if transport.get_write_buffer_size() == 0:
            transport.write(b"w")

    async def stop(self) -> None:
        """Close the child's stdin and wait for it to end (it abandons attempts under
        way: their leases bring them back); kill it if it does not end in time."""
        self.sessions.on_outbox = None
        if self._looking is not None:
            self._looking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._looking
        if self._waking is not None:
            self._waking.cancel()
            self._waking = None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process, self.process = self.process, None
        if process is not None:
            await self._end(process)

    async def _spawn(self) -> asyncio.subprocess.Process:
        handover = {
            "sole_sender": self._sole_sender,
            "settings": self.settings.model_dump(mode="json", exclude=NOT_HANDED),
        }
        process = await spawn_child()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(handover).encode() + b"\n")
            async with asyncio.timeout(START_WAIT_S):
                await process.stdin.drain()
                answer = await process.stdout.readline()
        except (TimeoutError, OSError) as exc:
            await self._end(process)
            raise ConfigurationError(f"{NOT_STARTED}: {exc!r}") from None
        except BaseException:  # cancelled (the server stops meanwhile): no child left
            process.kill()
            await process.wait()
            raise
        if answer != READY:
            await self._end(process)
            told = answer.decode(errors="replace").strip()
            raise ConfigurationError(f"{NOT_STARTED}: {told or f'exit {process.returncode}'}")
        log.info("webhook sender process started", extra={"pid": process.pid})
        return process

    async def _keep_running(self) -> None:
        """Start the child if it is not running (it claims what is due as it starts), and
        start it again whenever it ends."""
        attempts = 0
        while True:
            if self.process is None:
                attempts += 1
                try:
                    # Deliveries a child left mid-attempt are resumed as after a stop.
                    self.process = await self._spawn()
                except ConfigurationError as exc:
                    log.error("webhook sender process did not start: %s", exc.message)
                    await asyncio.sleep(doubling_s(self.restart_first_s, RESTART_MAX_S, attempts))
                    continue
            process = self.process
            started = time.monotonic()
            code = await process.wait()
            self.on_exit()
            log.error(
                "webhook sender process ended; starting it again",
                extra={"pid": process.pid, "exit_code": code},
            )
            self.process = None
            if time.monotonic() - started >= STEADY_S:
                attempts = 0
            await asyncio.sleep(doubling_s(self.restart_first_s, RESTART_MAX_S, attempts + 1))

    @staticmethod
    async def _end(process: asyncio.subprocess.Process) -> None:
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                await process.wait()
        except TimeoutError:
            log.warning("webhook sender process did not stop; killed", extra={"pid": process.pid})
            process.kill()
            await process.wait()
