"""Private side-threads in one room on the in-memory store: what their runs are given,
that they run beside the session's queue, their limits, sharing back, restricted material,
membership changes and a reload."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from parley.authz.policy import Readers
from parley.server.http import access as access_api
from parley.server.http import members as members_api
from parley.server.http import threads as threads_api
from parley.server.http.models import MemberPut
from parley.server.http.resource_models import DocumentCreate, ReadersIn
from parley.server.runtime import context as context_module
from parley.server.runtime.context import SessionContext
from parley.server.runtime.session_writes import SETTINGS_WRITE, apply_session_write
from parley.server.store.access_rows import DocumentRow
from parley.server.store.memory import MemoryStore
from parley.session.commands import MessageCommand, PromptCommand
from parley.session.context import ContextBuilder
from parley.session.core import SideThread
from parley.session.core.threads import SUMMARY_REQUEST
from parley.session.lifecycle import PromptStatus
from parley.session.quota import Quotas
from parley.session.recent_acks import RecentAcks
from parley.session.thread_commands import (
    ThreadCloseCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
    ThreadShareCommand,
)
from tests.conftest import sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, Status, call
from tests.server.runtime.backend import backend, sql_store
from tests.server.runtime.harness import (
    SESSION,
    MemorySession,
    Watcher,
    memory_session,
    memory_settings,
)

MARKER = "ZQX-private-7f3e"  # in bob's side-thread only
SECRET = "the vault code is 7731"


class Gate:
    """A stream step: says it was reached (``entered``), then waits until ``opened``."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self) -> None:
        self.entered.set()
        await self.opened.wait()


GATE = Gate()


def answer_with(sent: Sent) -> Answer:
    """Repeat what was asked, so a reply carries its prompt's marker; a prompt saying
    ``[hold]`` waits at ``GATE`` first."""
    asked = sent.asked_text()
    if "vault" in asked and sent.messages[-1]["role"] != "tool":
        return [call("search_documents", {"query": "vault code"})]
    answer = f"you asked: {asked[-80:]}"
    return [GATE, answer] if "[hold]" in asked else [answer]


def watch(s: MemorySession, user_id: str) -> Watcher:
    watcher = Watcher(user_id)
    s.room.connections.add(watcher)  # type: ignore[arg-type]
    return watcher


async def open_thread(s: MemorySession, user_id: str, anchor: str | None = None) -> str:
    ack = await s.send(user_id, ThreadOpenCommand(s.next_id(), anchor, "t"))
    assert ack["type"] == "ack", ack
    return str(ack["thread_id"])


async def ask(s: MemorySession, user_id: str, thread_id: str, text: str) -> dict[str, Any]:
    return await s.send(user_id, ThreadPromptCommand(s.next_id(), thread_id, text))


def thread(s: MemorySession, thread_id: str) -> SideThread:
    return s.room.side_threads.threads[thread_id]


async def answered(s: MemorySession, thread_id: str) -> SideThread:
    """Wait until no run is under way in the side-thread (checked after each frame its
    owner's socket gets: the only one told of it)."""
    owner = thread(s, thread_id).owner
    sockets = [c for c in s.room.connections if isinstance(c, Watcher) and c.user_id == owner]
    watcher = sockets[0] if sockets else watch(s, owner)
    async with asyncio.timeout(10):
        while thread(s, thread_id).running:
            await watcher.changed()
    return thread(s, thread_id)


def frames_text(watcher: Watcher) -> str:
    return "\n".join(f if isinstance(f, str) else f.decode("latin-1") for f in watcher.frames)


