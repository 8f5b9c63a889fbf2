"""``parley serve`` and ``parley migrate``."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette

from server.app import create_app
from server.keys import Keys, resolve_keys
from server.logs import configure_logging
from server.settings import Settings
from server.state import AppState
from server.store.db import create_engine, current_revision, migrate
from session.tokens import tokenizer_name

log = logging.getLogger("parley.cli")

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


def wait_for_database(
    attempt: Callable[[], object], timeout_s: float, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Call ``attempt`` until the database answers it: an unreachable database (not
    created yet, refusing connections, its server starting) is tried again with back-off
    (doubling from ``FIRST_RETRY_S`` to ``MAX_RETRY_S``) for ``timeout_s``, each try
    logged, so the server comes up after its database without a supervisor. Raises the
    last error once the time is up."""
    deadline = time.monotonic() + timeout_s
    delay = FIRST_RETRY_S
    tries = 0
    while True:
        tries += 1
        try:
            attempt()
        except (DBAPIError, OSError) as exc:
            remaining = deadline - time.monotonic()
            error = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
            if remaining <= 0:
                log.error("database unreachable; giving up", extra={"tries": tries, "error": error})
                raise
            wait = min(delay, remaining)
            log.warning(
                "database unreachable; retrying",
                extra={"tries": tries, "retry_in_s": round(wait, 2), "error": error},
            )
            sleep(wait)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        if tries > 1:
            log.info("database reachable", extra={"tries": tries})
        return


def check_database(url: str) -> None:
    """Connect and read the schema's revision (``--no-migrate``)."""

    async def check() -> None:
        engine = create_engine(url)
        try:
            await current_revision(engine)
        finally:
            await engine.dispose()

    asyncio.run(check())


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """Uvicorn with explicit WebSocket limits: size, keep-alive pings, no compression."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_ws_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_per_message_deflate=False,
        lifespan="on",
        access_log=False,  # Parley logs each request itself (path, no query string)
        # Uvicorn's records go to the root handler of ``configure_logging`` (one JSON
        # formatter, one redaction point), not to handlers of its own.
        log_config=None,
        log_level=None,
        timeout_graceful_shutdown=10,
    )


class ParleyServer(uvicorn.Server):
    """Uvicorn with Parley's graceful shutdown: on SIGTERM, first drain the sessions
    (sockets closed with 1001, running replies finished or marked), then stop as usual."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.parley_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: AppState | None = getattr(self.parley_app.state, "parley", None)
        if state is not None:
            state.draining = True
            await state.rooms.drain(state.settings.shutdown_grace_s)
        await super().shutdown(sockets)


# Young collections after 20,000 allocations (default 700), the middle one after 20 of
# them (10), and a full one only after 1,000 of those (10) -- and, as always, only when the
# long-lived objects grew by a quarter since the last full collection.
GC_THRESHOLDS = (20_000, 20, 1_000)


def freeze_startup_heap() -> None:
    """Load what every run needs, then take everything alive out of the collector's sight.

    A full garbage collection walks every tracked object. After start-up that is about
    100,000 objects of imported libraries (and the tokenizer's tables) that live as long
    as the process, and walking them stopped the event loop for 90 to 160 ms each time:
    every socket's acks and tokens waited (bench: admission ack p99 on SQLite). Frozen,
    they are not walked again; what the server creates afterwards (rooms, sockets) is
    collected as before. Call it once, just before serving.

    The collector's thresholds are raised too (``GC_THRESHOLDS``). With the defaults, a
    server holding many sessions and sockets (each with its long-lived objects) ran full
    collections of 200 to 250 ms while it grew; these were the admission p99 (bench,
    1,000 sessions: ack p99 90 to 145 ms with the defaults, 12 to 14 ms with these).
    """
    tokenizer_name()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def held_secrets(settings: Settings, keys: Keys | None = None) -> list[str | None]:
    """What the logs must never show literally: the keys and the models' API keys."""
    found = [settings.admin_key, settings.secret_key]
    if keys is not None:
        found += [keys.admin_key, keys.signing_key]
    found += [os.environ.get(spec.api_key_env) for spec in settings.models if spec.api_key_env]
    return found


# glibc's malloc option number for the size from which a block gets its own mapping.
M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 256 * 1024


def return_large_blocks() -> None:
    """Keep large blocks (a socket's backlog, a big session's sync frame) in mappings of
    their own, which go back to the system the moment they are freed.

    By default glibc raises that threshold to the size of every large block freed (up to
    32 MiB): after a few 4 MiB frames, such buffers come from the heap, and freeing them
    returns nothing while anything lies above them. Twenty dropped clients of a 4 MiB
    session left 46 of their 82 MiB in the server that way (bench/stuck_readers.py). A
    fixed threshold also fixes the heap's trim threshold. Elsewhere than glibc: nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--database-url")
    serve.add_argument("--data-dir")
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start"
    )
    mig = commands.add_parser("migrate", help="apply pending database migrations")
    mig.add_argument("--database-url")
    args = parser.parse_args(argv)

    overrides = {
        key: value
        for key, value in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "database_url": args.database_url,
            "data_dir": getattr(args, "data_dir", None),
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)

    if args.command == "migrate":
        configure_logging(settings.log_level, settings.log_format, held_secrets(settings))
        migrate(settings.database_url)
        print("migrations applied", file=sys.stderr)
        return 0

    keys = resolve_keys(settings.data_dir, settings.admin_key, settings.secret_key)
    configure_logging(settings.log_level, settings.log_format, held_secrets(settings, keys))
    if keys.admin_key_created:
        # Never the key itself: whatever reads this output (a journal, a log shipper)
        # would hold the admin key.
        logging.getLogger("parley.cli").warning(
            "generated an admin key", extra={"path": str(settings.data_dir / "admin_key")}
        )
    url = settings.database_url
    migrating = settings.migrate_on_start and not args.no_migrate
    try:
        wait_for_database(
            (lambda: migrate(url)) if migrating else (lambda: check_database(url)),
            # An embedded file opens or it does not: no server to wait for.
            0 if url.startswith("sqlite") else settings.db_connect_timeout_s,
        )
    except (DBAPIError, OSError):
        return 1  # logged
    app = create_app(settings)
    return_large_blocks()
    freeze_startup_heap()
    ParleyServer(uvicorn_config(app, settings), app).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
