"""Scheduling policies under load, in one room on the in-memory store: 50 members x 20
prompts at once through the one door, per policy. Each test checks the promises: nothing
acknowledged lost, nothing run twice, no gap in the sequence numbers, replies in place, and
the stored statuses are the ones shown. (The queue policy runs this load over sockets and
real databases too: ``tests/server/test_policies.py``.)"""

from __future__ import annotations

import asyncio
from typing import Any

from parley.server.runtime.session_writes import SETTINGS_WRITE, apply_session_write
from parley.server.store.memory import MemoryStore
from parley.session.commands import FactCommand, PromptCommand
from parley.session.entries import Entry
from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from parley.session.quota import Quotas
from tests.fake_model import FakeModel, Sent, askers
from tests.server.runtime.harness import FINAL, SESSION, MemorySession, memory_session

CLIENTS = 50
PROMPTS_EACH = 20


def who_asked(sent: Sent) -> list[str]:
    """The model's answer: who asked it, in order."""
    return [" ".join(f"{a} asked" for m in sent.asked for a in askers(m["content"]))]


async def flood(
    s: MemorySession, clients: int = CLIENTS, prompts_each: int = PROMPTS_EACH
) -> list[dict[str, Any]]:
    users = [f"u{i:02d}" for i in range(clients)]
    return list(
        await asyncio.gather(
            *(
                s.send(user, PromptCommand(f"{user}-{n}", f"{user} #{n}"))
                for user in users
                for n in range(prompts_each)
            )
        )
    )


async def converge(
    s: MemorySession, acks: list[dict[str, Any]], timeout_s: float = 60
) -> list[Entry]:
    # ``timeout_s`` guards against a hang only: a thousand prompts on a loaded machine took
    # 10 s and more (the flood itself is measured by nothing here).
    accepted = [str(a["prompt_id"]) for a in acks if a["type"] == "ack"]
    await s.settled(*accepted, timeout_s=timeout_s)
    view = s.room.doc.entries()
    assert len({e.id for e in view}) == len(view)
    seqs = [e.seq for e in view if e.kind == "prompt"]
    assert seqs == list(range(1, len(accepted) + 1))  # no gaps: nothing half-stored
    stored = await s.store.entries_with_status("s", [status.value for status in FINAL])
    assert {r.id: r.status for r in stored} == {e.id: e.status for e in view if e.kind == "prompt"}
    return view


def replies_follow_prompts(view: list[Entry]) -> None:
    by_id = {e.id: e for e in view}
    for index, entry in enumerate(view):
        if entry.kind != "reply":
            continue
        answered = [by_id[p] for p in entry.answers]
        assert view[index - 1].id == entry.reply_to == answered[-1].id
        assert all(p.reply_id == entry.id for p in answered)


def loaded(policy: Policy, model: FakeModel, **options: Any) -> Any:
    """The session of the load (``options``: ``memory_session``'s, a store or a clock)."""
    members = {f"u{i:02d}": "editor" for i in range(CLIENTS)}
    return memory_session(
        members,
        model,
        policy=policy,
        max_pending_per_user=PROMPTS_EACH,
        max_pending_per_session=CLIENTS * PROMPTS_EACH,
        **options,
    )


async def test_coalesce_answers_waiting_prompts_together() -> None:
    async with loaded(Policy.COALESCE, FakeModel(who_asked)) as s:
        acks = await flood(s)
        assert all(a["type"] == "ack" for a in acks)
        view = await converge(s, acks)
        replies_follow_prompts(view)
        replies = [e for e in view if e.kind == "reply"]
        answered = [p for r in replies for p in r.answers]
        assert sorted(answered) == sorted(a["prompt_id"] for a in acks)  # each exactly once
        assert len(replies) < len(acks) / 5  # really coalesced
        assert max(len(r.answers) for r in replies) <= 20  # PARLEY_MAX_PROMPTS_PER_RUN
        batch = max(replies, key=lambda r: len(r.answers))
        by_id = {e.id: e for e in view}
        for prompt_id in batch.answers:
            assert f"{by_id[prompt_id].author} asked" in batch.content


async def test_interrupt_keeps_only_the_newest() -> None:
    async with loaded(Policy.INTERRUPT, FakeModel(who_asked)) as s:
        acks = await flood(s)
        assert all(a["type"] == "ack" for a in acks)
        view = await converge(s, acks)
        replies_follow_prompts(view)
        prompts = [e for e in view if e.kind == "prompt"]
        assert {p.status for p in prompts} <= {"done", "interrupted"}
        assert prompts[-1].status == "done"  # the newest prompt always gets its answer
        by_id = {e.id: e for e in view}
        for prompt in prompts:
            if prompt.reply_id:
                expected = "done" if prompt.status == "done" else "interrupted"
                assert by_id[prompt.reply_id].status == expected
            else:
                assert prompt.status == "interrupted" and prompt.reason_code == "superseded"


async def test_reject_refuses_while_busy_and_stores_nothing() -> None:
    async with loaded(Policy.REJECT, FakeModel(who_asked)) as s:
        acks = await flood(s)
        accepted = [a for a in acks if a["type"] == "ack"]
        refused = [a for a in acks if a["type"] == "error"]
        assert accepted and refused and len(accepted) + len(refused) == len(acks)
        assert {r["code"] for r in refused} == {"busy"}
        view = await converge(s, accepted)
        replies_follow_prompts(view)
        assert all(e.status == "done" for e in view)
        assert len([e for e in view if e.kind == "prompt"]) == len(accepted)