async def test_a_side_thread_sees_the_session_up_to_its_anchor_then_its_own_turns() -> None:
    model = FakeModel(answer_with)
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        alice = watch(s, "alice")
        asked = await s.prompt("alice", "shared question one")
        await s.settled(asked["prompt_id"])
        anchor = await s.message("bob", "the anchor message")
        await s.message("alice", "said after the anchor")
        thread_id = await open_thread(s, "bob", anchor["message_id"])
        first = await ask(s, "bob", thread_id, f"{MARKER} is my reading right?")
        assert first["type"] == "ack" and first["turn_id"] and first["reply_id"]
        await answered(s, thread_id)
        await ask(s, "bob", thread_id, "and then?")
        done = await answered(s, thread_id)

        [one, two] = model.requests_for("bob")
        for request in (one, two):
            text = request.everything()
            assert "shared question one" in text and "the anchor message" in text
            assert "said after the anchor" not in text
        assert MARKER in one.asked_text()
        assert MARKER in two.everything() and "and then?" in two.asked_text()
        assert [t.kind for t in done.turns] == ["prompt", "reply", "prompt", "reply"]
        assert all(t.status == "done" for t in done.turns)

        # Nothing of it in the shared document, alice's frames or her model inputs.
        assert all(MARKER not in e.content for e in s.room.doc.entries())
        assert MARKER not in frames_text(alice)
        later = await s.prompt("alice", "what now?")
        await s.settled(later["prompt_id"])
        assert all(MARKER not in r.everything() for r in model.requests_for("alice"))
        assert MARKER not in frames_text(alice)


async def test_a_reply_shared_back_is_bobs_message_once_for_everyone() -> None:
    model = FakeModel(answer_with)
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, f"{MARKER} check")
        reply = next(t for t in (await answered(s, thread_id)).turns if t.kind == "reply")
        shared = await s.send("bob", ThreadShareCommand("share", thread_id, None, (reply.id,)))
        assert shared["type"] == "ack" and shared["seq"] == 1
        again = await s.send("bob", ThreadShareCommand("share", thread_id, None, (reply.id,)))
        assert again == shared  # a resent share gets its first ack, nothing is posted twice
        [message] = s.room.doc.entries()
        assert (message.author, message.kind.value, message.source) == (
            "bob",
            "message",
            "private_thread",
        )
        assert message.content == reply.text
        asked = await s.prompt("alice", "what did bob find?")
        await s.settled(asked["prompt_id"])
        [request] = model.requests_for("alice")
        assert request.everything().count(reply.text) == 1


async def test_a_summary_draft_is_a_reply_of_the_thread_and_is_shared_as_edited() -> None:
    model = FakeModel(answer_with)
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "look into the logs")
        await answered(s, thread_id)
        summarise = ThreadPromptCommand("sum", thread_id, "", summarise=True)
        assert (await s.send("bob", summarise))["type"] == "ack"
        draft = (await answered(s, thread_id)).turns[-1]
        assert draft.kind == "reply" and draft.summarise
        # The server's words, under the server's line (review RN: ``[bob asks you]``).
        asked = model.requests[-1].messages[-1]
        assert asked["content"] == f"[the server asks you, for bob]\n{SUMMARY_REQUEST}"
        assert asked["name"] == "bob"  # who asked for it: their quota, their ``name``
        edited = ThreadShareCommand("post", thread_id, "The logs look fine (checked).", ())
        assert (await s.send("bob", edited))["type"] == "ack"
        assert [e.content for e in s.room.doc.entries()] == ["The logs look fine (checked)."]


async def test_side_thread_runs_and_the_session_queue_proceed_in_parallel() -> None:
    global GATE
    GATE = Gate()
    model = FakeModel(answer_with)
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        held = await s.prompt("alice", "[hold] a long one")
        await GATE.entered.wait()
        waiting = [await s.prompt(u, f"{u} next") for u in ("alice", "bob")]
        order = [item.id for item in s.room.doc.queued()]
        # The session's run is held at the gate: a side-thread is answered meanwhile.
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "quick private check")
        assert (await answered(s, thread_id)).turns[-1].status == "done"
        assert s.status(held["prompt_id"]) is PromptStatus.RUNNING
        assert [item.id for item in s.room.doc.queued()] == order
        # And a side-thread run held at the gate does not hold the session's queue: the
        # gate opens for the session's run only once the thread's run waits at it too.
        GATE.entered.clear()
        await ask(s, "bob", thread_id, "[hold] a long private one")
        await GATE.entered.wait()
        assert model.requests[-1].issuers == ("bob",)
        assert thread(s, thread_id).running
        GATE.opened.set()
        await s.settled(held["prompt_id"], *(w["prompt_id"] for w in waiting))
        prompts = [e.id for e in s.room.doc.entries() if e.kind.value == "prompt"]
        assert prompts == [held["prompt_id"], *order]
        await answered(s, thread_id)


