"""OrderingQueue: a pure state machine over accepted prompts, fed events by hand."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from parley.session.errors import Busy, Conflict, QueueFull
from parley.session.lifecycle import IllegalTransition
from parley.session.queue import OrderingQueue, PendingPrompt, Policy, Pushed, QueueLimits, Run


def prompt(n: int, author: str = "alice") -> PendingPrompt:
    return PendingPrompt(id=f"p{n}", seq=n, author=author)


def queue_with(
    *prompts: PendingPrompt, policy: Policy = Policy.QUEUE, limits: QueueLimits | None = None
) -> OrderingQueue:
    queue = OrderingQueue(limits or QueueLimits(), policy=policy)
    for item in prompts:
        queue.push(item)
    return queue


def drain(queue: OrderingQueue) -> list[tuple[str, ...]]:
    """Run everything that waits, one run at a time; the ids of each run."""
    runs = []
    while (run := queue.next()) is not None:
        queue.start(run)
        assert queue.running == run
        assert queue.next() is None  # nothing else starts while a run is in flight
        queue.finish(run.ids)
        runs.append(run.ids)
    return runs


# -- common to every policy -----------------------------------------------------------------


@pytest.mark.parametrize("policy", list(Policy))
def test_empty_queue_has_nothing_to_run(policy: Policy) -> None:
    queue = OrderingQueue(QueueLimits(), policy=policy)
    assert queue.next() is None
    assert queue.pending() == []
    assert len(queue) == 0
    assert queue.running is None


@pytest.mark.parametrize("policy", [Policy.QUEUE, Policy.COALESCE, Policy.INTERRUPT])
def test_one_run_at_a_time(policy: Policy) -> None:
    queue = queue_with(prompt(1), policy=policy)
    run = queue.next()
    assert run == Run((prompt(1),))
    queue.start(run)
    assert queue.is_running("p1") and not queue.is_pending("p1")
    queue.push(prompt(2, "bob"))
    assert queue.next() is None
    with pytest.raises(IllegalTransition):
        queue.start(Run((prompt(2, "bob"),)))
    queue.finish(("p1",))
    assert queue.running is None
    assert queue.next() == Run((prompt(2, "bob"),))


def test_only_the_next_run_may_start() -> None:
    queue = queue_with(prompt(1), prompt(2))
    with pytest.raises(IllegalTransition):
        queue.start(Run((prompt(2),)))
    with pytest.raises(IllegalTransition):
        queue.start(Run((prompt(1), prompt(2))))
    assert queue.pending() == [prompt(1), prompt(2)]
    assert queue.running is None


def test_finish_only_the_running_run() -> None:
    queue = queue_with(prompt(1), prompt(2))
    with pytest.raises(IllegalTransition):
        queue.finish(("p1",))  # queued, not running
    queue.start(Run((prompt(1),)))
    with pytest.raises(IllegalTransition):
        queue.finish(("p2",))
    queue.finish(("p1",))
    with pytest.raises(IllegalTransition):
        queue.finish(("p1",))  # twice
    assert queue.next() == Run((prompt(2),))


def test_pending_is_a_copy() -> None:
    queue = queue_with(prompt(1))
    queue.pending().clear()
    assert queue.pending() == [prompt(1)]


def test_run_names_its_prompts_and_authors() -> None:
    run = Run((prompt(1, "bob"), prompt(2, "alice"), prompt(3, "bob")))
    assert run.ids == ("p1", "p2", "p3")
    assert run.authors == ("bob", "alice")


# -- queue: round-robin across users, FIFO per user -----------------------------------------


def test_queue_policy_takes_turns_between_users() -> None:
    queue = queue_with(
        prompt(1, "alice"),
        prompt(2, "alice"),
        prompt(3, "alice"),
        prompt(4, "bob"),
        prompt(5, "carol"),
    )
    assert queue.pending() == [
        prompt(1),
        prompt(4, "bob"),
        prompt(5, "carol"),
        prompt(2),
        prompt(3),
    ]
    assert drain(queue) == [("p1",), ("p4",), ("p5",), ("p2",), ("p3",)]


def test_queue_policy_is_fifo_in_seq_order_for_one_user() -> None:
    queue = queue_with(prompt(1), prompt(4), prompt(9))
    assert drain(queue) == [("p1",), ("p4",), ("p9",)]


def test_a_newcomer_joins_the_back_of_the_rotation() -> None:
    queue = queue_with(prompt(1, "alice"), prompt(2, "alice"), prompt(3, "bob"))
    queue.start(Run((prompt(1),)))  # alice moves behind bob
    queue.push(prompt(4, "carol"))
    queue.finish(("p1",))
    assert [p.id for p in queue.pending()] == ["p3", "p2", "p4"]
    assert drain(queue) == [("p3",), ("p2",), ("p4",)]


def test_a_user_who_leaves_the_rotation_rejoins_at_the_back() -> None:
    queue = queue_with(prompt(1, "alice"), prompt(2, "bob"), prompt(3, "bob"))
    queue.start(Run((prompt(1),)))
    queue.finish(("p1",))
    queue.push(prompt(4, "alice"))
    assert drain(queue) == [("p2",), ("p4",), ("p3",)]


# -- coalesce -------------------------------------------------------------------------------


def test_coalesce_answers_everything_waiting_in_one_run() -> None:
    queue = queue_with(prompt(1, "alice"), policy=Policy.COALESCE)
    queue.start(Run((prompt(1),)))  # an idle session runs a prompt alone
    for n, author in [(2, "bob"), (3, "alice"), (5, "carol")]:
        queue.push(prompt(n, author))
    queue.finish(("p1",))
    run = queue.next()
    assert run == Run((prompt(2, "bob"), prompt(3, "alice"), prompt(5, "carol")))
    assert run.authors == ("bob", "alice", "carol")
    queue.start(run)
    assert len(queue) == 0
    assert all(queue.is_running(p) for p in ("p2", "p3", "p5"))
    queue.finish(run.ids)
    assert queue.next() is None


def test_coalesce_answers_at_most_its_cap_per_run_oldest_first() -> None:
    limits = QueueLimits(max_pending_per_user=10, max_pending_per_session=10, max_prompts_per_run=2)
    queue = OrderingQueue(limits, policy=Policy.COALESCE)
    for n, author in [(1, "alice"), (2, "bob"), (3, "carol"), (4, "alice")]:
        queue.push(prompt(n, author))
    first = queue.next()
    assert first == Run((prompt(1, "alice"), prompt(2, "bob")))
    queue.start(first)
    queue.finish(first.ids)
    assert queue.next() == Run((prompt(3, "carol"), prompt(4, "alice")))


@pytest.mark.parametrize("policy", [Policy.QUEUE, Policy.COALESCE, Policy.INTERRUPT])
def test_the_runs_to_a_prompt_are_those_drained_runs_give_up_to_it(policy: Policy) -> None:
    """Review RD-5: what a preview shows is the run that would answer the member's prompt
    were the run in flight over: under ``coalesce`` with the prompts it is answered with."""
    limits = QueueLimits(max_pending_per_user=10, max_pending_per_session=10, max_prompts_per_run=2)
    queue = OrderingQueue(limits, policy=policy)
    queue.push(prompt(1, "carol"))
    queue.start(Run((prompt(1, "carol"),)))  # in flight
    for n, author in [(2, "alice"), (3, "bob"), (4, "alice"), (5, "carol"), (6, "bob")]:
        queue.push(prompt(n, author))
    before = queue.pending()
    planned = {p.id: [run.ids for run in queue.runs_to(p.id)] for p in before}
    assert queue.pending() == before and queue.is_running("p1")  # the queue is untouched
    queue.finish(("p1",))
    runs = drain(queue)
    for prompt_id, taking in planned.items():
        # The run that takes it last, those before it first (review RN-4: their prompts
        # are in its call).
        assert taking == runs[: runs.index(next(r for r in runs if prompt_id in r)) + 1]
    assert queue_with(policy=policy).runs_to("p9") == []
    if policy is Policy.COALESCE:
        assert planned["p2"][-1] == ("p2", "p3")  # alice's and bob's prompts together


def test_coalesce_may_start_the_first_of_the_planned_prompts_and_the_rest_wait_in_order() -> None:
    """A run takes those that fit the window together (``session.run_fit``); the others
    are first in line for the next run."""
    queue = queue_with(
        prompt(1, "alice"), prompt(2, "bob"), prompt(3, "carol"), policy=Policy.COALESCE
    )
    with pytest.raises(IllegalTransition):
        queue.start(Run((prompt(2, "bob"),)))  # not a first part: would skip alice's
    with pytest.raises(IllegalTransition):
        queue.start(Run(()))
    queue.start(Run((prompt(1, "alice"),)))
    assert queue.pending() == [prompt(2, "bob"), prompt(3, "carol")]
    queue.finish(("p1",))
    assert queue.next() == Run((prompt(2, "bob"), prompt(3, "carol")))


def test_a_restored_queue_resumes_the_turn_order_it_is_given() -> None:
    stored = [prompt(1, "alice"), prompt(2, "bob"), prompt(3, "carol"), prompt(4, "alice")]
    fresh = OrderingQueue(QueueLimits(), stored)
    assert [p.author for p in fresh.pending()] == ["alice", "bob", "carol", "alice"]
    resumed = OrderingQueue(QueueLimits(), stored, rotation=["carol", "alice", "nobody"])
    assert [p.author for p in resumed.pending()] == ["carol", "alice", "bob", "alice"]


# -- interrupt ------------------------------------------------------------------------------


def test_interrupt_policy_supersedes_waiting_and_stops_the_running_reply() -> None:
    queue = OrderingQueue(QueueLimits(), policy=Policy.INTERRUPT)
    assert queue.push(prompt(1)) == Pushed(interrupt_running=False, superseded=())
    queue.start(Run((prompt(1),)))
    assert queue.push(prompt(2, "bob")) == Pushed(interrupt_running=True, superseded=())
    pushed = queue.push(prompt(3, "carol"))
    assert pushed == Pushed(interrupt_running=True, superseded=(prompt(2, "bob"),))
    assert queue.pending() == [prompt(3, "carol")]
    assert not queue.is_pending("p2")
    queue.finish(("p1",))
    assert drain(queue) == [("p3",)]


def test_interrupt_policy_never_fills_up() -> None:
    limits = QueueLimits(max_pending_per_user=1, max_pending_per_session=1)
    queue = queue_with(prompt(1), policy=Policy.INTERRUPT, limits=limits)
    queue.admit("alice")
    queue.push(prompt(2))
    assert queue.pending() == [prompt(2)]


# -- reject ---------------------------------------------------------------------------------


def test_reject_policy_refuses_while_busy() -> None:
    queue = OrderingQueue(QueueLimits(), policy=Policy.REJECT)
    queue.admit("alice")
    queue.push(prompt(1))
    with pytest.raises(Busy):
        queue.admit("bob")  # one waits
    queue.start(Run((prompt(1),)))
    with pytest.raises(Busy) as info:
        queue.admit("bob")  # one runs
    assert "p1" in info.value.message and "alice" in info.value.message
    assert info.value.code == "busy"
    queue.finish(("p1",))
    queue.admit("bob")


# -- admission limits -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", [Policy.QUEUE, Policy.COALESCE])
def test_admit_limits_pending_prompts_per_user(policy: Policy) -> None:
    limits = QueueLimits(max_pending_per_user=2, max_pending_per_session=10)
    queue = queue_with(prompt(1, "alice"), prompt(2, "alice"), policy=policy, limits=limits)
    with pytest.raises(QueueFull) as info:
        queue.admit("alice")
    assert (info.value.code, info.value.http_status) == ("queue_full", 429)
    assert isinstance(info.value, Conflict)
    queue.admit("bob")  # someone else is not held back


@pytest.mark.parametrize("policy", [Policy.QUEUE, Policy.COALESCE])
def test_admit_limits_pending_prompts_per_session(policy: Policy) -> None:
    limits = QueueLimits(max_pending_per_user=5, max_pending_per_session=3)
    queue = queue_with(prompt(1, "a"), prompt(2, "b"), prompt(3, "c"), policy=policy, limits=limits)
    for user in ("a", "d"):
        with pytest.raises(QueueFull):
            queue.admit(user)


def test_admit_counts_waiting_prompts_not_the_running_one() -> None:
    limits = QueueLimits(max_pending_per_user=1, max_pending_per_session=1)
    queue = queue_with(prompt(1, "alice"), limits=limits)
    with pytest.raises(QueueFull):
        queue.admit("alice")
    queue.start(Run((prompt(1),)))
    queue.admit("alice")


def test_admit_frees_a_slot_when_a_prompt_is_removed() -> None:
    limits = QueueLimits(max_pending_per_user=1, max_pending_per_session=10)
    queue = queue_with(prompt(1, "alice"), limits=limits)
    with pytest.raises(QueueFull):
        queue.admit("alice")
    queue.remove("p1")
    queue.admit("alice")


# -- push -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 3, 5])
def test_push_rejects_a_sequence_number_that_does_not_grow(seq: int) -> None:
    queue = queue_with(prompt(1), prompt(5))
    with pytest.raises(IllegalTransition):
        queue.push(PendingPrompt(id="new", seq=seq, author="bob"))
    assert queue.pending() == [prompt(1), prompt(5)]
    assert not queue.is_pending("new")


def test_push_remembers_the_last_sequence_number_after_prompts_leave() -> None:
    queue = queue_with(prompt(1), prompt(2))
    drain(queue)
    with pytest.raises(IllegalTransition):
        queue.push(PendingPrompt(id="late", seq=2, author="alice"))
    queue.push(prompt(3))
    assert queue.pending() == [prompt(3)]


def test_push_rejects_a_duplicate_waiting_id() -> None:
    queue = queue_with(prompt(1))
    with pytest.raises(IllegalTransition):
        queue.push(PendingPrompt(id="p1", seq=2, author="bob"))
    assert queue.pending() == [prompt(1)]


def test_push_rejects_the_running_id() -> None:
    queue = queue_with(prompt(1))
    queue.start(Run((prompt(1),)))
    with pytest.raises(IllegalTransition):
        queue.push(PendingPrompt(id="p1", seq=2, author="alice"))
    assert queue.pending() == []
    assert queue.running == Run((prompt(1),))


# -- remove ---------------------------------------------------------------------------------


def test_remove_takes_a_waiting_prompt_out_of_line() -> None:
    queue = queue_with(prompt(1), prompt(2, "bob"), prompt(3))
    assert queue.remove("p2") == prompt(2, "bob")
    assert queue.pending() == [prompt(1), prompt(3)]
    assert not queue.is_pending("p2")
    assert queue.remove("p1") == prompt(1)
    assert queue.next() == Run((prompt(3),))


def test_remove_refuses_unknown_and_running_prompts() -> None:
    queue = queue_with(prompt(1), prompt(2))
    queue.start(Run((prompt(1),)))
    with pytest.raises(IllegalTransition):
        queue.remove("p1")
    with pytest.raises(IllegalTransition):
        queue.remove("zzz")
    queue.remove("p2")
    with pytest.raises(IllegalTransition):
        queue.remove("p2")
    assert queue.running == Run((prompt(1),))


# -- restore, clone, policy changes ---------------------------------------------------------


def test_restore_sorts_pending_prompts_by_sequence() -> None:
    stored = [prompt(7, "bob"), prompt(2), prompt(5, "carol"), prompt(3)]
    queue = OrderingQueue(QueueLimits(), stored)
    assert all(queue.is_pending(p.id) for p in stored)
    assert queue.running is None
    assert drain(queue) == [("p2",), ("p5",), ("p7",), ("p3",)]


@pytest.mark.parametrize("policy", [Policy.COALESCE, Policy.INTERRUPT, Policy.REJECT])
def test_restore_under_other_policies_orders_by_sequence(policy: Policy) -> None:
    queue = OrderingQueue(QueueLimits(), [prompt(7, "bob"), prompt(2)], policy)
    assert queue.pending() == [prompt(2), prompt(7, "bob")]


def test_restore_continues_above_the_highest_restored_sequence() -> None:
    queue = OrderingQueue(QueueLimits(), [prompt(7), prompt(3)])
    with pytest.raises(IllegalTransition):
        queue.push(PendingPrompt(id="x", seq=7, author="alice"))
    queue.push(prompt(8))
    assert [p.seq for p in queue.pending()] == [3, 7, 8]


def test_restore_applies_admission_limits() -> None:
    limits = QueueLimits(max_pending_per_user=2, max_pending_per_session=10)
    queue = OrderingQueue(limits, [prompt(1), prompt(2)])
    with pytest.raises(QueueFull):
        queue.admit("alice")


def test_a_clone_is_independent() -> None:
    queue = queue_with(prompt(1), prompt(2, "bob"), prompt(3))
    queue.start(Run((prompt(1),)))
    copy = queue.clone()
    with pytest.raises(IllegalTransition):
        copy.push(PendingPrompt(id="stale", seq=3, author="dave"))  # it keeps the last seq
    copy.finish(("p1",))
    copy.remove("p2")
    copy.push(prompt(4, "carol"))
    copy.set_policy(Policy.COALESCE)
    assert queue.running == Run((prompt(1),))
    assert queue.pending() == [prompt(2, "bob"), prompt(3)]
    assert queue.policy is Policy.QUEUE
    assert copy.pending() == [prompt(3), prompt(4, "carol")]
    queue.push(prompt(4))  # the copy's push did not move the original's last seq
    assert queue.pending() == [prompt(2, "bob"), prompt(3), prompt(4)]


def test_set_policy_reorders_what_waits() -> None:
    queue = queue_with(prompt(1), prompt(2), prompt(3, "bob"))
    assert [p.id for p in queue.pending()] == ["p1", "p3", "p2"]
    queue.set_policy(Policy.COALESCE)
    assert queue.next() == Run((prompt(1), prompt(2), prompt(3, "bob")))
    queue.set_policy(Policy.QUEUE)
    assert queue.next() == Run((prompt(1),))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(list(Policy)),
    st.lists(st.sampled_from(["alice", "bob", "carol"]), max_size=12),
)
def test_pending_predicts_the_run_order(policy: Policy, authors: list[str]) -> None:
    queue = OrderingQueue(QueueLimits(100, 100), [prompt(n, a) for n, a in enumerate(authors, 1)])
    queue.set_policy(policy)
    predicted = queue.pending()
    ran = [p for ids in drain(queue) for p in ids]
    assert ran == [p.id for p in predicted]


# -- the state machine under random events --------------------------------------------------

USERS = ("alice", "bob", "carol")
LIMITS = QueueLimits(max_pending_per_user=3, max_pending_per_session=5)


class QueueMachine(RuleBasedStateMachine):
    """Drive an OrderingQueue the way a room does, crashes included, against a model.

    The policy is fixed per example. A crash fails the run in flight and rebuilds the queue
    from the prompts still stored as queued, in whatever order the database returns them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.policy = Policy.QUEUE
        self.queue = OrderingQueue(LIMITS)
        self.next_seq = 1
        self.floor = 0  # the highest seq this queue instance has seen
        self.pushed: list[PendingPrompt] = []  # in push order, across crashes
        self.pending: dict[str, PendingPrompt] = {}
        self.running: Run | None = None
        self.outcome: dict[str, str] = {}  # id -> run | cancelled | superseded | failed
        self.start_count: dict[str, int] = {}
        self.runs: list[Run] = []
        # For the round-robin bound: runs each other user started since a prompt became its
        # author's oldest waiting one (reset on a crash: a new queue makes no promise).
        self.waited: dict[str, dict[str, int]] = {}

    @initialize(policy=st.sampled_from(list(Policy)))
    def choose_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.queue = OrderingQueue(LIMITS, policy=policy)

    def _oldest(self, author: str) -> PendingPrompt | None:
        mine = [p for p in self.pending.values() if p.author == author]
        return min(mine, key=lambda p: p.seq) if mine else None

    def _track_heads(self) -> None:
        heads = {p.id for a in USERS if (p := self._oldest(a)) is not None}
        self.waited = {pid: self.waited.get(pid, {}) for pid in heads}

    # The store hands out sequence numbers for messages too, so gaps are normal.
    @rule(author=st.sampled_from(USERS), gap=st.integers(0, 3))
    def submit(self, author: str, gap: int) -> None:
        busy = self.running is not None or bool(self.pending)
        mine = sum(1 for p in self.pending.values() if p.author == author)
        if self.policy is Policy.REJECT and busy:
            with pytest.raises(Busy):
                self.queue.admit(author)
            return
        full = len(self.pending) >= LIMITS.max_pending_per_session
        full = full or mine >= LIMITS.max_pending_per_user
        if self.policy is not Policy.INTERRUPT and full:
            with pytest.raises(QueueFull):
                self.queue.admit(author)
            return
        self.queue.admit(author)
        self.next_seq += gap
        item = PendingPrompt(id=f"p{self.next_seq}", seq=self.next_seq, author=author)
        self.next_seq += 1
        pushed = self.queue.push(item)
        if self.policy is Policy.INTERRUPT:
            assert pushed.interrupt_running == (self.running is not None)
            assert sorted(pushed.superseded, key=lambda p: p.seq) == sorted(
                self.pending.values(), key=lambda p: p.seq
            )
            for old in pushed.superseded:
                del self.pending[old.id]
                self.outcome[old.id] = "superseded"
        else:
            assert pushed == Pushed()
        self.floor = item.seq
        self.pushed.append(item)
        self.pending[item.id] = item
        self._track_heads()

    @rule(author=st.sampled_from(USERS), data=st.data())
    def push_stale_sequence(self, author: str, data: st.DataObject) -> None:
        if self.floor == 0:
            return
        seq = data.draw(st.integers(1, self.floor))
        before = self.queue.pending()
        with pytest.raises(IllegalTransition):
            self.queue.push(PendingPrompt(id=f"stale{seq}", seq=seq, author=author))
        assert self.queue.pending() == before

    @precondition(lambda self: self.pending or self.running is not None)
    @rule(data=st.data())
    def push_duplicate_id(self, data: st.DataObject) -> None:
        live = [*self.pending.values(), *(self.running.prompts if self.running else ())]
        victim = data.draw(st.sampled_from(sorted(live, key=lambda p: p.seq)))
        before = self.queue.pending()
        with pytest.raises(IllegalTransition):
            self.queue.push(PendingPrompt(id=victim.id, seq=self.next_seq, author=victim.author))
        assert self.queue.pending() == before

    @rule()
    def start(self) -> None:
        run = self.queue.next()
        if self.running is not None or not self.pending:
            assert run is None
            return
        assert run is not None
        assert run.prompts
        if self.policy is Policy.COALESCE:
            assert set(run.ids) == set(self.pending)
        else:
            assert len(run.prompts) == 1
        for item in run.prompts:
            assert self.pending[item.id] == item
        if self.policy is Policy.QUEUE:
            (item,) = run.prompts
            assert item == self._oldest(item.author)  # each user's prompts keep their order
            for head, counts in self.waited.items():
                if head != item.id and self.pending[head].author != item.author:
                    counts[item.author] = counts.get(item.author, 0) + 1
                    assert counts[item.author] <= 1, (
                        f"{head} waited through two runs of {item.author}"
                    )
        self.queue.start(run)
        for item in run.prompts:
            del self.pending[item.id]
            self.start_count[item.id] = self.start_count.get(item.id, 0) + 1
        self.running = run
        self.runs.append(run)
        self._track_heads()

    @precondition(lambda self: self.running is not None)
    @rule()
    def finish(self) -> None:
        assert self.running is not None
        self.queue.finish(self.running.ids)
        for item in self.running.prompts:
            self.outcome[item.id] = "run"
        self.running = None

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.pending.values(), key=lambda p: p.seq)))
        assert self.queue.remove(item.id) == item
        del self.pending[item.id]
        self.outcome[item.id] = "cancelled"
        with pytest.raises(IllegalTransition):
            self.queue.remove(item.id)
        self._track_heads()

    @rule(shuffle_seed=st.integers(0, 2**32 - 1))
    def crash_and_recover(self, shuffle_seed: int) -> None:
        if self.running is not None:
            for item in self.running.prompts:
                self.outcome[item.id] = "failed"
            self.running = None
        stored = list(self.pending.values())
        random.Random(shuffle_seed).shuffle(stored)
        self.queue = OrderingQueue(LIMITS, stored, self.policy)
        self.floor = max((p.seq for p in stored), default=0)
        self.waited = {}
        self._track_heads()

    @rule()
    def work_on_a_clone(self) -> None:
        """The server changes a copy of the queue and swaps it in on commit."""
        self.queue = self.queue.clone()

    @invariant()
    def the_kept_count_is_the_waiting_list(self) -> None:
        assert len(self.queue) == len(self.queue.pending())

    @invariant()
    def queue_matches_model(self) -> None:
        assert self.queue.running == self.running
        assert sorted(self.queue.pending(), key=lambda p: p.seq) == sorted(
            self.pending.values(), key=lambda p: p.seq
        )
        assert len(self.queue) == len(self.pending)
        for item in self.pushed:
            assert self.queue.is_pending(item.id) == (item.id in self.pending)

    @invariant()
    def at_most_one_run_in_flight(self) -> None:
        running = self.queue.running
        if running is not None:
            assert not any(self.queue.is_pending(p.id) for p in running.prompts)
            assert self.queue.next() is None

    @invariant()
    def no_prompt_lost(self) -> None:
        in_flight = set(self.running.ids) if self.running else set()
        for item in self.pushed:
            places = [item.id in self.outcome, item.id in self.pending, item.id in in_flight]
            assert places.count(True) == 1, item

    @invariant()
    def none_started_twice(self) -> None:
        assert all(count == 1 for count in self.start_count.values())

    @invariant()
    def seqs_grow_in_push_order(self) -> None:
        assert all(a.seq < b.seq for a, b in pairwise(self.pushed))

    @invariant()
    def runs_respect_sequence_order(self) -> None:
        for run in self.runs:
            assert all(a.seq < b.seq for a, b in pairwise(run.prompts))
        started = [p for run in self.runs for p in run.prompts]
        if self.policy is Policy.QUEUE:
            for user in USERS:
                mine = [p.seq for p in started if p.author == user]
                assert mine == sorted(mine)
        else:
            assert [p.seq for p in started] == sorted(p.seq for p in started)

    @invariant()
    def interrupt_keeps_at_most_one_waiting(self) -> None:
        if self.policy is Policy.INTERRUPT:
            assert len(self.queue) <= 1


QueueMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=40, deadline=None)
test_queue_state_machine = QueueMachine.TestCase
