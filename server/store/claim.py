"""The claim a server holds on its database for as long as its process lives.

Off-cluster, a server is the only writer of its sessions: it keeps each one's document and
queue in memory, and at start it takes over every prompt left running as cut off by a
restart. A second such server on the same database (a blue/green deploy on one host,
a second start on another port) would fail the first one's running prompts and keep a story
of its own (review R1-1). So a server claims its database before it migrates or recovers
anything, and refuses to start while another holds the claim:

- SQLite: ``flock`` on a file next to the database (``parley.db.lock``); the kernel drops
  the lock when the process ends, however it ends.
- PostgreSQL: a session-level advisory lock on a connection of its own, dropped by the
  database when that connection ends. If the connection drops while the process lives, a
  thread takes the lock again on a new connection; if another process took it meanwhile,
  this one stops at once (``os._exit``), as a crash would, writing nothing more.

Exclusive for a server off-cluster; shared for cluster nodes (their leases share the
sessions out) and for migrations, so a server off-cluster and either of them never
overlap. An in-memory SQLite database has nothing to claim. Within one process, the claim
is the process's: a second app of the same process on the same database shares it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import NullPool, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from parley.server.store.sqlite_inline import file_path
from parley.session.errors import DatabaseInUse

log = logging.getLogger("parley.claim")

# The advisory lock's key ("parley" in ASCII); advisory locks are per database.
ADVISORY_KEY = 0x7061726C6579
# How often the PostgreSQL claim's connection is checked, and tried again once it dropped.
CHECK_EVERY_S = 2.0
# The exit status of a process that lost its claim to another one.
EXIT_CLAIM_LOST = 75
ADVICE = "stop it first, or run a cluster (PARLEY_CLUSTER=1 on PostgreSQL)"


class Claim(Protocol):
    def release(self) -> None: ...


def holder_tag() -> str:
    return f"parley pid {os.getpid()} on {socket.gethostname()}"


class FileClaim:
    """``flock`` on ``<database>.lock``; it names its exclusive holder inside."""

    def __init__(self, database: Path, *, shared: bool) -> None:
        self.path = database.with_name(database.name + ".lock")
        self.shared = shared
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise DatabaseInUse(
                f"another Parley process holds the database {database}"
                f"{f' ({holder})' if holder else ''}: {ADVICE}"
            ) from None
        if not shared:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{holder_tag()}\n".encode(), 0)

    def release(self) -> None:
        if not self.shared:
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # drops the lock


class AdvisoryClaim:
    """``pg_try_advisory_lock`` on a connection of its own, in a thread of its own (the
    claim outlives the event loops of a process: the command line's, then the server's)."""

    def __init__(self, url: str, *, shared: bool, on_lost: Callable[[], None]) -> None:
        self.shared = shared
        self.on_lost = on_lost
        self.engine: AsyncEngine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": holder_tag()}},
        )
        self.connection: AsyncConnection | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="db-claim", daemon=True)
        self.thread.start()
        try:
            if not self._call(self._take()):
                holder = self._call(self._holder())
                raise DatabaseInUse(
                    f"another Parley process holds the database "
                    f"{make_url(url).database}{f' ({holder})' if holder else ''}: {ADVICE}"
                )
        except BaseException:
            self._call(self._close())
            self._stop_thread()
            raise
        self.watch = asyncio.run_coroutine_threadsafe(self._watch(), self.loop)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _take(self) -> bool:
        await self._close()
        self.connection = await self.engine.connect()
        await self.connection.execution_options(isolation_level="AUTOCOMMIT")
        function = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
        query = text(f"SELECT {function}(:key)")
        return bool(await self.connection.scalar(query, {"key": ADVISORY_KEY}))

    async def _holder(self) -> str:
        assert self.connection is not None
        rows = await self.connection.execute(
            text(
                "SELECT DISTINCT a.application_name FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND (l.classid::bigint << 32) + l.objid::bigint = :key"
            ),
            {"key": ADVISORY_KEY},
        )
        return ", ".join(sorted(str(row[0]) for row in rows if row[0]))

    async def _watch(self) -> None:
        """Check the connection; once it dropped, take the lock again on a new one (the
        database dropped it with the connection), and stop the process if another took it."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                assert self.connection is not None
                await self.connection.scalar(text("SELECT 1"))
                continue
            except Exception as exc:
                log.warning("the database claim's connection dropped", extra={"error": str(exc)})
            try:
                taken = await self._take()
            except Exception as exc:  # the database still down: try again next time
                log.warning("cannot take the database claim again", extra={"error": str(exc)})
                continue
            if not taken:
                log.critical("another process took this server's database claim; stopping")
                self.on_lost()
                return
            log.info("took the database claim again")

    async def _close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()  # ends the session, and so its lock
            self.connection = None

    def _stop_thread(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.engine.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def release(self) -> None:
        # Cancelled wherever it waits: a connection to a database that is down may take
        # its time-out to fail.
        self.watch.cancel()
        self._call(self._close())
        self._stop_thread()


def stop_now() -> None:
    """Another process serves this database now: end this one before it writes again."""
    logging.shutdown()
    os._exit(EXIT_CLAIM_LOST)


_held: dict[str, tuple[Claim, int]] = {}
_held_lock = threading.Lock()


def claim_database(url: str, *, shared: bool = False) -> Callable[[], None]:
    """Claim the database of ``url`` (``shared``: alongside other shared holders) and
    return what releases it. Blocking. Raises ``DatabaseInUse`` when another process
    holds it in a mode that excludes this one, and the database's errors when it cannot
    be reached."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = file_path(parsed)
        if database is None:
            return lambda: None
        identity = str(Path(database).resolve())
    else:
        identity = parsed.render_as_string(hide_password=False)
    with _held_lock:
        if identity in _held:
            claim, count = _held[identity]
        else:
            claim = (
                FileClaim(Path(identity), shared=shared)
                if parsed.get_backend_name() == "sqlite"
                else AdvisoryClaim(url, shared=shared, on_lost=stop_now)
            )
            count = 0
        _held[identity] = (claim, count + 1)

    released = False

    def release() -> None:
        nonlocal released
        with _held_lock:
            if released:
                return
            released = True
            held, count = _held[identity]
            if count > 1:
                _held[identity] = (held, count - 1)
                return
            del _held[identity]
        held.release()

    return release