async def test_one_member_holds_no_more_than_their_share_of_the_side_thread_runs() -> None:
    """Review (one bad client never hurts the others): prompting in 4 of her side-threads,
    mallory held every run the session allows at once (4), and bob's prompts were
    ``thread_runs_busy`` for as long as her runs lasted. A member holds at most their share
    (``PARLEY_MAX_THREAD_RUNS_PER_MEMBER``, 2); the others keep the rest."""
    model = FakeModel(answer_with)
    model.gate = asyncio.Event()
    async with memory_session({"mallory": "editor", "bob": "editor"}, model) as s:
        hers = [await open_thread(s, "mallory") for _ in range(4)]
        asked = [await ask(s, "mallory", t, "[wait] hold") for t in hers]
        assert [a.get("code", a["type"]) for a in asked] == ["ack"] * 2 + ["thread_runs_busy"] * 2
        assert "your share" in asked[2]["message"]
        his = [await open_thread(s, "bob") for _ in range(3)]
        answers = [await ask(s, "bob", t, "[wait] mine") for t in his]
        assert [a.get("code", a["type"]) for a in answers] == ["ack"] * 2 + ["thread_runs_busy"]
        assert sum(t.running for t in s.room.side_threads.threads.values()) == 4
        model.gate.set()
        for thread_id in hers[:2] + his[:2]:
            await answered(s, thread_id)
        assert (await ask(s, "mallory", hers[2], "now"))["type"] == "ack"  # hers are done


async def test_limits_on_threads_turns_and_concurrent_runs() -> None:
    model = FakeModel(answer_with)
    model.gate = asyncio.Event()
    members = {"alice": "editor", "bob": "editor"}
    limits = {"max_threads_per_member": 1, "max_thread_turns": 4}
    async with memory_session(members, model, max_thread_runs_per_session=1, **limits) as s:
        mine = await open_thread(s, "bob")
        more = await s.send("bob", ThreadOpenCommand("x", None, ""))
        assert more["code"] == "thread_limit"
        await ask(s, "bob", mine, "[wait] hold")
        await s.until(lambda s: thread(s, mine).running)
        assert (await ask(s, "bob", mine, "again"))["code"] == "busy"
        hers = await open_thread(s, "alice")
        # Past the session's one run, hers: a member's first is never refused for the
        # others' runs (review RV41-F1); her second would be, her share being one.
        assert (await ask(s, "alice", hers, "[wait] mine too"))["type"] == "ack"
        # Another member's thread is not there for alice (nor confirmed to exist).
        assert (await ask(s, "alice", mine, "peek"))["code"] == "not_found"
        model.gate.set()
        await answered(s, mine)
        await answered(s, hers)
        await ask(s, "bob", mine, "second")
        await answered(s, mine)
        assert (await ask(s, "bob", mine, "third"))["code"] == "thread_limit"
        closed = await s.send("bob", ThreadCloseCommand("c", mine, delete=False))
        assert closed["type"] == "ack"
        assert (await ask(s, "alice", hers, "now"))["type"] == "ack"
        await answered(s, hers)
        assert (await ask(s, "bob", mine, "x"))["code"] in ("thread_closed", "thread_limit")


