"""Run scopes in a room on the in-memory store: a coalesced run acts with the rights all
its issuers share, and the restricted text kept server-side survives a reload."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from parley.authz.policy import Decision, Readers
from parley.authz.roles import Member
from parley.server.http import access as access_api
from parley.server.http import members as members_api
from parley.server.http.models import MemberPut
from parley.server.http.resource_models import DocumentCreate, ReadersIn
from parley.server.store.access_rows import DocumentRow, ToolRow
from parley.server.store.memory import MemoryStore
from parley.session.commands import PinCommand
from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from tests.conftest import sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, Status, call
from tests.server.runtime.backend import backend, sql_store
from tests.server.runtime.harness import SESSION, MemorySession, memory_session, memory_settings
from tests.server.runtime.test_side_threads import Gate, answered, ask, open_thread, watch

SECRET = "the vault code is 7731"
VAULT = DocumentRow("d1", SESSION, "Vault", SECRET, Readers("d1", frozenset({"bob"})), 0)
DEPLOY = ToolRow(
    "deploy", "deploy", {"type": "object", "properties": {}}, "http://127.0.0.1:9/",
    "tool:deploy", "secret", 5000, 0,
)  # fmt: skip


def script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text() and "[wait]" not in sent.asked_text():
        return [call("search_documents", {"query": "vault code"})]
    return ["ok"]


async def test_a_coalesced_run_acts_with_what_all_its_issuers_share() -> None:
    model = FakeModel(script)
    model.gate = asyncio.Event()
    members: dict[str, str | Member] = {
        "olga": "owner",
        "alice": "editor",
        "bob": Member("bob", "editor", frozenset({"tool:deploy"})),
    }
    async with memory_session(members, model, policy=Policy.COALESCE, tools=[DEPLOY]) as s:
        await s.store.access.add_document(VAULT)
        first = await s.prompt("bob", "what is the vault code?")
        await s.settled(first["prompt_id"])
        assert model.requests_for("bob")[0].tools == ["search_documents", "deploy"]
        held = await s.prompt("olga", "[wait] hold on")
        await s.until(lambda s: s.status(held["prompt_id"]) is PromptStatus.RUNNING)
        acks = [await s.prompt("bob", "and the vault again?")]
        acks.append(await s.prompt("alice", "summarise please"))
        model.gate.set()
        await s.settled(held["prompt_id"], *(a["prompt_id"] for a in acks))

        together = [r for r in model.requests if set(r.issuers) == {"bob", "alice"}]
        assert together, "one run answered bob and alice together"
        assert together[0].tools == ["search_documents"]  # not deploy
        for request in together:
            assert "7731" not in request.everything()  # alice may not read it
        records = await s.store.access.list_audit(SESSION, limit=100, after=0, kinds=["model_call"])
        shared = next(r for r in records if len(r.data["issuers"]) == 2)
        assert "tool:deploy" not in shared.data["capabilities"]
        assert shared.data["context_withheld"], "bob's first answer was withheld"


async def test_restricted_items_survive_a_reload() -> None:
    store = MemoryStore()
    members: dict[str, str | Member] = {"alice": "editor", "bob": "editor"}
    async with memory_session(members, FakeModel(script), store=store) as s:
        await s.store.access.add_document(VAULT)
        asked = await s.prompt("bob", "what is the vault code?")
        await s.settled(asked["prompt_id"])
        reply_id = s.room.doc.entry(asked["prompt_id"]).reply_id
    model = FakeModel(script)
    async with memory_session(members, model, store=store) as s:  # the room loaded again
        assert reply_id is not None and SECRET in s.room.context.private[reply_id].text
        asked = await s.prompt("alice", "what did bob learn?")
        await s.settled(asked["prompt_id"])
        [request] = model.requests_for("alice")
        assert "7731" not in request.everything()
        # bob may read his own answer: a preview of his context has the full text.
        built = s.room.context.build((), s.room.runs.scope_for(["bob"], preview=True))
        assert SECRET in str(built.request.messages)


def fails_after_tools(sent: Sent) -> Answer:
    """Runs the search, then breaks before answering: the tool step stays, the reply fails."""
    if sent.messages[-1]["role"] == "tool":
        return Status(400, "upstream broke after the tool ran")
    if "vault" in sent.asked_text():
        return ["Let me look. ", call("search_documents", {"query": "vault code"})]
    return ["ok"]


async def test_a_reply_drawing_on_an_earlier_restricted_tool_result_is_restricted() -> None:
    model = FakeModel(fails_after_tools, echo_tools=False)
    members: dict[str, str | Member] = {"olga": "owner", "bob": "editor", "alice": "viewer"}
    readers = Readers("d1", frozenset({"bob", "olga"}))
    async with memory_session(members, model) as s:
        await s.store.access.add_document(replace(VAULT, readers=readers))
        first = await s.prompt("bob", "what is the vault code?")
        await s.settled(first["prompt_id"])
        assert s.status(first["prompt_id"]) is PromptStatus.FAILED
        second = await s.prompt("bob", "anything else?")
        await s.settled(second["prompt_id"])
        # The second run was given the earlier search result (bob may read it) ...
        assert SECRET in model.requests[-1].everything()
        # ... so its reply inherits the document's readers: a placeholder in the document.
        reply_id = s.room.doc.entry(second["prompt_id"]).reply_id
        assert reply_id is not None
        reply = s.room.doc.entry(reply_id)
        assert reply.status == "done" and "[restricted:" in reply.content, reply


def searches_and_deploys(sent: Sent) -> Answer:
    if "[wait]" in sent.asked_text() and sent.messages[-1]["role"] == "user":
        return [call("search_documents", {"query": "vault code"}), call("deploy", {})]
    return ["done"]


async def test_a_tool_step_acts_with_the_issuers_rights_as_they_are_when_it_runs() -> None:
    """Grants taken while a run is in flight are in force at its next tool step: the run
    started as bob the owner with the deploy grant; he is an editor without it when the
    model asks, so the owners' document is not searched and deploy is refused."""
    model = FakeModel(searches_and_deploys)
    model.gate = asyncio.Event()
    bob = Member("bob", "owner", frozenset({"tool:deploy"}))
    readers = Readers("d1", frozenset(), frozenset({"owner"}))
    async with memory_session({"bob": bob}, model, tools=[DEPLOY]) as s:
        await s.store.access.add_document(replace(VAULT, readers=readers))
        asked = await s.prompt("bob", "[wait] the vault code, then deploy")
        await s.until(lambda s: s.status(asked["prompt_id"]) is PromptStatus.RUNNING)
        allow = Decision(True, "test")
        await s.store.change_member(SESSION, "bob", Member("bob", "editor"), 1, lambda *_: allow)
        await s.room.reload_settings()  # what a membership change over REST does
        model.gate.set()
        await s.settled(asked["prompt_id"])

        assert s.status(asked["prompt_id"]) is PromptStatus.DONE  # an editor may prompt
        first, second = model.requests_for("bob")
        assert first.tools == ["search_documents", "deploy"]  # offered as the run started
        assert "7731" not in second.everything()
        steps = {e.tool: e for e in s.room.doc.entries() if e.kind == "tool"}
        assert steps["search_documents"].status == "done"
        assert steps["deploy"].status == "refused"
        refused = next(m for m in second.messages if "refused" in str(m.get("content")))
        assert "no longer allowed" in refused["content"]


