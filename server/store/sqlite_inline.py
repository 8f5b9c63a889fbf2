"""SQLite called straight from the event loop, under SQLAlchemy's asyncio API.

aiosqlite hands every call to a thread of its own and back. A transaction of three
statements took 1.95 ms that way on an idle loop, against 0.13 ms made directly, and
under load each hop waits for a busy loop to pick it up: a streamed token's commit took
10 ms. SQLite runs in-process and its calls take microseconds (WAL with
``synchronous=NORMAL``: a commit writes to the page cache and does not fsync), so these
connections make them in the loop's thread, as a blocking program would, behind the
aiosqlite interface SQLAlchemy's async engine drives. In-process writers take turns
(``Store``'s writer queue), so a call never waits on SQLite's lock for another of ours.

Another process may hold the lock, though (a backup, an admin's ``sqlite3`` shell), and
a call waiting on it in the loop's thread stopped every socket and probe for as long.
So these connections never wait in SQLite's busy handler (``busy_timeout=0``); a write
transaction starts with ``begin_immediate``: it takes the write lock up front, and if
another process holds it, waits for it in a worker thread while the loop goes on. Once
the lock is taken, nothing in the transaction waits on another process (WAL: readers
never block the writer, nor the writer them).

The one slow thing a commit can do is a WAL checkpoint, which fsyncs: these connections
never checkpoint (``wal_autocheckpoint=0``); ``Checkpointer`` does it from a worker thread.

A read is quick too, but for one that copies a large row: a session's stored snapshot (up
to 16 MiB) read and copied in the loop's thread held every socket of the node while a
cold session loaded. ``ThreadReads`` makes such reads in a worker thread, on connections
of its own: a reader takes no writer's turn (WAL: a reader never blocks the writer, nor
the writer it), and the statements of one read share one read transaction, so they see one
state of the database while the loop's writers go on.

``server.store.db.create_engine`` uses them for a SQLite file, whatever driver the URL names.
The group commit's rounds of streamed text skip SQLAlchemy altogether (``UpdateAppender``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import URL

from parley.server.store.health import LockTimeout

log = logging.getLogger("parley.sqlite")

CHECKPOINT_EVERY_S = 1.0
READ_BUSY_TIMEOUT_S = 5.0
SQLITE_BUSY = 5
MAX_IDLE_READERS = 2

T = TypeVar("T")


class InlineCursor:
    """An aiosqlite-shaped cursor whose coroutines do their work before they return."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def __aenter__(self) -> InlineCursor:
        return self

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Any) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    """An aiosqlite-shaped connection over a ``sqlite3`` one, for SQLAlchemy's aiosqlite
    dialect (its ``async_creator``): same SQL, same errors, no thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection: sqlite3.Connection | None = connection  # None once closed

    @property
    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return self._connection

    @classmethod
    def connect(cls, path: str, busy_timeout_s: float = 0.0) -> InlineConnection:
        return cls(sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False))

    @classmethod
    async def open(cls, path: str, busy_timeout_s: float = 0.0) -> InlineConnection:
        return cls.connect(path, busy_timeout_s)

    async def begin_immediate(self, wait_s: float) -> None:
        """Start a write transaction holding SQLite's write lock. Tried once in the loop's
        thread; if another process holds the lock, waited for in a worker thread for up to
        ``wait_s``, then ``LockTimeout``. Other errors are SQLite's own."""
        connection = self._open
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            if wait_s <= 0:
                raise LockTimeout("another process holds the database's write lock") from exc
        waiting = asyncio.ensure_future(asyncio.to_thread(_begin_waiting, connection, wait_s))
        cancelled = False
        while not waiting.done():
            try:
                await asyncio.wait([waiting])
            except asyncio.CancelledError:
                # The thread has the connection: nobody else may use it until it is done.
                cancelled = True
        if cancelled:
            if waiting.exception() is None:
                connection.rollback()
            raise asyncio.CancelledError
        waiting.result()

    @property
    def raw(self) -> sqlite3.Connection:
        """The ``sqlite3`` connection beneath (for calls that need no coroutine)."""
        return self._open

    @property
    def isolation_level(self) -> str | None:
        return self._open.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._open.cursor())

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._open.create_function(*args, **kwargs)

    async def commit(self) -> None:
        self._open.commit()

    async def rollback(self) -> None:
        self._open.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def stop(self) -> None:
        await self.close()


def _busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == SQLITE_BUSY


def _begin_waiting(connection: sqlite3.Connection, wait_s: float) -> None:
    """``BEGIN IMMEDIATE`` in SQLite's busy handler for up to ``wait_s`` (worker thread)."""
    connection.execute(f"PRAGMA busy_timeout={max(1, round(wait_s * 1000))}")
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise LockTimeout(
                f"another process held the database's write lock for {wait_s:g} s"
            ) from exc
        raise
    finally:
        connection.execute("PRAGMA busy_timeout=0")