async def test_restricted_material_is_used_in_the_thread_and_sharing_follows_the_policy() -> None:
    model = FakeModel(answer_with)
    vault = DocumentRow("d1", SESSION, "Vault", SECRET, Readers("d1", frozenset({"bob"})), 0)
    members = {"alice": "editor", "bob": "editor", "olga": "owner"}
    async with memory_session(members, model) as s:
        await s.store.access.add_document(vault)
        alice = watch(s, "alice")
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "what is the vault code?")
        done = await answered(s, thread_id)
        reply = done.turns[-1]
        assert [t.kind for t in done.turns] == ["prompt", "tool", "reply"]
        assert "7731" in reply.text and reply.restriction
        assert "7731" not in frames_text(alice)
        by_pick = ThreadShareCommand("p", thread_id, None, (reply.id,))
        refused = await s.send("bob", by_pick)
        assert refused["code"] == "restricted_share"
        # Free text from a thread that drew on it is held to the same rule.
        by_text = ThreadShareCommand("t", thread_id, "nothing secret here", ())
        assert (await s.send("bob", by_text))["code"] == "restricted_share"
        assert s.room.doc.entries() == []
        # Under ``shared`` the owner let such replies into the document: sharing is audited.
        s.room.use_settings(None, "shared")
        assert (await s.send("bob", by_pick))["type"] == "ack"
        [message] = s.room.doc.entries()
        assert "7731" in message.content
        records = await s.store.access.list_audit(
            SESSION, limit=50, after=0, kinds=["reply_shared"]
        )
        assert [r.data["thread_id"] for r in records] == [thread_id]


async def test_a_member_denied_a_source_no_longer_reads_it_in_their_side_thread(
    tmp_path: Path,
) -> None:
    """Bob's side-thread drew on the vault while he could read it. Once he is denied it
    (``read:<document>``), reading his side-thread gives him no more of it than the
    session's own paths would (``…/entries/{id}/private`` judges the reader now, and his
    next side-thread prompt is not given it): the REST read shows a placeholder."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(answer_with)) as b,
    ):
        sid = await b.new_session({"olga": "owner", "bob": "editor"})
        vault = DocumentCreate(title="Vault", text=SECRET, readers=ReadersIn(users=["bob"]))
        document = await b.call(access_api.create_document, session_id=sid, body=vault)
        s = await b.session(sid)
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "what is the vault code?")
        assert "7731" in (await answered(s, thread_id)).turns[-1].text
        denied = MemberPut(role="editor", denials=[f"read:{document.id}"])
        await b.call(members_api.put_member, session_id=sid, user_id="bob", body=denied)
        read = await b.call(
            threads_api.get_thread,
            await b.member(sid, "bob"),
            session_id=sid,
            thread_id=thread_id,
        )
        assert b"7731" not in read.body


async def test_listing_ones_side_threads_reads_no_other_members_turns(tmp_path: Path) -> None:
    """What a member's ``GET …/threads`` costs depends on their own side-threads, not on
    everyone's: a viewer with none, listing them again and again, must not make the
    server read every member's turns (on SQLite, on the event loop's thread)."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(answer_with)) as b,
    ):
        sid = await b.new_session({"bob": "editor", "carol": "viewer"})
        s = await b.session(sid)
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, MARKER)
        await answered(s, thread_id)
        carol = await b.member(sid, "carol")
        read: list[tuple[str, Any]] = []

        def seen(_c: object, _cur: object, statement: str, parameters: Any, *_: object) -> None:
            read.append((statement, parameters))

        engine = store.engine.sync_engine
        event.listen(engine, "before_cursor_execute", seen)
        try:
            listed = await b.call(threads_api.list_threads, carol, session_id=sid)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert json.loads(listed.body)["threads"] == []
        turns = [(q, p) for q, p in read if "FROM side_thread_turns" in q]
        assert all("carol" in str(p) for _, p in turns), turns