async def test_a_run_stops_when_its_issuer_may_no_longer_prompt() -> None:
    model = FakeModel(script)
    model.gate = asyncio.Event()
    async with memory_session({"bob": "editor", "alice": "editor"}, model) as s:
        asked = await s.prompt("bob", "[wait] a long answer")
        await s.until(lambda s: s.status(asked["prompt_id"]) is PromptStatus.RUNNING)
        allow = Decision(True, "test")
        await s.store.change_member(
            SESSION, "alice", Member("alice", "viewer"), 1, lambda *_: allow
        )
        await s.room.reload_settings()
        assert s.status(asked["prompt_id"]) is PromptStatus.RUNNING  # not alice's run
        await s.store.change_member(SESSION, "bob", Member("bob", "viewer"), 1, lambda *_: allow)
        await s.room.reload_settings()
        await s.settled(asked["prompt_id"])
        prompt = s.room.doc.entry(asked["prompt_id"])
        assert (prompt.status, prompt.reason_code) == ("failed", "forbidden")
        assert "bob may no longer prompt" in str(prompt.reason)


async def test_a_run_stops_when_its_issuers_custom_role_no_longer_lets_them_prompt(
    tmp_path: Path,
) -> None:
    model = FakeModel(script)
    model.gate = asyncio.Event()
    asker = ["read_session", "be_present", "prompt"]
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=model) as b,
    ):
        defined = await b.request("PUT", "/api/v1/roles/asker", json={"capabilities": asker})
        assert defined.status_code == 200, defined.text
        sid = await b.new_session({"bob": "asker"})
        s = await b.session(sid)
        asked = await s.prompt("bob", "[wait] a long answer")
        await s.until(lambda s: s.status(asked["prompt_id"]) is PromptStatus.RUNNING)
        lowered = {"capabilities": ["read_session", "be_present"]}
        assert (await b.request("PUT", "/api/v1/roles/asker", json=lowered)).status_code == 200
        await s.settled(asked["prompt_id"])
        prompt = s.room.doc.entry(asked["prompt_id"])
        assert (prompt.status, prompt.reason_code) == ("failed", "forbidden")