class UpdateAppender:
    """Group commit rounds of sessions' document updates alone (streamed reply text, the
    most frequent write), made on a ``sqlite3`` connection of their own beneath SQLAlchemy.

    The transaction is the one ``StoreTx.append_updates`` makes (the write lock taken
    first, an insert a row, a commit), but SQLAlchemy's async engine spends about 350 µs
    of CPU on a round of one update (the pool's checkout and return, its greenlet hops,
    the compiled statement's execution context) around some 40 µs of SQLite's own work,
    and a streamed token paid that before it was sent. The caller holds the writers'
    turn, so no other connection of this process writes meanwhile."""

    def __init__(self, path: str, insert_sql: str) -> None:
        self.path = path
        self.insert_sql = insert_sql  # one row: (session id, update)
        self._connection: InlineConnection | None = None

    def _open(self) -> InlineConnection:
        """The connection, with no transaction open: one a round left open (its rollback
        failed) would hold SQLite's write lock, and every round after it would fail."""
        if self._connection is None:
            connection = InlineConnection.connect(self.path)
            try:
                pragmas(checkpoints=False)(connection.raw, None)
            except BaseException:
                connection.raw.close()
                raise
            self._connection = connection
        if self._connection.raw.in_transaction:
            self._connection.raw.rollback()
        return self._connection

    async def append(self, rows: list[tuple[str, bytes]], wait_s: float) -> list[int]:
        """Store ``rows`` (session id, update) in one transaction; their ids, in order.
        ``wait_s``: how long to wait for another process's write lock (``LockTimeout``)."""
        connection = self._open()
        await connection.begin_immediate(wait_s)
        raw = connection.raw
        try:
            cursor = raw.cursor()
            ids = []
            for row in rows:
                cursor.execute(self.insert_sql, row)
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            raw.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                raw.rollback()
            raise
        return ids

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class Checkpointer:
    """Folds the WAL back into the database file from a worker thread, every
    ``every_s`` while there are writes, and once more at ``close``."""

    def __init__(self, path: str, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self.path = path
        self.every_s = every_s
        self.dirty = False
        self.last: tuple[int, int] | None = None  # WAL frames, and how many went back
        self._connection: sqlite3.Connection | None = None
        # A cancelled ``to_thread`` leaves its thread running: the worker threads take
        # turns on the connection, so a checkpoint never overlaps another or the close.
        self._turn = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def wrote(self) -> None:
        """A write committed: make sure a checkpoint follows."""
        self.dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="checkpoint")

    async def _run(self) -> None:
        while self.dirty:
            await asyncio.sleep(self.every_s)
            self.dirty = False
            try:
                await asyncio.to_thread(self._checkpoint)
            except sqlite3.Error:
                log.warning("WAL checkpoint failed", exc_info=True)
                self.dirty = True

    def _checkpoint(self) -> None:
        with self._turn:
            if self._connection is None:
                self._connection = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            row = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.last = (int(row[1]), int(row[2]))

    def _close(self) -> None:
        with self._turn:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(sqlite3.Error):
            await asyncio.to_thread(self._checkpoint)
        await asyncio.to_thread(self._close)


class ThreadReads:
    """Reads made in a worker thread, each on a ``sqlite3`` connection of its own (kept
    for the next read, ``MAX_IDLE_READERS`` at most), inside one read transaction: what
    the reads in it see is one state of the database, whatever the loop's writers commit
    meanwhile. The connection may wait on another process's lock in SQLite's busy handler
    (``READ_BUSY_TIMEOUT_S``): it blocks its worker thread, not the loop."""

    def __init__(self, path: str, busy_timeout_s: float = READ_BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._idle: list[sqlite3.Connection] = []
        # The worker threads and ``close`` take turns on ``_idle``; a cancelled read's
        # thread runs on and hands its connection back (or closes it, once closed).
        self._guard = threading.Lock()
        self._closed = False

    async def read(self, reading: Callable[[sqlite3.Connection], T]) -> T:
        """What ``reading`` returns, called in a worker thread with a connection in a read
        transaction (rolled back after: a read keeps nothing). ``sqlite3`` errors raise."""
        return await asyncio.to_thread(self._read, reading)

    def _read(self, reading: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._take()
        try:
            connection.execute("BEGIN")
            try:
                read = reading(connection)
            finally:
                connection.rollback()
        except BaseException:
            connection.close()  # in an unknown state: not kept
            raise
        self._give_back(connection)
        return read

    def _take(self) -> sqlite3.Connection:
        with self._guard:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            if self._idle:
                return self._idle.pop()
        connection = sqlite3.connect(self.path, check_same_thread=False)
        try:
            pragmas(checkpoints=False, busy_timeout_s=self.busy_timeout_s)(connection, None)
        except BaseException:
            connection.close()
            raise
        return connection

    def _give_back(self, connection: sqlite3.Connection) -> None:
        with self._guard:
            if not self._closed and len(self._idle) < MAX_IDLE_READERS:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; one in use is closed when its read ends."""
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def file_path(url: URL) -> str | None:
    """The database file of a SQLite URL; None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or "mode=memory" in str(url):
        return None
    return database


def pragmas(checkpoints: bool, busy_timeout_s: float = 0.0) -> Any:
    """The ``connect`` listener that sets up each connection. ``busy_timeout_s``: how long
    a statement waits on another process's lock in SQLite's busy handler (which blocks
    the calling thread: zero for connections used from the event loop)."""

    def set_up(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout_s * 1000)}")
        if not checkpoints:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    return set_up