async def test_rest_and_socket_refuse_an_oversized_thread_command_with_one_code(
    tmp_path: Path,
) -> None:
    """A title over 200 characters, or more than 50 picked replies, is the same refusal
    whichever way it comes: the socket's command and the REST route give one code."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(answer_with)) as b,
    ):
        sid = await b.new_session({"bob": "editor"})
        token = await b.token(sid, "bob")
        room = await b.rooms.get(sid)
        base = f"/api/v1/sessions/{sid}/threads"
        opened = await b.request("POST", base, {"title": "t"}, token=token)
        thread_id = opened.json()["thread_id"]
        picked = [f"t{n}" for n in range(51)]
        cases = [
            (base, {"title": "x" * 201}, {"type": "thread_open", "title": "x" * 201}),
            (
                f"{base}/{thread_id}/share-replies",
                {"turn_ids": picked},
                {"type": "thread_share", "thread_id": thread_id, "turn_ids": picked},
            ),
        ]
        for n, (url, body, command) in enumerate(cases):
            refused = await b.request("POST", url, body, token=token)
            frame = json.dumps({**command, "id": f"c{n}"})
            answer = json.loads(await b.rooms.command(room, "bob", frame))
            assert refused.json()["error"]["code"] == answer["code"], (url, refused.text, answer)


async def test_every_side_thread_run_is_audited_with_its_scope() -> None:
    model = FakeModel(answer_with)
    async with memory_session({"bob": "editor"}, model) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "hello")
        await answered(s, thread_id)
        [record] = await s.store.access.list_audit(SESSION, limit=50, after=0, kinds=["model_call"])
        assert record.data["thread_id"] == thread_id
        assert record.data["issuers"] == [{"user_id": "bob", "role": "editor"}]
        assert "prompt" in record.data["capabilities"]


async def test_removing_the_member_stops_their_side_thread_run() -> None:
    global GATE
    GATE = Gate()
    async with memory_session({"alice": "editor", "bob": "editor"}, FakeModel(answer_with)) as s:
        thread_id = await open_thread(s, "bob")
        watch(s, "bob")
        await ask(s, "bob", thread_id, "[hold] long")
        await GATE.entered.wait()
        await s.room.membership.set_member("bob", None)
        done = await answered(s, thread_id)
        assert done.turns[0].status == "failed"
        assert done.turns[0].reason_code == "member_removed"


async def test_a_role_that_may_no_longer_prompt_stops_the_side_thread_run() -> None:
    global GATE
    GATE = Gate()
    async with memory_session({"bob": "editor"}, FakeModel(answer_with)) as s:
        thread_id = await open_thread(s, "bob")
        watch(s, "bob")
        await ask(s, "bob", thread_id, "[hold] long")
        await GATE.entered.wait()
        # The same epoch: a role change.
        viewer = replace(s.room.membership.members["bob"], role="viewer")
        await s.room.membership.set_member("bob", viewer)
        done = await answered(s, thread_id)
        assert done.turns[0].reason_code == "forbidden"
        assert (await ask(s, "bob", thread_id, "more"))["code"] == "forbidden"


async def test_side_threads_survive_a_reload_and_a_cut_off_run_is_marked() -> None:
    store = MemoryStore()
    model = FakeModel(answer_with)
    model.gate = asyncio.Event()
    async with memory_session({"bob": "editor"}, model, store=store) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "kept")
        await answered(s, thread_id)
        await ask(s, "bob", thread_id, "[wait] cut off")
        await s.until(lambda s: thread(s, thread_id).running)
    async with memory_session({"bob": "editor"}, FakeModel(answer_with), store=store) as s:
        kept = thread(s, thread_id)
        assert [t.status for t in kept.turns] == ["done", "done", "failed"]
        assert kept.turns[-1].reason_code == "server_restart"
        s.commands = 100  # ids the session before did not use: theirs are still theirs
        assert (await ask(s, "bob", thread_id, "go on"))["type"] == "ack"
        assert (await answered(s, thread_id)).turns[-1].status == "done"


async def test_deleting_a_thread_removes_it_and_tells_only_its_owner() -> None:
    async with memory_session({"alice": "editor", "bob": "editor"}, FakeModel()) as s:
        alice, bob = watch(s, "alice"), watch(s, "bob")
        thread_id = await open_thread(s, "bob")
        deleted = await s.send("bob", ThreadCloseCommand("d", thread_id, delete=True))
        assert deleted["type"] == "ack"
        assert thread_id not in s.room.side_threads.threads
        assert await s.store.load_threads(SESSION) == []
        told = [json.loads(f) for f in bob.frames if isinstance(f, str)]
        assert {"type": "thread_deleted", "thread_id": thread_id} in told
        assert thread_id not in frames_text(alice)


async def test_the_members_daily_quota_holds_in_their_side_threads() -> None:
    model = FakeModel(answer_with)
    async with memory_session({"bob": "editor"}, model) as s:
        await s.store.set_quotas(SESSION, Quotas(user_tokens_per_day=100))
        await apply_session_write(s.room, {"op": SETTINGS_WRITE})  # as the admin API does
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "first")  # the fake model reports 110 tokens used
        assert (await answered(s, thread_id)).turns[-1].status == "done"
        await ask(s, "bob", thread_id, "second")
        prompt = (await answered(s, thread_id)).turns[-2]
        assert (prompt.kind, prompt.reason_code) == ("prompt", "quota_exceeded")
        assert len(model.requests) == 1  # no model call without the quota


def quotes_or_invents(sent: Sent) -> Answer:
    """A provider's error quoting the input, or (``[invent]``) a call of a tool whose name
    spells it out."""
    if "[invent]" in sent.asked_text() and sent.messages[-1]["role"] != "tool":
        return [call(f"{MARKER}-tool", {}, f"call-{MARKER}")]
    if "[invent]" in sent.asked_text():
        return ["done"]
    return Status(400, f"bad request near: {sent.everything()[-300:]}")


async def test_what_the_model_says_in_a_side_thread_stays_out_of_the_audit_log() -> None:
    """Review (no confused deputy): the audit log, which other owners read, carried a
    provider's error quoting bob's side-thread prompt as the run's reason, and the name
    and call id of a tool the model made up there. A side-thread's text is bob's alone:
    all are withheld from the audit log (the call is named by its tool turn's id)."""
    model = FakeModel(quotes_or_invents, echo_tools=False)
    async with memory_session({"olga": "owner", "bob": "editor"}, model) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, f"{MARKER}: I plan to resign")
        await answered(s, thread_id)
        assert thread(s, thread_id).turns[-1].reason_code == "provider_error"
        await ask(s, "bob", thread_id, f"{MARKER} again [invent]")
        await answered(s, thread_id)
        records = await s.store.access.list_audit(SESSION, limit=100, after=0, kinds=None)
        kinds = {r.kind for r in records}
        assert {"run_ended", "tool_refused", "model_call"} <= kinds
        assert MARKER not in str([r.data for r in records])
        calls = [c for r in records if r.kind == "model_call" for c in r.data["tool_calls"]]
        steps = [t.id for t in thread(s, thread_id).turns if t.kind == "tool"]
        assert [c["id"] for c in calls] == steps and steps