ORDER = (
    "the checkout deploy from 14:02 on all production hosts, then tell the on-call team in "
    "the incident channel and update the status page with the timeline of what happened"
)


async def test_a_member_cannot_reword_a_prompt_of_a_coalesced_run_by_repeating_it() -> None:
    model = FakeModel(lambda sent: ["ok"])
    model.gate = asyncio.Event()
    members: dict[str, str | Member] = {"olga": "owner", "alice": "editor", "mallory": "editor"}
    async with memory_session(members, model, policy=Policy.COALESCE) as s:
        held = await s.prompt("olga", "hold on")
        await s.until(lambda s: s.status(held["prompt_id"]) is PromptStatus.RUNNING)
        asked = await s.prompt("alice", f"Please roll back {ORDER}")
        await s.message("mallory", f"Please never roll back {ORDER}")
        later = await s.prompt("olga", "and what time is it?")
        model.gate.set()
        await s.settled(held["prompt_id"], asked["prompt_id"], later["prompt_id"])

        together = next(r for r in model.requests if "alice" in r.issuers)
        alices = [m["content"] for m in together.asked if "alice asks you" in m["content"]]
        assert alices == [f"[alice asks you]\nPlease roll back {ORDER}"]
        assert f"[mallory wrote]\nPlease never roll back {ORDER}" in together.everything()


DERIVED = "the code spelled out: seven-seven-three-one"


def answers_from_the_vault(gate: asyncio.Event) -> Callable[[Sent], Answer]:
    """Searches the vault, then answers from it in two parts, the second after ``gate``."""

    def answer(sent: Sent) -> Answer:
        if sent.messages[-1]["role"] == "tool":
            return ["Checking the vault. ", gate, DERIVED]
        if "vault" in sent.asked_text():
            return [call("search_documents", {"query": "vault code"})]
        return ["ok"]

    return answer


