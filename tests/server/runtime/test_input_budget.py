"""Every model call of a run is held to the window, the tool loop's later calls too
(``session.input_budget``): session and side-thread runs alike."""

from __future__ import annotations

import re

from parley.authz.policy import Readers
from parley.server.store.access_rows import DocumentRow
from parley.session.lifecycle import PromptStatus
from parley.session.tokens import count_tokens
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.server.runtime.harness import SESSION, memory_session
from tests.server.runtime.test_side_threads import answered, ask, open_thread

WINDOW, RESERVE = 2_000, 200
LEDGER = "".join(f"ledger row {n}: vault export {n * 7919} settled\n" for n in range(2_000))
DOC = DocumentRow("d1", SESSION, "Ledger", LEDGER, Readers("d1", roles=frozenset({"editor"})), 0)


def searches(sent: Sent) -> Answer:
    """Three searches (about 750 tokens each) on each of the first two calls."""
    steps = sum(1 for m in sent.messages if m["role"] == "assistant" and m.get("tool_calls"))
    if steps >= 2:
        return ["done"]
    return [call("search_documents", {"query": f"vault export {i}"}, f"c{i}") for i in range(3)]


def input_tokens(sent: Sent) -> int:
    return count_tokens(sent.system) + sum(
        count_tokens(m["content"]) for m in sent.messages if isinstance(m.get("content"), str)
    )


async def test_tool_results_are_cut_to_the_window_in_every_call_of_a_run() -> None:
    """Review J4: with a 4,000-token window the third call of a run carried 189,000 tokens
    (every tool result appended, no budget)."""
    model = FakeModel(searches, echo_tools=False)
    settings = {"context_window_tokens": WINDOW, "max_output_tokens": RESERVE}
    async with memory_session({"bob": "editor"}, model, **settings) as s:
        await s.store.access.add_document(DOC)
        ack = await s.prompt("bob", "export the vault rows")
        await s.settled(ack["prompt_id"])
        assert s.status(ack["prompt_id"]) is PromptStatus.DONE
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "and the vault rows here?")
        await answered(s, thread_id)

    runs = [model.requests[:2], model.requests[2:]]  # the session's run, the thread's
    for calls in runs:
        assert len(calls) == 2, "the call after a cut result offers no tools: the last"
        assert all(input_tokens(sent) <= WINDOW - RESERVE for sent in calls)
        results = [m["content"] for m in calls[1].messages if m["role"] == "tool"]
        assert "[the rest of this result is left out: it has" in results[-1]
        assert calls[1].tools == []


SMALL_SECRET = "the vault code is 7731"


def reads_then_fills_the_window(sent: Sent) -> Answer:
    """A search, then a turn whose own text fills the window, with another call."""
    if not any(m["role"] == "tool" for m in sent.messages):
        return [call("search_documents", {"query": "vault code"}, "c0")]
    return ["vault " * 3_000, call("search_documents", {"query": "again"}, "c1")]


async def test_a_run_past_the_window_tells_no_count_of_what_not_everyone_may_read() -> None:
    """Review A2: a run that read a document alice may not read, then ended ``too_large``,
    told every member "the next model call needs N tokens", N counting the document's
    result: its size, to the token. The count is left out when the run drew on what not
    every member may read, told otherwise."""
    settings = {"context_window_tokens": WINDOW, "max_output_tokens": RESERVE}
    reasons = {}
    for readers in (frozenset({"bob"}), frozenset({"bob", "alice"})):
        model = FakeModel(reads_then_fills_the_window, echo_tools=False)
        doc = DocumentRow("d1", SESSION, "Vault", SMALL_SECRET, Readers("d1", readers), 0)
        async with memory_session({"bob": "editor", "alice": "viewer"}, model, **settings) as s:
            await s.store.access.add_document(doc)
            ack = await s.prompt("bob", "what is the vault code?")
            await s.settled(ack["prompt_id"])
            prompt = s.room.doc.entry(ack["prompt_id"])
            assert prompt.reason_code == "too_large", prompt
            assert SMALL_SECRET in str(model.requests[-1].everything())
            records = await s.store.access.list_audit(SESSION, limit=100, after=0, kinds=None)
            ended = [r.data["reason"] for r in records if r.kind == "run_ended"]
            reasons[len(readers)] = (str(prompt.reason), ended)
    limit = WINDOW - RESERVE
    restricted, everyone = reasons[1], reasons[2]
    assert re.search(r"needs \d+ tokens", everyone[0]) and everyone[1] == [everyone[0]]
    for told in (restricted[0], *restricted[1]):
        assert not re.search(r"needs \d+ tokens", told), told
        assert f"more tokens than the window leaves ({limit})" in told, told