async def test_a_thread_prompt_may_not_reuse_a_stored_prompts_id(tmp_path: Path) -> None:
    """Review: once a restart had emptied the recent acks, a side-thread prompt under the
    id of a stored session prompt was stored and run: two commands under one id. It is a
    conflict, on the store's word."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(answer_with)) as b,
    ):
        s = await b.session(await b.new_session({"bob": "editor"}))
        stored = await s.send("bob", PromptCommand("x1", "in the session"))
        assert stored["type"] == "ack"
        opened = await s.send("bob", ThreadOpenCommand("o", None, "mine"))
        s.room.recent_acks = RecentAcks()  # as a restart leaves them
        reused = await s.send("bob", ThreadPromptCommand("x1", opened["thread_id"], "other"))
        assert (reused["type"], reused["code"]) == ("error", "conflict"), reused


async def test_a_share_under_a_stored_messages_id_is_a_conflict(tmp_path: Path) -> None:
    """Review: once a restart had emptied the recent acks, a share under the id of a stored
    message, with other text, was acked as that message and nothing was shared."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(answer_with)) as b,
    ):
        s = await b.session(await b.new_session({"bob": "editor"}))
        assert (await s.send("bob", MessageCommand("mm1", "hello")))["type"] == "ack"
        opened = await s.send("bob", ThreadOpenCommand("o", None, "mine"))
        s.room.recent_acks = RecentAcks()  # as a restart leaves them
        share = ThreadShareCommand("mm1", opened["thread_id"], "never stored", ())
        refused = await s.send("bob", share)
        assert (refused["type"], refused["code"]) == ("error", "conflict"), refused
        assert [e.content for e in s.room.doc.entries()] == ["hello"]