@pytest.mark.parametrize("change", ["a member who may not read it joins", "a reader is denied"])
async def test_a_restricted_reply_goes_private_when_grants_change_while_it_streams(
    change: str,
) -> None:
    """Every member may read the vault when the run draws on it, so its reply streams into
    the shared document; a grant that changes before the rest streams is in force at once:
    the rest is kept server-side and the document gets the placeholder (review: the rest
    streamed to the member who may not read it)."""
    gate = asyncio.Event()
    model = FakeModel(answers_from_the_vault(gate), echo_tools=False)
    readers = Readers("d1", frozenset({"alice", "bob"}))
    async with memory_session({"alice": "editor", "bob": "editor"}, model) as s:
        await s.store.access.add_document(replace(VAULT, readers=readers))
        asked = await s.prompt("alice", "what is the vault code?")

        def streaming(s: MemorySession) -> bool:
            reply_id = s.room.doc.entry(asked["prompt_id"]).reply_id
            return reply_id is not None and "Checking" in s.room.doc.entry(reply_id).content

        await s.until(streaming)
        allow = Decision(True, "test")
        if change == "a reader is denied":
            bob = Member("bob", "editor", denials=frozenset({"read:d1"}))
            await s.store.change_member(SESSION, "bob", bob, 1, lambda *_: allow)
        else:
            carol = Member("carol", "editor")
            await s.store.change_member(SESSION, "carol", carol, 1, lambda *_: allow)
        await s.room.reload_settings()  # what a membership change over REST does
        gate.set()
        await s.settled(asked["prompt_id"])

        reply_id = s.room.doc.entry(asked["prompt_id"]).reply_id
        assert reply_id is not None
        shown = s.room.doc.entry(reply_id).content
        assert shown.startswith("Checking the vault. ") and "[restricted:" in shown
        assert DERIVED not in shown and DERIVED not in str(s.watcher.transcript())
        kept = s.room.context.private[reply_id]
        assert DERIVED in kept.text and kept.restriction == (readers,)


def repeats_the_vault(sent: Sent) -> Answer:
    if sent.messages[-1]["role"] == "tool":
        return ["The code is 7731."]
    if "vault" in sent.asked_text():
        return [call("search_documents", {"query": "vault code"})]
    if "repeat" in sent.asked_text():
        return ["As I said: " + ("7731" if "7731" in sent.everything() else "no idea")]
    return ["ok"]


async def test_a_shared_restricted_reply_keeps_its_readers_for_the_replies_drawn_from_it() -> None:
    """Under ``shared`` a restricted reply is shown to every member, but its readers are
    kept: a later reply drawn from it (pinned, while its tool step fell out of the window)
    inherits them, so its text never goes out with a webhook (review: the readers were
    dropped, and the second reply's text went out)."""
    model = FakeModel(repeats_the_vault, echo_tools=False)
    members: dict[str, str | Member] = {"olga": "owner", "alice": "editor", "bob": "editor"}
    readers = Readers("d1", frozenset({"alice", "olga"}))
    small = {"context_window_tokens": 900, "max_output_tokens": 150, "summaries": False}
    async with memory_session(members, model, **small, commands_burst=500) as s:
        s.room.use_settings(None, "shared")  # what the owner's PATCH puts in force
        await s.store.access.add_document(replace(VAULT, readers=readers))
        first = await s.prompt("alice", "what is the vault code?")
        await s.settled(first["prompt_id"])
        first_reply = s.room.doc.entry(first["prompt_id"]).reply_id
        assert first_reply is not None
        assert "7731" in s.room.doc.entry(first_reply).content  # shown: the owner's choice
        assert s.room.context.restriction_of(first_reply) == (readers,)
        pinned = await s.send("alice", PinCommand(s.next_id(), first_reply, True))
        assert pinned["type"] == "ack", pinned
        for i in range(40):
            await s.message("bob", f"Update {i}: ticket PRJ-{1000 + i} is owned by team {i % 5}.")

        again = await s.prompt("alice", "please repeat that")
        await s.settled(again["prompt_id"])
        given = model.requests_for("alice")[-1].everything()
        assert "The code is 7731." in given and SECRET not in given
        second_reply = s.room.doc.entry(again["prompt_id"]).reply_id
        assert second_reply is not None
        assert s.room.context.restriction_of(second_reply) == (readers,)
        records = await s.store.access.list_audit(SESSION, limit=100, after=0, kinds=None)
        shared = [r.data["reply_id"] for r in records if r.kind == "reply_shared"]
        assert shared == [first_reply, second_reply]


# The server's own random ids (entries, steps, calls, the audit's): hex runs, UUIDs.
_IDS = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{8,}")


def without_ids(text: str) -> str:
    """``text`` with the server's random ids taken out: one may hold "7731" by chance
    (``5b3de77317b9…``: a failure once), which is not the secret leaking."""
    return _IDS.sub("<id>", text)


