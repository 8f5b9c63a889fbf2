"""A session's sequence numbers, claimed by a transaction's entries and counted in its last
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
    """The sequence numbers a transaction claimed for its entries, by session, until the
    session's counter moves (in the transaction's last statement for it)."""

    def __init__(self) -> None:
        self._claimed: dict[str, tuple[int, int]] = {}  # session: (the first, how many)

    def claim(self, session_id: str, seq: int) -> None:
        first, count = self._claimed.get(session_id, (seq, 0))
        if seq != first + count:
            raise ValueError(f"sequence number {seq} claimed out of order")
        self._claimed[session_id] = (first, count + 1)

    def take(self, session_id: str) -> int:
        """How many the session's counter must move by (0: none claimed)."""
        return self._claimed.get(session_id, (0, 0))[1]

    def counted(self, session_id: str, last_seq: int) -> None:
        """The counter moved and now reads ``last_seq``: ``SequenceMoved`` unless the
        claimed numbers were the next ones."""
        first, count = self._claimed.pop(session_id)
        if last_seq != first + count - 1:
            raise SequenceMoved(last_seq - count)

    def require_settled(self) -> None:
        """Before the commit: every claimed number was counted."""
        if self._claimed:
            raise RuntimeError(f"sequence numbers claimed but not counted: {self._claimed}")
