"""Whether the database takes writes now, and a log of the writes it refused.

Every write transaction reports here how it ended (``Store.transaction``). While the
last one failed for a storage reason, ``/readyz`` answers 503 (a load balancer sends new
clients elsewhere) until a write, or the probe ``/readyz`` makes, succeeds again.

Refusals are logged at most once per ``log_every_s`` for each kind of fault, with the
number left out since the line before: a database that refuses every token of twenty
streaming replies must not write a line for each.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from parley.server.logs import LogThrottle

log = logging.getLogger("parley.storage")


class LockTimeout(sqlite3.OperationalError):
    """SQLite's write lock stayed with another process for the whole lock budget."""


# What a write refused so is told (PostgreSQL; SQLite names its write lock).
LOCK_HELD = "another write held a lock this one needs for the whole lock budget"
# PostgreSQL's ``lock_not_available``: a statement's ``lock_timeout`` ran out.
LOCK_NOT_AVAILABLE = "55P03"


def lock_waited(exc: BaseException) -> bool:
    """Whether ``exc`` is a write's wait, for its whole lock budget, on a lock another write
    held (SQLite's write lock, a PostgreSQL row's): the database itself is up."""
    if isinstance(exc, LockTimeout):
        return True
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == LOCK_NOT_AVAILABLE


def fault_kind(exc: BaseException) -> str:
    """A short, stable name for what went wrong (the key of the log's rate limit)."""
    if lock_waited(exc):
        return "locked"
    cause: BaseException = getattr(exc, "orig", None) or exc
    name = getattr(cause, "sqlite_errorname", None)  # SQLITE_READONLY, SQLITE_FULL, ...
    if isinstance(name, str):
        return name.removeprefix("SQLITE_").lower()
    if isinstance(cause, OSError) or "connect" in type(cause).__name__.lower():
        return "unreachable"
    return type(cause).__name__


class StorageHealth:
    """The outcome of the latest write, and the rate-limited refusal log."""

    def __init__(
        self,
        log_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.throttle = LogThrottle(log_every_s, clock)
        self.on_refused = on_refused  # told the kind of every refusal (a metric)
        self.failing: str | None = None  # the kind of the latest write's fault, if it failed
        self.refused = 0

    def wrote(self) -> None:
        """A write committed: the database takes writes again."""
        if self.failing is not None:
            log.warning("database writes succeed again", extra={"after_refused": self.refused})
        self.failing = None

    def refuse(self, exc: BaseException, what: str) -> bool:
        """A write failed for a storage reason: remember it, log it unless a line of its
        kind went out less than ``log_every_s`` ago. True if it was logged."""
        kind = fault_kind(exc)
        self.failing = kind
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused(kind)
        suppressed = self.throttle.admit(kind)
        if suppressed is None:
            return False
        log.warning(
            "database write refused",
            extra={"kind": kind, "what": what, "error": str(exc)[:300], "suppressed": suppressed},
        )
        return True