def quotes_its_input_then_invents_a_tool(sent: Sent) -> Answer:
    """After a restricted search, a provider error quoting the input (some proxies do),
    or a call of a tool whose name spells out what was read."""
    if sent.messages[-1]["role"] == "tool":
        if "[invent]" in sent.asked_text():
            return [call("SECRET-7731", {}, "call_7731")]
        return Status(400, f"bad request near: {sent.everything()[-300:]}")
    if "vault" in sent.asked_text():
        return [call("search_documents", {"query": "vault code"})]
    return ["ok"]


async def test_what_the_provider_or_the_model_names_after_restricted_reads_is_withheld() -> None:
    """Review (no confused deputy): a provider's error quoting the model's input became the
    failure reason every member, webhook and the audit saw; a refused tool's name, chosen
    by the model after reading a restricted document, was shown in the shared document.
    Both are withheld when the run drew on what not every member may read."""
    model = FakeModel(quotes_its_input_then_invents_a_tool, echo_tools=False)
    members: dict[str, str | Member] = {"olga": "owner", "bob": "editor", "alice": "viewer"}
    async with memory_session(members, model) as s:
        await s.store.access.add_document(VAULT)
        failed = await s.prompt("bob", "what is the vault code?")
        await s.settled(failed["prompt_id"])
        assert SECRET in model.requests[-1].everything()  # the provider did quote it
        invented = await s.prompt("bob", "the vault code again [invent]")
        await s.settled(invented["prompt_id"])
        prompt = s.room.doc.entry(failed["prompt_id"])
        assert prompt.status == "failed" and prompt.reason_code == "provider_error"
        story = str([(e.content, e.reason, e.tool) for e in s.room.doc.entries()])
        records = await s.store.access.list_audit(SESSION, limit=100, after=0, kinds=None)
        audit = str([r.data for r in records])
        for shown in (story, audit):
            assert "7731" not in without_ids(shown)
        assert "details are withheld" in str(prompt.reason)
        assert "ran (a tool it may not name): refused" in story


def searches_again_under_what_it_read(sent: Sent) -> Answer:
    """After a restricted search, another search under a call id that spells out what was
    read (the id is the model's or the provider's choice)."""
    results = sum(m["role"] == "tool" for m in sent.messages)
    if results == 1:
        return [call("search_documents", {"query": "again"}, "call_7731")]
    if results == 0 and "vault" in sent.asked_text():
        return [call("search_documents", {"query": "vault code"})]
    return ["ok"]


async def test_a_tool_call_is_audited_by_the_id_of_its_step_not_the_models() -> None:
    """Review (no confused deputy): a tool call's id, chosen by the model or the provider
    after a restricted read, reached the audit log that members who may not read the
    document read. The audit names each call by the id of the tool step it was taken as."""
    model = FakeModel(searches_again_under_what_it_read, echo_tools=False)
    members: dict[str, str | Member] = {"olga": "owner", "bob": "editor"}
    async with memory_session(members, model) as s:
        await s.store.access.add_document(VAULT)
        asked = await s.prompt("bob", "what is the vault code?")
        await s.settled(asked["prompt_id"])
        assert "call_7731" in model.requests[-1].everything()  # the model did choose it
        records = await s.store.access.list_audit(SESSION, limit=100, after=0, kinds=None)
        audited = str([r.data for r in records])
        assert "7731" not in without_ids(audited)
        calls = [c for r in records if r.kind == "model_call" for c in r.data["tool_calls"]]
        steps = [e.id for e in s.room.doc.entries() if e.kind == "tool"]
        assert [(c["id"], c["outcome"]) for c in calls] == [(i, "done") for i in steps]
        assert len(steps) == 2


def reads_the_vault_then_searches_again(gate: Gate) -> Callable[[Sent], Answer]:
    """Searches the vault; the next call writes a little, waits at ``gate``, then searches
    again, so a third call would carry the vault's text once more."""

    def answer(sent: Sent) -> Answer:
        results = [m for m in sent.messages if m["role"] == "tool"]
        if "vault" not in sent.asked_text():
            return ["ok"]
        if not results:
            return [call("search_documents", {"query": "vault code"})]
        if len(results) == 1:
            return ["Found it. ", gate, call("search_documents", {"query": "vault"}, "call-2")]
        return ["The code is 7731."]

    return answer


