"""The per-session ordering queue: a pure state machine over accepted prompts.

The server feeds it events (``admit`` before a prompt is stored, ``push`` after, ``start``,
``finish``, ``remove``) and asks it what to run next; it performs no I/O and reads no clock.
At most one run is in flight. What runs next depends on the session's policy:

``queue`` (default) — one prompt per run, round-robin across users. Users with waiting
    prompts form a rotation, in the order they joined it. The next run takes the oldest
    waiting prompt of the user at the head of the rotation; that user then moves to the
    tail if they still have prompts waiting, or leaves it. A user whose first prompt arrives
    joins at the tail. So a waiting prompt that is its author's oldest runs after at most one
    prompt of each other user with prompts waiting, and each user's prompts keep their order.
``coalesce`` — every prompt waiting when the previous run ends is answered by one run, in
    sequence order, up to ``max_prompts_per_run`` (the oldest first; the rest wait for the
    next run); a prompt arriving on an idle session runs alone. A run may start with only
    the first of the prompts planned (those that fit the context window together:
    ``session.run_fit``); the rest wait for the next run.
``interrupt`` — a new prompt interrupts the running reply and supersedes any prompt still
    waiting (both end ``interrupted``); it runs next. At most one prompt waits at a time.
``reject`` — while a run is in flight or a prompt waits, a new prompt is refused with
    ``busy`` naming the running prompt; nothing is stored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from parley.session.errors import Busy, QueueFull
from parley.session.lifecycle import IllegalTransition


class Policy(StrEnum):
    QUEUE = "queue"
    COALESCE = "coalesce"
    INTERRUPT = "interrupt"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_pending_per_user: int = 5
    max_pending_per_session: int = 100
    max_prompts_per_run: int = 20  # coalesce: one call answers at most this many


@dataclass(frozen=True, slots=True)
class PendingPrompt:
    id: str
    seq: int
    author: str
    # The claims of the token from another member's invite link it was sent with (None:
    # none, or another token): judged again when its run starts (``runs.start_refusal``).
    # An ``authz.tokens.ClientClaims``, carried here for ``session.core`` (which judges it):
    # the queue does not import ``authz`` (tests/test_layers.py).
    link_token: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Run:
    """Prompts answered by one model call, in sequence order (several only when coalescing)."""

    prompts: tuple[PendingPrompt, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.prompts)

    @property
    def authors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.author for p in self.prompts))


@dataclass(frozen=True, slots=True)
class Pushed:
    """What the server must do after a push: stop the running reply, drop waiting prompts."""

    interrupt_running: bool = False
    superseded: tuple[PendingPrompt, ...] = field(default_factory=tuple)


class OrderingQueue:
    def __init__(
        self,
        limits: QueueLimits,
        pending: Iterable[PendingPrompt] = (),
        policy: Policy = Policy.QUEUE,
        rotation: Iterable[str] = (),
    ) -> None:
        """``rotation``: the round-robin turn order to resume (authors named first take
        their turns first; the others follow by their oldest prompt), so a restart does
        not reshuffle whose turn it is."""
        self.limits = limits
        self.policy = policy
        self.running: Run | None = None
        self._by_user: dict[str, deque[PendingPrompt]] = {}
        self._rotation: deque[str] = deque()
        self._count = 0
        self._last_seq = 0
        for prompt in sorted(pending, key=lambda p: p.seq):
            self._add(prompt)
        resumed = [a for a in dict.fromkeys(rotation) if a in self._by_user]
        self._rotation = deque([*resumed, *(a for a in self._rotation if a not in resumed)])

    # -- admission --------------------------------------------------------------------------

    def admit(self, author: str) -> None:
        """Raise ``Busy`` or ``QueueFull`` if a prompt from ``author`` may not be stored now."""
        if self.policy is Policy.REJECT and (self.running is not None or self._count):
            if self.running is not None:
                first = self.running.prompts[0]
                raise Busy(
                    f"prompt {first.id} by {first.author} is running; "
                    "this session rejects prompts while busy"
                )
            raise Busy("a prompt is about to run; this session rejects prompts while busy")
        if self.policy is Policy.INTERRUPT:
            return  # a newcomer supersedes whatever waits, so the queue cannot grow
        if self._count >= self.limits.max_pending_per_session:
            raise QueueFull(
                f"the session already has {self._count} pending prompts "
                f"(limit {self.limits.max_pending_per_session})"
            )
        mine = len(self._by_user.get(author, ()))
        if mine >= self.limits.max_pending_per_user:
            raise QueueFull(
                f"you already have {mine} pending prompts "
                f"(limit {self.limits.max_pending_per_user})"
            )

    def push(self, prompt: PendingPrompt) -> Pushed:
        """Add a stored prompt; sequence numbers must grow (the store hands them out)."""
        if self.is_pending(prompt.id) or self.is_running(prompt.id):
            raise IllegalTransition(f"prompt {prompt.id} is already queued")
        if prompt.seq <= self._last_seq:
            raise IllegalTransition(f"sequence number {prompt.seq} is not above {self._last_seq}")
        superseded: tuple[PendingPrompt, ...] = ()
        if self.policy is Policy.INTERRUPT:
            superseded = tuple(self.pending())
            for old in superseded:
                self.remove(old.id)
        self._add(prompt)
        return Pushed(
            interrupt_running=self.policy is Policy.INTERRUPT and self.running is not None,
            superseded=superseded,
        )

    def _add(self, prompt: PendingPrompt) -> None:
        mine = self._by_user.get(prompt.author)
        if mine is None:
            mine = self._by_user[prompt.author] = deque()
            self._rotation.append(prompt.author)
        mine.append(prompt)
        self._count += 1
        self._last_seq = prompt.seq

    # -- running ----------------------------------------------------------------------------

    def next(self) -> Run | None:
        """The run that should start now, or None (one is in flight, or nothing waits)."""
        if self.running is not None or not self._count:
            return None
        if self.policy is Policy.COALESCE:
            return Run(tuple(self.pending()[: self.limits.max_prompts_per_run]))
        if self.policy is Policy.QUEUE:
            return Run((self._by_user[self._rotation[0]][0],))
        return Run((min(self._heads(), key=lambda p: p.seq),))

    def runs_to(self, prompt_id: str) -> list[Run]:
        """The runs that would start were the run in flight over now, each started and
        ended in turn and nothing else sent meanwhile, up to the one that answers
        ``prompt_id`` (empty: it does not wait). That last one holds, under ``coalesce``,
        the prompts answered with it (review RD-5: a context preview made while another run
        streamed showed the member's prompt alone, with their own tools, and the call took
        it with another member's, with none); those before it answer prompts its call is
        given as history (review RN-4). Bounded by the prompts waiting: each run takes one
        at least."""
        queue = self.clone()
        queue.running = None
        runs: list[Run] = []
        while (run := queue.next()) is not None:
            runs.append(run)
            if prompt_id in run.ids:
                return runs
            queue.start(run)
            queue.finish(run.ids)
        return []

    def start(self, run: Run) -> None:
        """Start ``run``: the run ``next`` plans, or the first of its prompts (the rest
        wait, first in line for the next run)."""
        planned = self.next()
        if planned is None or not run.prompts or run.prompts != planned.prompts[: len(run.prompts)]:
            raise IllegalTransition(f"prompts {list(run.ids)} are not next to run")
        for prompt in run.prompts:
            self._take(prompt.id)
        if self.policy is Policy.QUEUE:
            author = run.prompts[0].author
            if author in self._by_user:  # still has prompts waiting: back of the rotation
                self._rotation.remove(author)
                self._rotation.append(author)
        self.running = run

    def finish(self, run_ids: tuple[str, ...]) -> None:
        if self.running is None or self.running.ids != run_ids:
            raise IllegalTransition(f"prompts {list(run_ids)} are not running")
        self.running = None

    def remove(self, prompt_id: str) -> PendingPrompt:
        """Take a waiting prompt out (it was cancelled, superseded or failed before running)."""
        if not self.is_pending(prompt_id):
            raise IllegalTransition(f"prompt {prompt_id} is not waiting")
        return self._take(prompt_id)

    def _take(self, prompt_id: str) -> PendingPrompt:
        for author, mine in self._by_user.items():
            for prompt in mine:
                if prompt.id == prompt_id:
                    mine.remove(prompt)
                    self._count -= 1
                    if not mine:
                        del self._by_user[author]
                        self._rotation.remove(author)
                    return prompt
        raise IllegalTransition(f"prompt {prompt_id} is not waiting")

    # -- reading ----------------------------------------------------------------------------

    def _heads(self) -> list[PendingPrompt]:
        return [mine[0] for mine in self._by_user.values()]

    def is_pending(self, prompt_id: str) -> bool:
        return any(p.id == prompt_id for mine in self._by_user.values() for p in mine)

    def is_running(self, prompt_id: str) -> bool:
        return self.running is not None and prompt_id in self.running.ids

    def pending(self) -> list[PendingPrompt]:
        """Waiting prompts in the order they will run if nothing else arrives."""
        if self.policy is not Policy.QUEUE:
            return sorted((p for m in self._by_user.values() for p in m), key=lambda p: p.seq)
        lanes = {author: list(self._by_user[author]) for author in self._rotation}
        order: list[PendingPrompt] = []
        rotation = list(self._rotation)
        while rotation:
            author = rotation.pop(0)
            order.append(lanes[author].pop(0))
            if lanes[author]:
                rotation.append(author)
        return order

    def clone(self) -> OrderingQueue:
        """An independent copy: the server changes a copy and swaps it in on commit."""
        copy = OrderingQueue(self.limits, policy=self.policy)
        copy.running = self.running
        copy._by_user = {author: deque(mine) for author, mine in self._by_user.items()}
        copy._rotation = deque(self._rotation)
        copy._count = self._count
        copy._last_seq = self._last_seq
        return copy

    def set_policy(self, policy: Policy) -> None:
        """Change the policy; waiting prompts stay and are ordered by the new rule."""
        self.policy = policy

    def __len__(self) -> int:
        """How many prompts wait: a kept count (``len(pending())`` builds the list)."""
        return self._count
