"""Every model call of a run is held to the window, the tool loop's later calls too
(``session.input_budget``): session and side-thread runs alike."""

from __future__ import annotations

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
