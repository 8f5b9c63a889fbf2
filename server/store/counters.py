"""A session's sequence numbers, claimed by a transaction's entry and counted in its last
statement for the session (with the event counter: one statement, the row locked to the
commit on PostgreSQL)."""

from __future__ import annotations

from parley.session.errors import Unavailable


class SequenceMoved(Unavailable):
    """The store handed out another sequence number than the core allotted: the room
    follows ``last_seq`` (the store's), and the sender sends the command again."""

    def __init__(self, last_seq: int | None) -> None:
        super().__init__("the session's sequence numbers moved; send it again")
        self.last_seq = last_seq  # None: the number was taken; read the store's again


class ClaimedSeqs:
    """The sequence number a transaction claimed for its entry, by session, until the
    session's counter moves (in the transaction's last statement for it). A write adds at
    most one entry (a command's prompt or message), so a session has one claimed number."""

    def __init__(self) -> None:
        self._claimed: dict[str, int] = {}  # session: the number claimed

    def claim(self, session_id: str, seq: int) -> None:
        if session_id in self._claimed:
            raise ValueError(f"sequence number {seq} claimed after {self._claimed[session_id]}")
        self._claimed[session_id] = seq

    def holds(self, session_id: str) -> bool:
        """Whether the session's counter must move (by one: the number claimed)."""
        return session_id in self._claimed

    def counted(self, session_id: str, last_seq: int) -> None:
        """The counter moved and now reads ``last_seq``: ``SequenceMoved`` unless the
        claimed number was the next one."""
        if last_seq != self._claimed.pop(session_id):
            raise SequenceMoved(last_seq - 1)

    def forget(self, session_id: str) -> None:
        """The claimed number was refused (the write stores nothing)."""
        self._claimed.pop(session_id, None)

    def require_settled(self) -> None:
        """Before the commit: every claimed number was counted."""
        if self._claimed:
            raise RuntimeError(f"sequence numbers claimed but not counted: {self._claimed}")