async def test_a_deleted_threads_open_and_prompt_resent_get_their_first_acks() -> None:
    """Review: a side-thread's open and prompt, resent once its deletion had taken their
    rows and the recent acks no longer held them, opened it again under a new id. The
    store keeps their acks (the in-memory one as the database does)."""
    async with memory_session({"bob": "editor"}, FakeModel(answer_with)) as s:
        opened = await s.send("bob", ThreadOpenCommand("o", None, "mine"))
        thread_id = opened["thread_id"]
        asked = await s.send("bob", ThreadPromptCommand("q", thread_id, "why?"))
        await answered(s, thread_id)
        deleted = await s.send("bob", ThreadCloseCommand("d", thread_id, True))
        assert [a["type"] for a in (opened, asked, deleted)] == ["ack"] * 3
        s.room.recent_acks = RecentAcks()  # as a restart leaves them
        assert await s.send("bob", ThreadOpenCommand("o", None, "mine")) == opened
        assert await s.send("bob", ThreadPromptCommand("q", thread_id, "why?")) == asked
        assert await s.send("bob", ThreadCloseCommand("d", thread_id, True)) == deleted
        other = await s.send("bob", ThreadOpenCommand("o", None, "other"))
        assert (other["type"], other["code"]) == ("error", "conflict"), other
        assert s.room.side_threads.threads == {}
        assert await s.store.load_threads(SESSION) == []


class FoldsAhead:
    """``SessionContext.fold_ahead`` counted: the entries each call folded, ``step`` per
    pass of the loop (``FOLD_STEP``); ``started`` set at the first call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: int) -> None:
        self.folded: list[int] = []
        self.started = asyncio.Event()
        fold_ahead = SessionContext.fold_ahead

        async def counted(context: SessionContext, *args: Any, **named: Any) -> int:
            self.started.set()
            self.folded.append(await fold_ahead(context, *args, **named))
            return self.folded[-1]

        monkeypatch.setattr(context_module, "FOLD_STEP", step)
        monkeypatch.setattr(SessionContext, "fold_ahead", counted)


async def launch_plan(s: MemorySession, messages: int = 120) -> None:
    for i in range(messages):
        await s.message("alice" if i % 2 else "bob", f"note {i % 40} on the launch plan")


async def test_a_side_threads_run_folds_the_history_ahead_in_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: a side-thread's first build folded the whole history up to its anchor in
    one block (1.5 s of a stalled loop at 3,000 messages), as often as an editor opened a
    side-thread and prompted in it; and past 4 side-threads every run did. The run folds it
    ahead, ``FOLD_STEP`` entries per pass of the loop: its build folds nothing, and a
    thread asked again after five others keeps its fold."""
    counted = FoldsAhead(monkeypatch, step=8)
    model = FakeModel(answer_with)
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        await launch_plan(s)
        builder, folded = s.room.context._thread_builder, counted.folded
        folded.clear()  # (the load's: nothing)
        threads = [await open_thread(s, "bob") for _ in range(6)]
        for thread_id in threads:
            await ask(s, "bob", thread_id, "what is the plan?")
            await answered(s, thread_id)
            assert builder.last_refolded == 0
        assert folded == [121] * 6  # 120 messages and the prompt, none kept
        await ask(s, "bob", threads[0], "and the date?")
        await answered(s, threads[0])
        assert builder.last_refolded == 0
        assert folded[-1] == 2  # its reply and the new prompt: the rest was kept
        # A deleted side-thread's fold is dropped: it would push out the others'.
        held = s.room.context._thread_builder._folds
        assert any(key.startswith(f"thread:{threads[1]}:") for key in held)
        gone = await s.send("bob", ThreadCloseCommand(s.next_id(), threads[1], delete=True))
        assert gone["type"] == "ack"
        assert not any(key.startswith(f"thread:{threads[1]}:") for key in held)
        # What the kept fold gives is what a fold from nothing gives.
        scope, asked = s.room.runs.scope_for(["bob"]), thread(s, threads[0])
        kept = s.room.context.build((asked.turns[-2].id,), scope, asked)
        s.room.context._thread_builder = ContextBuilder(builder.settings)
        assert s.room.context.build((asked.turns[-2].id,), scope, asked) == kept