async def test_coalesce_fails_only_the_prompts_of_an_issuer_over_quota() -> None:
    """Bob used his daily tokens; his next prompt waits beside dave's, who used none, and
    coalesce plans one run for both. Bob's fails with ``quota_exceeded`` before the model
    is called; dave's is answered (a prompt fails for its own issuer's quota, or the
    session's, not for another member's: docs/models.md)."""
    model = FakeModel(lambda sent: ["ok"])  # the fake model reports 110 tokens a call
    members = {"alice": "editor", "bob": "editor", "dave": "editor"}
    async with memory_session(members, model, policy=Policy.COALESCE) as s:
        await s.store.set_quotas(SESSION, Quotas(user_tokens_per_day=100))
        await apply_session_write(s.room, {"op": SETTINGS_WRITE})  # as the admin API does
        first = await s.prompt("bob", "first")
        await s.settled(str(first["prompt_id"]))
        model.gate = asyncio.Event()
        holding = await s.prompt("alice", "[wait] hold the model")
        while s.status(str(holding["prompt_id"])) is not PromptStatus.RUNNING:
            await s.watcher.changed()
        over = await s.prompt("bob", "again")
        fresh = await s.prompt("dave", "mine")
        model.gate.set()
        await s.settled(str(over["prompt_id"]), str(fresh["prompt_id"]))
        bobs, daves = (s.room.doc.entry(str(a["prompt_id"])) for a in (over, fresh))
        assert (bobs.status, bobs.reason_code) == ("failed", "quota_exceeded")
        assert (daves.status, daves.reason_code) == ("done", None)


async def held_then(s: MemorySession, model: FakeModel, *prompts: tuple[str, str]) -> list[str]:
    """alice's run holds the model while ``prompts`` (author, text) wait; then it goes on
    and they settle. Their ids, in order."""
    model.gate = asyncio.Event()
    holding = await s.prompt("alice", "[wait] hold the model")
    while s.status(str(holding["prompt_id"])) is not PromptStatus.RUNNING:
        await s.watcher.changed()
    ids = [str((await s.prompt(author, text))["prompt_id"]) for author, text in prompts]
    model.gate.set()
    await s.settled(*ids)
    return ids


SMALL = {"context_window_tokens": 900, "max_output_tokens": 150}  # 750 tokens of input


async def test_coalesce_fails_only_a_prompt_too_large_alone() -> None:
    """Review J7: one member's oversized prompt failed every prompt of the coalesced run
    ``too_large``, even those that fit alone. A prompt too large alone fails alone; the
    others are answered."""
    model = FakeModel(who_asked)
    members = {"alice": "editor", "mallory": "editor", "dave": "editor"}
    async with memory_session(members, model, policy=Policy.COALESCE, **SMALL) as s:
        huge = "export every row of the ledger " * 200  # ~1,200 tokens
        big, small, other = await held_then(
            s, model, ("mallory", huge), ("dave", "what is due?"), ("alice", "and mine?")
        )
        entry = s.room.doc.entry
        assert (entry(big).status, entry(big).reason_code) == ("failed", "too_large")
        assert (entry(small).status, entry(other).status) == ("done", "done")
        assert entry(small).reply_id == entry(other).reply_id  # still coalesced together
        assert who_asked(model.requests[-1]) == ["dave asked alice asked"]


async def test_coalesced_prompts_that_do_not_fit_together_run_one_after_the_other() -> None:
    """Two prompts that each fit alone but not together: both failed ``too_large``. The
    run answers the first; the second waits and is answered next, in order."""
    model = FakeModel(who_asked)
    members = {"alice": "editor", "mallory": "editor", "dave": "editor"}
    async with memory_session(members, model, policy=Policy.COALESCE, **SMALL) as s:
        half = "summarise the ledger rows " * 90  # ~450 tokens each
        first, second = await held_then(s, model, ("mallory", half), ("dave", half + "too"))
        entry = s.room.doc.entry
        assert (entry(first).status, entry(second).status) == ("done", "done")
        assert entry(first).reply_id != entry(second).reply_id
        runs = [who_asked(r) for r in model.requests[-2:]]
        assert runs == [["mallory asked"], ["dave asked"]]


async def test_a_coalesced_run_whose_fixed_part_overflows_is_judged_by_one_build() -> None:
    """Review B3: in a coalesced session whose pins and facts overflow the window, each run
    start judged the prompts it planned with a build for all of them, then one per prompt
    (21 builds of a 1.5 MB system text: a stall of the loop of 0.6-1.5 s per run). The
    facts here were set under a larger window (it shrank since): one build judges
    them all, and every prompt fails with what to remove."""
    members = {"alice": "editor", "bob": "editor", "dave": "editor", "erin": "editor"}
    store = MemoryStore()
    async with memory_session(members, policy=Policy.COALESCE, store=store) as s:
        terms = " ".join(f"clause {n} of the contract" for n in range(80))[:2000]
        for key in ("terms", "more_terms"):
            assert (await s.send("alice", FactCommand(key, key, terms)))["type"] == "ack"
    async with memory_session(members, policy=Policy.COALESCE, store=store, **SMALL) as s:
        s.commands = 1_000  # past the ids the first room used
        ids = [str((await s.prompt(user, f"what about {user}?"))["prompt_id"]) for user in members]
        builds = []
        build = s.room.context.build

        def counted(*args: Any, **kwargs: Any) -> Any:
            builds.append(args)
            return build(*args, **kwargs)

        s.room.context.build = counted  # type: ignore[method-assign]
        assert await s.room.runs.start("model") is None
        assert len(builds) == 1
        ended = [s.room.doc.entry(p) for p in ids]
        assert {(e.status, e.reason_code) for e in ended} == {("failed", "too_large")}
        assert all("remove a fact" in str(e.reason) for e in ended), ended[0].reason
