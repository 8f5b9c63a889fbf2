"""One dedicated PostgreSQL connection that LISTENs on Parley's channels.

asyncpg delivers notifications to callbacks on that connection. A notification can be
missed (the connection drops, the server restarts): after every (re)connect the node is
told (``on_connected``) so it catches up from the tables, which are the truth; the
notifications only say *when* to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

log = logging.getLogger("parley.cluster.listener")

RECONNECT_DELAYS_S = (0.1, 0.25, 0.5, 1.0, 2.0)


def asyncpg_dsn(database_url: str) -> str:
    """The plain ``postgresql://`` DSN of a SQLAlchemy URL (``postgresql+asyncpg://``)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class NotificationListener:
    def __init__(
        self,
        dsn: str,
        channels: Mapping[str, Callable[[str], None]],
        on_connected: Callable[[], None],
        *,
        name: str = "parley-listener",
        health_interval_s: float = 1.0,
        health_timeout_s: float = 3.0,
    ) -> None:
        self.dsn = dsn
        self.name = name  # its application_name in pg_stat_activity
        self.channels = dict(channels)
        self.on_connected = on_connected
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.healthy = False
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-listener")

    async def wait_connected(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self.healthy

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        handler = self.channels.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            # A bad payload must not stop the listener; the periodic catch-up covers it.
            log.exception("notification handler failed", extra={"channel": channel})

    async def _run(self) -> None:
        failures = 0
        while True:
            connection: asyncpg.Connection | None = None
            try:
                async with asyncio.timeout(self.health_timeout_s * 2):
                    connection = await asyncpg.connect(
                        self.dsn, server_settings={"application_name": self.name[:63]}
                    )
                    for channel in self.channels:
                        await connection.add_listener(channel, self._dispatch)
                self.healthy = True
                self._connected.set()
                failures = 0
                self.on_connected()
                while True:
                    await asyncio.sleep(self.health_interval_s)
                    async with asyncio.timeout(self.health_timeout_s):
                        await connection.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.healthy = False
                self._connected.clear()
                self.reconnects += 1
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                log.warning(
                    "listener connection lost; reconnecting",
                    extra={"error": f"{type(exc).__name__}: {exc}", "delay_s": delay},
                )
                await asyncio.sleep(delay)
            finally:
                self.healthy = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 2)
