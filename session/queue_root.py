"""The document's ``queue`` root beside the ordering queue: the fewest edits that make the
root list a plan (``queue_edits``), and the queue a document shows (``queue_of``)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from parley.session.entries import EntryKind
from parley.session.history import Excluded
from parley.session.lifecycle import PromptStatus
from parley.session.queue import OrderingQueue, PendingPrompt, Policy, QueueLimits, Run

if TYPE_CHECKING:
    from parley.session.schema import SessionDocument


def queue_of(document: SessionDocument, limits: QueueLimits) -> OrderingQueue:
    """The ordering queue a document shows: its ``queue`` root (the waiting prompts in the
    order they will run), the policy in ``meta`` and the run in flight (its prompts are
    ``running``). A read replica answers from it what the running node answers from its
    own queue, of which the document is the committed plan."""
    waiting = document.queued()
    queue = OrderingQueue(
        limits,
        [PendingPrompt(item.id, item.seq, item.author) for item in waiting],
        Policy(document.meta.get("policy") or Policy.QUEUE.value),
        rotation=[item.author for item in waiting],
    )
    running = [
        PendingPrompt(e.id, e.seq, e.author)
        for e in document.entries()
        if e.kind is EntryKind.PROMPT and e.status == PromptStatus.RUNNING.value
    ]
    if running:
        queue.running = Run(tuple(sorted(running, key=lambda p: p.seq)))
    return queue


# Why a preview lists what the call it shows will be given but the story does not hold yet.
RUNNING = "running: given once its run ends"
ANSWERED_FIRST = "waiting: a run before this one answers it, given once that run ends"


def not_given_yet(
    document: SessionDocument, running: Run | None, runs_before: Sequence[Run] = ()
) -> list[Excluded]:
    """What a call will be given that a build now leaves out, as no part of the story yet:
    the prompts of the run in flight (``running``), its tool steps and its reply, however
    that run ends; and the prompts of ``runs_before``, the runs that start before the call's
    (``OrderingQueue.runs_to``). A preview lists them (review RN-4: it left the run in
    flight out unsaid, and the call then carried its prompt and reply)."""
    found: list[Excluded] = []
    if running is not None:
        found += [Excluded(p.id, RUNNING) for p in running.prompts]
        reply_id = document.entry(running.prompts[-1].id).reply_id
        if reply_id is not None and document.has_entry(reply_id):
            found += [Excluded(s.id, RUNNING) for s in document.tool_steps(reply_id)]
            found.append(Excluded(reply_id, RUNNING))
    for run in runs_before:
        found += [Excluded(p.id, ANSWERED_FIRST) for p in run.prompts]
    return found


def queue_edits(current: Sequence[str], wanted: Sequence[str]) -> tuple[list[int], list[int]]:
    """The fewest edits that turn the ids ``current`` into ``wanted``: the indexes in
    ``current`` to delete (last first), then the indexes in ``wanted`` to insert at (first
    first). The longest run of items already in planned order stays, every other item is
    deleted, and the planned items not there are inserted where they go. (Rewriting the tail
    past the first item out of place cost the whole queue per prompt when round-robin placed
    a member's burst between other members' prompts: quadratic in the queue.)"""
    stay = _kept_in_order(current, wanted)
    deleted = [index for index in range(len(current) - 1, -1, -1) if current[index] not in stay]
    # After the deletions the root holds ``stay`` in planned order: walking the plan, each
    # item not there goes in at its own index.
    inserted = [index for index, id in enumerate(wanted) if id not in stay]
    return deleted, inserted


def _kept_in_order(current: Sequence[str], wanted: Sequence[str]) -> set[str]:
    """The largest set of ``current`` ids whose order there is their order in ``wanted``
    (a longest increasing subsequence of their planned positions, O(n log n))."""
    position = {id: index for index, id in enumerate(wanted)}
    ranks = [(position[id], id) for id in current if id in position]
    tails: list[int] = []  # tails[k]: index in ranks ending the best run of length k + 1
    tail_ranks: list[int] = []  # their ranks, for the binary search
    before: list[int] = [-1] * len(ranks)
    for index, (rank, _) in enumerate(ranks):
        length = bisect.bisect_left(tail_ranks, rank)
        if length:
            before[index] = tails[length - 1]
        if length == len(tails):
            tails.append(index)
            tail_ranks.append(rank)
        else:
            tails[length] = index
            tail_ranks[length] = rank
    kept: set[str] = set()
    index = tails[-1] if tails else -1
    while index >= 0:
        kept.add(ranks[index][1])
        index = before[index]
    return kept
