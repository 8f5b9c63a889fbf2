"""A membership change stored while the session ran nowhere (its node killed, or stopped
between the change's write and its stop) ends the prompts it would have stopped, with the
same reason, once the session is loaded again: the run-start judgment knows them
(``session.core.runs.start_refusal``), not only the stop that never reached them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.authz.tokens import ClientClaims, issue_token
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.store.access import AccessStore
from parley.server.store.access_rows import TokenRow
from parley.server.store.db import create_engine
from parley.server.store.memory import MemoryStore
from parley.server.store.rows import MemberRow
from parley.server.store.sessions import Store
from parley.session.commands import PromptCommand
from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from tests.conftest import make_settings
from tests.fake_model import FakeModel
from tests.server.runtime.harness import (
    SESSION,
    ManualClock,
    RecordingOffline,
    Watcher,
    add_members,
    memory_session,
)

MEMBERS: dict[str, str | Member] = {"olga": "owner", "bob": "editor"}


async def _waiting(store: MemoryStore, clock: ManualClock, author: str) -> list[str]:
    """``author``'s prompts stored and waiting in a room that then goes away unstopped (no
    runner: nothing runs them)."""
    async with memory_session(MEMBERS, store=store, clock=clock) as s:
        acks = [await s.prompt(author, f"q{k}") for k in range(2)]
        ids = [str(ack["prompt_id"]) for ack in acks]
        assert all(s.status(p) is PromptStatus.QUEUED for p in ids)
    return ids


async def _ended(store: MemoryStore, clock: ManualClock, prompt_ids: list[str]) -> set[str]:
    """Load the room again with a runner: the reason codes ``prompt_ids`` end with."""
    async with memory_session(
        MEMBERS, FakeModel(lambda sent: ["ok"]), store=store, clock=clock
    ) as s:
        theirs = [str((await s.prompt("olga", "mine"))["prompt_id"])]
        await s.settled(*prompt_ids, *theirs)
        assert s.status(theirs[0]) is PromptStatus.DONE  # the others' prompts still run
        assert all(s.status(p) is PromptStatus.FAILED for p in prompt_ids)
        return {str(s.room.doc.entry(p).reason_code) for p in prompt_ids}


async def _change(store: MemoryStore, clock: ManualClock, member: Member | None) -> None:
    now_ms = int(clock() * 1000)
    await store.change_member(SESSION, "bob", member, now_ms, lambda *_: Decision(True, "t"))


async def test_prompts_waiting_when_their_token_was_revoked_fail_token_revoked() -> None:
    store, clock = MemoryStore(), ManualClock()
    waiting = await _waiting(store, clock, "bob")
    clock.advance(1)
    revoked = TokenRow("t1", "bob", int(clock()) + 3600, True, int(clock() * 1000))
    await store.access.revoke_token(SESSION, revoked)
    assert await _ended(store, clock, waiting) == {"token_revoked"}


async def test_prompts_sent_after_a_revocation_still_run() -> None:
    store, clock = MemoryStore(), ManualClock()
    revoked = TokenRow("t1", "bob", int(clock()) + 3600, True, int(clock() * 1000))
    await store.create_session(SESSION, "t", "queue", 0)
    await add_members(store, MEMBERS)
    await store.access.revoke_token(SESSION, revoked)
    clock.advance(1)
    waiting = await _waiting(store, clock, "bob")
    async with memory_session(
        MEMBERS, FakeModel(lambda sent: ["ok"]), store=store, clock=clock
    ) as s:
        await s.settled(*waiting)
        assert all(s.status(p) is PromptStatus.DONE for p in waiting)


async def test_prompts_waiting_when_their_member_was_removed_fail_member_removed() -> None:
    store, clock = MemoryStore(), ManualClock()
    waiting = await _waiting(store, clock, "bob")
    await _change(store, clock, None)
    assert await _ended(store, clock, waiting) == {"member_removed"}


async def test_prompts_waiting_when_their_member_was_removed_and_added_back_fail_too() -> None:
    store, clock = MemoryStore(), ManualClock()
    waiting = await _waiting(store, clock, "bob")
    clock.advance(1)
    await _change(store, clock, None)
    await _change(store, clock, Member("bob", "editor"))
    assert await _ended(store, clock, waiting) == {"member_removed"}


async def test_a_token_revoked_in_the_database_ends_its_members_prompts_at_the_next_load(
    database_url: str, tmp_path: Path
) -> None:
    """As the REST revoke writes it (``AccessStore.revoke_token``), on SQLite and
    PostgreSQL: the time of the revocation is kept with the token."""
    store, clock = Store(create_engine(database_url)), ManualClock()
    settings = make_settings(database_url, tmp_path)
    try:
        await store.create_session(SESSION, "t", Policy.QUEUE.value, 0)
        for user_id, role in MEMBERS.items():
            member = Member(user_id, str(role))
            await store.change_member(SESSION, user_id, member, 0, lambda *_: Decision(True, "t"))
        access = AccessStore(store)

        def mint(member: MemberRow) -> tuple[str, ClientClaims]:
            now = int(clock())
            return issue_token(
                "k" * 32, user_id="bob", session_id=SESSION, now=now, ttl_seconds=3600
            )

        issued = await access.record_token(SESSION, "bob", int(clock()), mint)
        assert issued is not None
        first = SessionRoom(SESSION, store=store, settings=settings, clock=clock)
        await first.load("t", Policy.QUEUE)
        waiting = []
        for k in range(2):
            ack = json.loads(await dispatch(first, "bob", PromptCommand(f"c{k}", "q")))
            waiting.append(str(ack["prompt_id"]))
        first.close()  # gone before the revocation's stop could reach it
        clock.advance(1)
        assert await access.revoke_token(SESSION, issued[2].token_id, int(clock() * 1000))

        again = SessionRoom(SESSION, store=store, settings=settings, clock=clock)
        await again.load("t", Policy.QUEUE)
        watcher = Watcher()  # woken by each frame the room sends
        again.connections.add(watcher)  # type: ignore[arg-type]
        runner = SessionRunner(again, RecordingOffline(), run_timeout_s=10)
        runner.start()
        try:
            async with asyncio.timeout(10):
                while any(again.doc.entry(p).status == "queued" for p in waiting):
                    await watcher.changed()
        finally:
            await runner.stop()
        ended = [again.doc.entry(p) for p in waiting]
        assert [(e.status, e.reason_code) for e in ended] == [("failed", "token_revoked")] * 2
    finally:
        await store.close()
