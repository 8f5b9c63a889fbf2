"""The queue policy under load on SQLite and PostgreSQL: 50 members x 20 prompts at once
(25 x 10 on PostgreSQL) through the one door of a room on the real store, no app and no
socket. (The other policies run this load on the in-memory store, and the helpers live there:
``tests/server/runtime/test_policies.py``; prompts over sockets: ``tests/server/test_ws.py``
and ``tests/server/test_concurrency.py``.)

The test checks the promises (nothing acknowledged lost, nothing run twice, no gap in the
sequence numbers, replies in place, the stored statuses those shown, each user's prompts in
their order) and prints the longest queue wait and the fairness figure.
"""

from __future__ import annotations

import itertools
import time

import pytest

from parley.server.store.sessions import Store
from parley.session.entries import Entry
from parley.session.events import StoredEvent
from parley.session.queue import Policy
from tests.fake_model import Answer, FakeModel, Sent
from tests.server.runtime.backend import sql_store
from tests.server.runtime.harness import SESSION
from tests.server.runtime.test_policies import (
    CLIENTS,
    PROMPTS_EACH,
    converge,
    flood,
    loaded,
    replies_follow_prompts,
    who_asked,
)

# The heaviest tests share one xdist worker: never two of them at once on two cores.
pytestmark = pytest.mark.xdist_group("heavy")


def answer(sent: Sent) -> Answer:
    """Who asked; and a summary when one is asked for, so the history the model is given
    stays short as the load drains (as the built-in model's summaries keep it)."""
    if sent.purpose == "summary":
        return ["Members asked in turn; each was answered."]
    return who_asked(sent)


async def stored_events(store: Store) -> list[StoredEvent]:
    """Every event of the load's session, in commit order."""
    events: list[StoredEvent] = []
    while page := await store.events_after(SESSION, events[-1].seq if events else 0, 1000):
        events += page
    return events


def report(policy: str, view: list[Entry]) -> dict[str, float]:
    prompts = [e for e in view if e.kind == "prompt" and e.started_at is not None]
    waits = [int(e.started_at or 0) - e.created_at for e in prompts]
    figure = {
        "prompts_run": len(prompts),
        "model_calls": sum(1 for e in view if e.kind == "reply"),
        "longest_wait_ms": max(waits, default=0),
    }
    print(f"\n[{policy}] {figure}")
    return figure


async def test_queue_is_fair_round_robin(database_url: str) -> None:
    # The whole 50 x 20 on SQLite; on PostgreSQL, the slower store here (a run commits over
    # the network), 25 members send 10 each: the same rules, a quarter of the runs.
    clients, each = (CLIENTS, PROMPTS_EACH) if "sqlite" in database_url else (25, 10)
    async with (
        sql_store(database_url) as store,
        loaded(Policy.QUEUE, FakeModel(answer), store=store, clock=time.time) as s,
    ):
        acks = await flood(s, clients, each)
        assert all(a["type"] == "ack" for a in acks)
        # A thousand runs, each stored: minutes on a machine running other tests too.
        view = await converge(s, acks, timeout_s=600)
        events = await stored_events(store)
    replies_follow_prompts(view)
    assert all(e.status == "done" for e in view)
    # The order things happened in is the order they were committed in (the events'
    # numbers), not their time stamps: a prompt is stamped as it arrives, and waits for
    # the writer before the queue knows of it.
    accepted = {e.data["prompt_id"]: e.seq for e in events if e.kind == "prompt_accepted"}
    started = [e for e in events if e.kind == "run_started"]
    authors = {e.id: e.author for e in view if e.kind == "prompt"}
    runs = [(e.seq, authors[e.data["prompt_ids"][0]], e.data["prompt_ids"][0]) for e in started]
    assert all(len(e.data["prompt_ids"]) == 1 for e in started)
    # Each user's own prompts run in their order.
    seq_of = {e.id: e.seq for e in view if e.kind == "prompt"}
    by_user: dict[str, list[int]] = {}
    for _, author, prompt_id in runs:
        by_user.setdefault(author, []).append(seq_of[prompt_id])
    assert all(seqs == sorted(seqs) for seqs in by_user.values())
    # Each reply answers its own prompt alone, asked by its author.
    by_id = {e.id: e for e in view}
    assert all(by_id[r.answers[0]].author in r.content for r in view if r.kind == "reply")
    # Fairness: between two runs of a user whose next prompt was already waiting when the
    # run after the first began, no other user runs twice.
    worst = 0
    waiting_pairs = 0
    for user in by_user:
        indexes = [i for i, r in enumerate(runs) if r[1] == user]
        for first, second in itertools.pairwise(indexes):
            if accepted[runs[second][2]] > runs[first + 1][0]:
                continue  # the next prompt was not waiting yet
            waiting_pairs += 1
            between = [r[1] for r in runs[first + 1 : second]]
            assert len(between) == len(set(between)), (user, between)
            worst = max(worst, max((between.count(a) for a in set(between)), default=0))
    assert waiting_pairs  # the load queued prompts: the fairness rule was put to the test
    figure = report("queue", view)
    print(f"[queue] most runs by one other user between two runs of a waiting user: {worst}")
    assert figure["prompts_run"] == clients * each