@pytest.mark.parametrize("path", ["session", "side-thread"])
async def test_a_run_whose_issuer_is_denied_what_it_drew_on_goes_no_further(
    path: str, tmp_path: Path
) -> None:
    """Review (no confused deputy): alice's run read a document only she may read; while
    the model wrote, the admin denied her ``read:<document>``. Grants that change while a
    run is in flight are in force at once: the run stops (``forbidden``) with the model
    call under way, before another model or tool call carries the document for her, in
    the session as in a side-thread (the session's run called the model again with the
    document's text, and ended ``done``). The model's gate stays shut: the run ends
    without it."""
    gate = Gate()
    model = FakeModel(reads_the_vault_then_searches_again(gate), echo_tools=False)
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=model) as b,
    ):
        sid = await b.new_session({"alice": "editor"})
        vault = DocumentCreate(title="Vault", text=SECRET, readers=ReadersIn(users=["alice"]))
        document = await b.call(access_api.create_document, session_id=sid, body=vault)
        s = await b.session(sid)
        watch(s, "alice")  # told of the side-thread's changes
        asked = "what is the vault code?"
        if path == "session":
            prompt_id = (await s.prompt("alice", asked))["prompt_id"]
        else:
            thread_id = await open_thread(s, "alice")
            await ask(s, "alice", thread_id, asked)
        await gate.entered.wait()
        assert SECRET in model.requests[-1].everything()
        denied = MemberPut(role="editor", denials=[f"read:{document.id}"])
        await b.call(members_api.put_member, session_id=sid, user_id="alice", body=denied)
        if path == "session":
            await s.settled(prompt_id)
            prompt = s.room.doc.entry(prompt_id)
            ended = (prompt.status, prompt.reason_code)
            steps = [e for e in s.room.doc.entries() if e.kind == "tool"]
        else:
            done = await answered(s, thread_id)
            ended = (done.turns[0].status, done.turns[0].reason_code)
            steps = [t for t in done.turns if t.kind == "tool"]
        assert ended == ("failed", "forbidden")
        assert len(model.requests) == 2 and len(steps) == 1  # no call after the denial
        assert model.requests[-1].closed_at is not None  # the call under way was closed


async def test_a_coalesced_run_stops_when_any_issuer_may_no_longer_read_what_it_drew_on() -> None:
    """A coalesced run draws only on what all its issuers may read; once one of them may
    no longer read what it drew on, it goes no further for any of them (``forbidden``):
    going on without the material is not possible, as the model has it already."""
    gate = Gate()
    model = FakeModel(reads_the_vault_then_searches_again(gate), echo_tools=False)
    model.gate = asyncio.Event()
    members: dict[str, str | Member] = {"olga": "owner", "alice": "editor", "bob": "editor"}
    readers = Readers("d1", frozenset({"alice", "bob"}))
    async with memory_session(members, model, policy=Policy.COALESCE) as s:
        await s.store.access.add_document(replace(VAULT, readers=readers))
        held = await s.prompt("olga", "[wait] hold on")
        await s.until(lambda s: s.status(held["prompt_id"]) is PromptStatus.RUNNING)
        acks = [await s.prompt(user, "what is the vault code?") for user in ("alice", "bob")]
        model.gate.set()
        await gate.entered.wait()
        assert model.requests[-1].issuers == ("alice", "bob")
        bob = Member("bob", "editor", denials=frozenset({"read:d1"}))
        await s.store.change_member(SESSION, "bob", bob, 1, lambda *_: Decision(True, "test"))
        await s.room.reload_settings()  # what a membership change over REST does
        await s.settled(*(a["prompt_id"] for a in acks))  # the model's gate stays shut
        for ack in acks:
            prompt = s.room.doc.entry(ack["prompt_id"])
            assert (prompt.status, prompt.reason_code) == ("failed", "forbidden")
            assert prompt.reason is not None and prompt.reason.startswith("bob may no longer read")
        assert len(model.requests) == 3  # the held run's call, then two of the coalesced run's
