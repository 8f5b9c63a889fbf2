"""Engine creation and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from parley import migrations
from parley.server.store.sqlite_inline import InlineConnection, file_path, pragmas
from parley.session.errors import SchemaNotCurrent

MIGRATIONS_DIR = Path(migrations.__file__).parent


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def create_engine(
    url: str,
    *,
    idle_in_transaction_s: float | None = None,
    lock_timeout_s: float | None = None,
    sqlite_busy_timeout_s: float = 0.0,
    pool_size: int = 10,
) -> AsyncEngine:
    """An async engine; on a SQLite file, one whose connections call SQLite from the
    event loop's thread (``server.store.sqlite_inline``), waiting on no lock there unless
    ``sqlite_busy_timeout_s`` says so (migrations, which run before the server serves).

    ``idle_in_transaction_s`` (PostgreSQL): the server ends a session whose transaction
    waits on the client longer than this. A cluster node that stalls (paused, swapped
    out) in the middle of a write holds row locks, the lease row's among them, and the
    node taking the session over would wait on them for as long as it stalls.
    ``lock_timeout_s`` (PostgreSQL): a statement waits this long for a lock another client
    holds, then fails (and the write is refused ``unavailable``), as a SQLite write waits
    for another process's write lock (review: a write waited as long as a client of the
    database held a table lock, 25 s, with ``/readyz`` saying ready).
    ``pool_size`` (PostgreSQL): connections kept, and as many more at busy times."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_driver_name() == "asyncpg":
            server_settings: dict[str, str] = {}
            if idle_in_transaction_s is not None:
                server_settings["idle_in_transaction_session_timeout"] = _ms(idle_in_transaction_s)
            if lock_timeout_s is not None:
                server_settings["lock_timeout"] = _ms(lock_timeout_s)
            if server_settings:
                connect_args["server_settings"] = server_settings
        engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args
        )
        _replace_stale_at_checkout(engine)
        if parsed.get_driver_name() == "asyncpg":
            _close_when_lost(engine)
        return engine
    path = file_path(parsed)
    if path is None:  # in memory: aiosqlite's own connection, on its thread
        engine = create_async_engine(parsed.set(drivername="sqlite+aiosqlite"))
    else:
        # Last in, first out: the connection used last is used next, its page cache
        # current. SQLite drops a connection's cache whenever another wrote since it last
        # read, so handing them out in turn (the pool's default) read pages again each time.
        engine = create_async_engine(
            parsed.set(drivername="sqlite+aiosqlite"),
            async_creator=lambda: InlineConnection.open(path, sqlite_busy_timeout_s),
            pool_use_lifo=True,
        )
    listener = pragmas(checkpoints=path is None, busy_timeout_s=sqlite_busy_timeout_s)
    event.listen(engine.sync_engine, "connect", listener)
    return engine


# A pooled connection idle longer than this is pinged before use (one round trip): a
# connection lost without a word (a NAT or firewall idle timeout) is found there, not by
# the caller's first statement. Busy connections are used with no round trip.
IDLE_PING_S = 30.0


def _replace_stale_at_checkout(engine: AsyncEngine) -> None:
    """A pooled connection the server closed (a restart, an idle timeout) is replaced at
    checkout without a round trip: asyncpg sees the socket close as it happens.
    (SQLAlchemy's ``pool_pre_ping`` sent a query per checkout, a round trip before every
    transaction.) One idle for ``IDLE_PING_S`` is pinged first. A busy connection lost
    without a word fails its first statement instead; that marks every connection pooled
    before it stale, and the caller's retry gets a fresh one."""
    dialect = engine.dialect

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        is_closed = getattr(driver, "is_closed", None)
        if is_closed is not None and is_closed():
            raise exc.DisconnectionError("the server closed this pooled connection")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since > IDLE_PING_S:
            try:
                dialect.do_ping(dbapi_connection)
            except Exception as error:
                raise exc.DisconnectionError("an idle pooled connection did not answer") from error

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    event.listen(engine.sync_engine, "checkout", checkout)
    event.listen(engine.sync_engine, "checkin", checkin)


def _close_when_lost(engine: AsyncEngine) -> None:
    """A connection on which asyncpg lost track of its protocol state fails every statement
    until it is closed (``InternalClientError``: 'cannot switch to state 15; another
    operation (2) is in progress'). A cluster node's loop stalled past
    ``idle_in_transaction_s`` meets it: the server ended a transaction left open meanwhile,
    and its FATAL, read while no statement waited, leaves the protocol so until the
    socket's close is read. Unless that close was read by then, SQLAlchemy took the error
    for no disconnect and could pool the connection again for another transaction to draw
    (cluster review: a notification after a commit answered 500). It is invalidated now,
    the pool's other connections kept, and the error says so (``connection_invalidated``)."""
    lost = engine.dialect.loaded_dbapi.InternalClientError

    def handle_error(context: ExceptionContext) -> None:
        if isinstance(context.original_exception, lost):
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False

    event.listen(engine.sync_engine, "handle_error", handle_error)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Apply every pending migration. Blocking: call it before the event loop serves."""
    command.upgrade(alembic_config(url), "head")


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision, read once per process (loading the migration
    files takes 40 ms or more, and every app asks at its start)."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_schema_current(revision: str | None, *, where: str = "") -> None:
    """``SchemaNotCurrent`` unless ``revision`` (None: base) is the migrations' head;
    ``where`` adds a note after the revision (no database file there, say)."""
    head = head_revision()
    if revision != head:
        raise SchemaNotCurrent(
            f"the database schema is at {revision or 'base'}{where}, expected {head}: "
            "run 'parley migrate'"
        )


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
