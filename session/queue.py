"""The per-session ordering queue: a pure state machine over accepted prompts.

The server feeds it events (``admit``/``push`` after a prompt is stored, ``start``,
``finish``, ``remove``) and asks it what to run next; it performs no I/O and never reads a
clock. At most one prompt runs at a time. Prompts run in sequence order (FIFO).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from session.errors import QueueFull
from session.lifecycle import IllegalTransition


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_pending_per_user: int = 5
    max_pending_per_session: int = 100


@dataclass(frozen=True, slots=True)
class PendingPrompt:
    id: str
    seq: int
    author: str


class OrderingQueue:
    def __init__(self, limits: QueueLimits, pending: Iterable[PendingPrompt] = ()) -> None:
        self.limits = limits
        self._pending: list[PendingPrompt] = sorted(pending, key=lambda p: p.seq)
        self._ids = {p.id for p in self._pending}
        self.running: PendingPrompt | None = None
        self._last_seq = max((p.seq for p in self._pending), default=0)

    def admit(self, author: str) -> None:
        """Raise ``QueueFull`` if one more prompt from ``author`` would pass a limit."""
        if len(self._pending) >= self.limits.max_pending_per_session:
            raise QueueFull(
                f"the session already has {len(self._pending)} pending prompts "
                f"(limit {self.limits.max_pending_per_session})"
            )
        mine = sum(1 for p in self._pending if p.author == author)
        if mine >= self.limits.max_pending_per_user:
            raise QueueFull(
                f"you already have {mine} pending prompts "
                f"(limit {self.limits.max_pending_per_user})"
            )

    def push(self, prompt: PendingPrompt) -> None:
        """Add a stored prompt. Sequence numbers must grow: the store hands them out."""
        if prompt.id in self._ids or (self.running and self.running.id == prompt.id):
            raise IllegalTransition(f"prompt {prompt.id} is already queued")
        if prompt.seq <= self._last_seq:
            raise IllegalTransition(f"sequence number {prompt.seq} is not above {self._last_seq}")
        self._last_seq = prompt.seq
        self._pending.append(prompt)
        self._ids.add(prompt.id)

    def next(self) -> PendingPrompt | None:
        """The prompt that should run now, or None (one is running, or none is waiting)."""
        if self.running is not None or not self._pending:
            return None
        return self._pending[0]

    def start(self, prompt_id: str) -> PendingPrompt:
        head = self.next()
        if head is None or head.id != prompt_id:
            raise IllegalTransition(f"prompt {prompt_id} is not next to run")
        self._pending.pop(0)
        self._ids.discard(prompt_id)
        self.running = head
        return head

    def finish(self, prompt_id: str) -> None:
        if self.running is None or self.running.id != prompt_id:
            raise IllegalTransition(f"prompt {prompt_id} is not running")
        self.running = None

    def remove(self, prompt_id: str) -> PendingPrompt:
        """Take a waiting prompt out of the queue (it was cancelled or failed before running)."""
        for index, prompt in enumerate(self._pending):
            if prompt.id == prompt_id:
                self._ids.discard(prompt_id)
                return self._pending.pop(index)
        raise IllegalTransition(f"prompt {prompt_id} is not waiting")

    def is_pending(self, prompt_id: str) -> bool:
        return prompt_id in self._ids

    def pending(self) -> list[PendingPrompt]:
        """Waiting prompts in the order they will run."""
        return list(self._pending)

    def __len__(self) -> int:
        return len(self._pending)
