"""The webhook sender's own process: ``python -m parley.server.outbound.sender_child``.

Started by ``SenderProcess`` (``server.outbound.sender_process``), never by hand. Its
protocol, all on its standard streams:

- stdin, first line: ``{"sole_sender": bool, "settings": {...}}`` (JSON). The settings
  come this way, not on the command line or in the environment, because other users of
  the machine can read a process's arguments.
- stdout, one line: ``ready``, or ``error <what failed>`` and the process ends.
- stdin, after that: any bytes, each read a wake-up (new deliveries were committed).
  End of file (the server closed it, or died) stops the sender and ends the process.
- stderr: its logs, one JSON object a line like the server's (``server.logs``).

It ignores SIGINT and SIGTERM: a terminal's Ctrl-C or a service manager's stop reaches
the whole process group, and the child must outlive its server's graceful stop (which
closes its stdin when it is done) rather than die under it and be restarted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from parley.server.logs import configure_logging
from parley.server.outbound.webhook_sender import WebhookSender
from parley.server.settings import Settings
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store

log = logging.getLogger("parley.webhooks")

# PostgreSQL connections the sender keeps (and as many more at busy times).
POOL_SIZE = 2
# The first line (the settings) may be this long at most.
MAX_HANDOVER_BYTES = 1024 * 1024
# One read of wake-ups takes up to this much of what is buffered.
WAKE_READ_BYTES = 4096
READY = b"ready\n"


def parse_handover(line: bytes) -> tuple[Settings, bool]:
    """The settings and ``sole_sender`` of the first line; raises ``ValueError``."""
    try:
        given: Any = json.loads(line)
        # model_validate, not Settings(...): the server's values as they are, not the
        # child's environment over them.
        return Settings.model_validate(given["settings"]), bool(given["sole_sender"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad handover line: {type(exc).__name__}") from None


def held_secrets(settings: Settings) -> list[str | None]:
    """What this process's logs must never show literally (as ``server.cli``'s)."""
    found = [settings.admin_key, settings.secret_key]
    found += [os.environ.get(spec.api_key_env) for spec in settings.models if spec.api_key_env]
    return found


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_HANDOVER_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def answer(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()


async def serve() -> int:
    reader = await stdin_reader()
    try:
        settings, sole_sender = parse_handover(await reader.readuntil(b"\n"))
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        answer(f"error {exc}\n".encode())
        return 2
    store: Store | None = None
    try:
        configure_logging(settings.log_level, settings.log_format, held_secrets(settings))
        store = Store(
            create_engine(
                settings.database_url,
                idle_in_transaction_s=settings.lease_ttl_s if settings.cluster else None,
                lock_timeout_s=settings.db_lock_timeout_s,
                sqlite_busy_timeout_s=settings.db_lock_timeout_s,
                pool_size=POOL_SIZE,
            ),
            lock_timeout_s=settings.db_lock_timeout_s,
        )
        sender = WebhookSender(store, settings, time.time)
        await sender.start(sole_sender=sole_sender)
    except Exception as exc:
        if store is not None:
            await store.close()
        answer(f"error {type(exc).__name__}: {exc}".replace("\n", " ")[:1000].encode() + b"\n")
        return 1
    answer(READY)
    os.dup2(2, 1)  # nothing more on the server's pipe: a stray print must not fill it
    try:
        while await reader.read(WAKE_READ_BYTES):
            sender.wake()
    finally:
        await sender.stop()
        await store.close()
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return asyncio.run(serve())
    except Exception:  # as a log line of the server's format, not a bare traceback
        log.exception("webhook sender process failed")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
