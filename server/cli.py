"""The command line: ``parley serve``, ``parley migrate`` and ``parley db …``."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from alembic.util import CommandError
from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from parley.server.http.error_body import said
from parley.server.keys import Keys, keys_problem, resolve_keys
from parley.server.logs import configure_logging
from parley.server.settings import Settings, missing_api_keys
from parley.server.store.claim import claim_database
from parley.server.store.db import (
    alembic_config,
    check_schema_current,
    create_engine,
    current_revision,
    migrate,
)
from parley.server.store.schema_moves import (
    Target,
    check_target,
    files_not_there,
    remove,
    sqlite_file,
)
from parley.server.version import version
from parley.server.ws.uvicorn_protocol import LeanHttpProtocol, LeanWebSocketProtocol
from parley.session.errors import ConfigurationError, DatabaseInUse
from parley.session.tokens import tokenizer_name

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from parley.server.state import AppState

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
            error = database_error(exc)
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


def database_error(exc: DBAPIError | OSError) -> str:
    """The first line of why a database could not be opened (the driver's own words)."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]


def database_revision(url: str) -> str | None:
    """Connect and read the schema's revision (None: base), saying nothing: Alembic's
    ``info`` lines of a look ("Context impl SQLiteImpl.", "Will assume non-transactional
    DDL.") came before a refused move's one line (review FX36); a move still logs its own."""

    async def read() -> str | None:
        engine = create_engine(url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    alembic_log = logging.getLogger("alembic.runtime.migration")
    level = alembic_log.level
    alembic_log.setLevel(max(logging.WARNING, level))  # the CLI's one thread: no one else's
    try:
        return asyncio.run(read())
    finally:
        alembic_log.setLevel(level)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """Uvicorn with explicit WebSocket limits: size, keep-alive pings, no compression."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=LeanHttpProtocol,  # uvicorn's httptools protocol, freed once upgraded
        ws=LeanWebSocketProtocol,  # uvicorn's "websockets-sansio", leaner per socket
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


LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley",
        description="Parley: a server for shared, multi-user AI sessions.",
        epilog=(
            "Every setting is also read from the environment (PARLEY_<NAME>, e.g. "
            "PARLEY_PORT) and from a .env file in the working directory; a flag wins over "
            "both. Another ASGI server can run the app too: "
            "uvicorn parley.server.app:create_app --factory."
        ),
    )
    parser.add_argument("--version", action="version", version=f"parley {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--database-url",
            metavar="URL",
            help="SQLAlchemy URL of the database (PARLEY_DATABASE_URL; default: the SQLite "
            "file ./parley.db, in the working directory)",
        )
        sub.add_argument(
            "--env-file",
            metavar="PATH",
            type=Path,
            help="read settings from this file instead of ./.env",
        )
        sub.add_argument("--log-level", choices=LOG_LEVELS, help="PARLEY_LOG_LEVEL (info)")

    serve = commands.add_parser(
        "serve",
        help="run the server (applies pending migrations first)",
        description="Serve the REST API, the WebSocket endpoint and the demo.",
    )
    common(serve)
    serve.add_argument("--host", help="address to listen on (PARLEY_HOST; 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (PARLEY_PORT; 8765)")
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where generated keys live (PARLEY_DATA_DIR; ./.parley); the database is "
        "where --database-url says",
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply pending migrations at start (fail if the schema is behind)",
    )
    migrate_cmd = commands.add_parser(
        "migrate", help="apply pending database migrations (the same as 'parley db upgrade')"
    )
    common(migrate_cmd)
    db = commands.add_parser("db", help="the database schema: where it is, its history, moves")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (
        ("current", "print the revision the database is at"),
        ("history", "list every migration, newest first"),
    ):
        common(db_commands.add_parser(name, help=text, description=text))
    upgrade = db_commands.add_parser("upgrade", help="move the schema forward (to head)")
    common(upgrade)
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    downgrade = db_commands.add_parser(
        "downgrade", help="move the schema back (data of later revisions is dropped)"
    )
    common(downgrade)
    downgrade.add_argument("revision", help="target revision, or -1 for one step back")
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``args`` over the environment and the env file; raises
    ``ConfigurationError`` with one line per problem."""
    overrides = {
        key: value
        for key, value in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "database_url": args.database_url,
            "data_dir": getattr(args, "data_dir", None),
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    env_file: Path | None = args.env_file
    if env_file is not None and not env_file.is_file():
        raise ConfigurationError(f"--env-file {env_file}: no such file")
    try:
        settings = Settings(_env_file=env_file or ".env", **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigurationError(describe_settings_error(exc)) from None
    except SettingsError as exc:  # a value that is not even JSON, say
        field = re.search(r'field "(\w+)"', str(exc))
        where = f"PARLEY_{field.group(1).upper()}" if field else "settings"
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise ConfigurationError(f"{where}: not valid JSON{cause}") from None
    missing = missing_api_keys(settings)
    if missing:
        raise ConfigurationError("; ".join(missing))
    return settings


def describe_settings_error(exc: ValidationError) -> str:
    """One line per wrong setting, named as it is set (``PARLEY_PORT``)."""
    lines = []
    for error in exc.errors():
        head, *rest = [*error["loc"]] or [""]
        where = f"PARLEY_{str(head).upper()}" if head else "settings"
        where += "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)
        message = said(str(error["msg"]))
        lines.append(f"{where}: {message}" if not message.startswith("PARLEY_") else message)
    return "; ".join(lines)


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything else is touched, so a busy
    port fails before migrations run or sessions resume. Raises ``ConfigurationError``."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def run_db_command(args: argparse.Namespace, settings: Settings) -> int:
    """``parley migrate`` and ``parley db …``: Alembic over the configured database. A
    database that cannot be opened is one line and exit 1, a revision the migrations do
    not have one line and exit 2 (review RL-4: both were tracebacks), judged before the
    database is opened (``schema_moves``: it left an empty SQLite file behind)."""
    action = "upgrade" if args.command == "migrate" else args.db_command
    try:
        return _run_db_command(args, settings, action)
    except CommandError as exc:
        print(f"parley: {action}: {exc}", file=sys.stderr)
        return 2
    except (DBAPIError, OSError) as exc:
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        print(f"parley: cannot open the database {shown}: {database_error(exc)}", file=sys.stderr)
        return 1


def _run_db_command(args: argparse.Namespace, settings: Settings, action: str) -> int:
    config = alembic_config(settings.database_url)
    if action == "current" and files_not_there(settings.database_url):
        # Opening it would make it: a look at the schema writes nothing (review: it left
        # an empty database behind and said nothing). ``history`` opens none.
        raise FileNotFoundError("there is no database file (run 'parley migrate' to make one)")
    if action not in ("upgrade", "downgrade"):
        return _run_alembic(config, args, action)
    # Judged before anything is opened; a move that fails anyway on a SQLite database it
    # created removes what it made (a failed command leaves nothing behind).
    target = check_target(action, getattr(args, "revision", "head"), settings.database_url)
    made = files_not_there(settings.database_url)
    # Shared: not under a server off-cluster (which holds its database alone), but
    # under cluster nodes, as their rolling upgrades migrate.
    try:
        release = claim_database(settings.database_url, shared=True)
    except DatabaseInUse as exc:
        print(f"parley: {exc.message}", file=sys.stderr)
        return 2
    try:
        current = None if made else database_revision(settings.database_url)
        result = _move_schema(config, action, target, current)
    except BaseException:
        remove(made)  # under the claim: no server can have opened it meanwhile
        raise
    finally:
        release()
    return result


def _run_alembic(config: Any, args: argparse.Namespace, action: str) -> int:
    from alembic import command

    if action == "current":
        command.current(config)
    elif action == "history":
        command.history(config)
    return 0


def _move_schema(config: Any, action: str, target: Target, current: str | None) -> int:
    """Move the schema from ``current`` to ``target``, given to Alembic as the revision
    it is (review RY-5: Alembic failed on some relative forms with an assertion, or took
    them for a move that did not happen), and say from where to where."""
    from alembic import command

    here, there = target.resolve(action, current)
    if here == there:
        print(f"already at {target.name(here)}: nothing to move", file=sys.stderr)
        return 0
    move = command.upgrade if action == "upgrade" else command.downgrade
    move(config, target.chain[there] or "base")
    print(f"{action}d from {target.name(here)} to {target.name(there)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        if args.command == "serve":
            problem = keys_problem(settings.data_dir, settings.admin_key, settings.secret_key)
            if problem is not None:
                raise ConfigurationError(problem)
        listening = listen_socket(settings.host, settings.port) if args.command == "serve" else None
        if listening is not None and settings.metrics_port:
            listen_socket(settings.metrics_host, settings.metrics_port).close()  # free now?
    except ConfigurationError as exc:
        print(f"parley: configuration error: {exc.message}", file=sys.stderr)
        return 2

    if args.command != "serve":
        configure_logging(settings.log_level, settings.log_format, held_secrets(settings))
        return run_db_command(args, settings)

    assert listening is not None
    # The keys are generated (and written) only once the database is ready: a start that
    # fails leaves nothing written.
    configure_logging(settings.log_level, settings.log_format, held_secrets(settings))
    url = settings.database_url
    migrating = settings.migrate_on_start and not args.no_migrate
    # Held until the process ends (the app takes it again, from this process).
    claims: list[Callable[[], None]] = []

    def prepare() -> None:
        # Not migrating, the schema is judged here too, before the keys (review RY-6: the
        # app judged it, after they were written); a SQLite file that is not there is
        # not made to be judged.
        missing = None if migrating else sqlite_file(url)
        if missing is not None and not missing.exists():
            check_schema_current(None, where=f" (no database at {missing})")
        if not claims:  # first, before migrations run under another server
            claims.append(claim_database(url, shared=settings.cluster))
        if migrating:
            migrate(url)
        else:
            check_schema_current(database_revision(url))

    try:
        wait_for_database(
            prepare,
            # An embedded file opens or it does not: no server to wait for.
            0 if url.startswith("sqlite") else settings.db_connect_timeout_s,
        )
    except ConfigurationError as exc:  # another server holds it; its schema is behind
        listening.close()
        if claims:
            claims[0]()
        print(f"parley: {exc.message}", file=sys.stderr)
        return 2
    except (DBAPIError, OSError):
        listening.close()
        return 1  # logged
    try:
        keys = resolve_keys(settings.data_dir, settings.admin_key, settings.secret_key)
    except OSError as exc:  # the folder changed since it was judged
        listening.close()
        claims[0]()
        print(f"parley: cannot keep the keys in {settings.data_dir}: {exc}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format, held_secrets(settings, keys))
    if keys.admin_key_created:
        # Never the key itself: whatever reads this output (a journal, a log shipper)
        # would hold the admin key.
        log.warning("generated an admin key", extra={"path": str(settings.data_dir / "admin_key")})
    # Imported here, not at the top: the db commands and --version need none of the app
    # (about a second of imports each time a script or a test calls them).
    from parley.server.app import create_app

    app = create_app(settings)
    return_large_blocks()
    freeze_startup_heap()
    base = f"http://{settings.host}:{settings.port}"
    log.info(
        "serving",
        extra={
            "version": version(),
            "api": f"{base}/api/v1/openapi.json",
            "api_docs": f"{base}/api/v1/docs",
            "demo": f"{base}/demo/",
        },
    )
    try:
        ParleyServer(uvicorn_config(app, settings), app).run(sockets=[listening])
    finally:
        claims[0]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
