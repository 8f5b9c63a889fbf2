"""The lease rows this node's transactions lock (cluster mode, PostgreSQL), told as each
locks one to the node's ``LeaseTable``: a renewal skips a row another transaction holds,
and must tell the node's own (a write's fence, a member changed or a token minted here)
from another node's, or a healthy node gives its session up (FX61, FX68)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

# In a statement that locks a lease row: the id of its transaction, as ``xact``.
XACT = "pg_current_xact_id()::text::bigint AS xact"


class LeaseLocks(Protocol):
    """Who counts the lease rows this node's transactions hold (``Database.lease_locks``)."""

    def locked(self, session_id: str, xact: int) -> Callable[[], None]:
        """Transaction ``xact`` locked ``session_id``'s lease row; returns what to call
        once it has ended (its locks released)."""
        ...


@runtime_checkable
class LeaseLocking(Protocol):
    """A transaction's connection that tells of the lease rows it locks (``StoreTx``'s)."""

    def lease_locked(self, session_id: str, xact: int) -> None: ...


def tell_locked(connection: object, session_id: str, xact: int) -> None:
    """``connection``'s transaction (``xact``) locked ``session_id``'s lease row."""
    if isinstance(connection, LeaseLocking):
        connection.lease_locked(session_id, xact)