async def test_a_side_threads_fold_is_paid_from_its_owners_read_budget() -> None:
    """Review RN-2: an editor rotating prompts over 20 side-threads anchored at old entries
    of a 20,000-entry session had its history folded again at each prompt, 25-32 % of a
    core for as long as she liked, paid by nobody. A run's fold is paid as a preview's
    build is, 1 KiB per entry folded anew, from its owner's read budget: while she owes
    it her next prompt is refused ``rate_limited`` before anything is folded or written;
    another member's is not, and hers is taken again once it is paid."""
    kib = 1024
    model = FakeModel(answer_with)
    members = {"alice": "editor", "bob": "editor"}
    limits = {"read_bytes_per_s": 64 * kib, "read_burst_bytes": 256 * kib}
    async with memory_session(members, model, **limits) as s:
        await launch_plan(s)  # a fold of 120 messages and the prompt: 121 KiB
        threads = [await open_thread(s, "bob") for _ in range(4)]
        for thread_id in threads[:3]:  # the budget: 256, 135, 14, then 107 KiB owed
            asked = await ask(s, "bob", thread_id, "what is the plan?")
            assert asked["type"] == "ack", asked
            await answered(s, thread_id)
        refused = await ask(s, "bob", threads[3], "what is the plan?")
        assert (refused["type"], refused["code"]) == ("error", "rate_limited"), refused
        assert "try again in 2 s" in refused["message"]  # 107 KiB at 64 KiB/s
        assert thread(s, threads[3]).turns == ()
        assert len(model.requests_for("bob")) == 3
        theirs = await open_thread(s, "alice")
        assert (await ask(s, "alice", theirs, "what is the plan?"))["type"] == "ack"
        await answered(s, theirs)
        s.clock.advance(2)
        assert (await ask(s, "bob", threads[3], "what is the plan?"))["type"] == "ack"
        await answered(s, threads[3])


async def test_a_side_thread_deleted_while_its_history_is_folded_ahead_folds_no_further(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: an editor opened a side-thread, asked in it and deleted it, again and
    again: each deleted thread's run still folded the whole history, and the runs of the
    deleted ones were no longer counted against her share. A run stopped while folding
    ahead stops folding, and ends without a model call."""
    counted = FoldsAhead(monkeypatch, step=1)
    model = FakeModel(answer_with)
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        await launch_plan(s)
        counted.folded.clear()
        counted.started.clear()
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "what is the plan?")
        async with asyncio.timeout(10):
            await counted.started.wait()
        gone = await s.send("bob", ThreadCloseCommand(s.next_id(), thread_id, delete=True))
        assert gone["type"] == "ack"
        assert s.runner is not None
        await asyncio.gather(*s.runner.thread_runs.tasks)
        [entries] = counted.folded
        assert entries < 121  # of the 120 messages and the prompt, one per step
        assert model.requests_for("bob") == []
