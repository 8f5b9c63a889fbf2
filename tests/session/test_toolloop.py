"""The tool loop as a generator: fed model turns and tool results by hand, no I/O."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from parley.session.model import ModelMessage, ModelRequest, ToolCall, ToolSpec, Usage
from parley.session.toolloop import (
    CallModel,
    CallTool,
    Effect,
    LoopLimits,
    LoopOutcome,
    ModelTurn,
    RefuseTool,
    ToolResult,
    tool_loop,
)

SEARCH = ToolSpec("search", "find things")
REQUEST = ModelRequest(
    session_id="s",
    issuers=("alice",),
    system="sys",
    messages=(ModelMessage("user", "find x", "alice"),),
    answering=(0,),
    tools=(SEARCH,),
)


def only_search(name: str) -> str | None:
    return None if name == "search" else f"{name} is not offered"


def finish(loop: Generator[Effect, Any, LoopOutcome], value: Any) -> LoopOutcome:
    try:
        loop.send(value)
    except StopIteration as stop:
        outcome: LoopOutcome = stop.value
        return outcome
    raise AssertionError("the loop went on")


def test_no_tool_calls_is_one_model_call() -> None:
    loop = tool_loop(REQUEST, only_search)
    first = next(loop)
    assert isinstance(first, CallModel) and first.request == REQUEST
    outcome = finish(loop, ModelTurn("done", (), Usage(10, 2)))
    assert (outcome.steps, outcome.input_tokens, outcome.output_tokens) == (1, 10, 2)


def test_a_tool_result_is_fed_back_and_the_loop_continues() -> None:
    loop = tool_loop(REQUEST, only_search)
    next(loop)
    call = ToolCall("c1", "search", '{"query": "x"}')
    effect = loop.send(ModelTurn("let me look", (call,), Usage(5, 1)))
    assert effect == CallTool(call, {"query": "x"})
    again = loop.send(ToolResult("x is 42"))
    assert isinstance(again, CallModel) and again.step == 1
    messages = again.request.messages
    assert messages[1] == ModelMessage("assistant", "let me look", tool_calls=(call,))
    assert messages[2] == ModelMessage("tool", "x is 42", tool_call_id="c1")
    assert again.request.tools == (SEARCH,)
    outcome = finish(loop, ModelTurn("x is 42", (), Usage(7, 3)))
    assert outcome.calls == [(call, "ok")] and outcome.input_tokens == 12


def test_a_tool_outside_the_scope_is_refused_and_the_model_told() -> None:
    loop = tool_loop(REQUEST, only_search)
    next(loop)
    call = ToolCall("c1", "deploy", "{}")
    effect = loop.send(ModelTurn("", (call,)))
    assert effect == RefuseTool(call, "deploy is not offered")
    again = loop.send(None)
    assert isinstance(again, CallModel)
    result = again.request.messages[-1]
    assert result.role == "tool" and result.is_error and "not offered" in result.content
    assert again.request.tools == (SEARCH,)  # model output never widens the scope
    assert finish(loop, ModelTurn("ok")).calls == [(call, "refused")]


def test_bad_arguments_are_a_refusal_the_shell_records_not_a_crash() -> None:
    """Review (faults): the model's call with arguments that are not a JSON object was
    answered with an error but yielded nothing, so no tool step showed it to anyone."""
    loop = tool_loop(REQUEST, only_search)
    next(loop)
    for arguments in ("{not json", "[1, 2]"):
        call = ToolCall("c", "search", arguments)
        refused = loop.send(ModelTurn("", (call,)))
        assert refused == RefuseTool(call, "the arguments are not a JSON object")
        again = loop.send(None)
        assert isinstance(again, CallModel)
        assert again.request.messages[-1].is_error
    outcome = finish(loop, ModelTurn("gave up"))
    assert [o for _, o in outcome.calls] == ["invalid arguments"] * 2


def test_the_step_limit_ends_the_loop_with_a_call_offering_no_tools() -> None:
    loop = tool_loop(REQUEST, only_search, LoopLimits(max_steps=2))
    effect = next(loop)
    calls = 0
    while isinstance(effect, CallModel) and effect.step < 2:
        effect = loop.send(ModelTurn("", (ToolCall(f"c{calls}", "search", "{}"),)))
        assert isinstance(effect, CallTool)
        effect = loop.send(ToolResult("more"))
        calls += 1
    assert isinstance(effect, CallModel) and effect.step == 2 and effect.request.tools == ()
    refused = loop.send(ModelTurn("", (ToolCall("late", "search", "{}"),)))
    assert isinstance(refused, RefuseTool) and "step limit" in refused.reason
    outcome = finish(loop, None)
    assert outcome.steps == 3 and outcome.calls[-1][1] == "refused"


def test_too_many_calls_in_one_turn_are_refused() -> None:
    loop = tool_loop(REQUEST, only_search, LoopLimits(max_calls_per_turn=1))
    next(loop)
    calls = (ToolCall("a", "search", "{}"), ToolCall("b", "search", "{}"))
    assert isinstance(loop.send(ModelTurn("", calls)), CallTool)
    refused = loop.send(ToolResult("one"))
    assert isinstance(refused, RefuseTool) and refused.call.id == "b"
