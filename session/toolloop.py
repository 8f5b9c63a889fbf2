"""The tool loop of one run, as a generator that does no I/O.

It yields what must happen next and receives the result:

    CallModel(request)  -> ModelTurn   (the model's text and the tool calls it made)
    CallTool(call, arguments) -> ToolResult
    RefuseTool(call, reason)  -> None  (the shell records the refusal; the model gets an error)

A call is refused when ``refuse(name)`` names a reason (the tool is outside the run's scope:
that check is ``authz``'s, passed in), when its arguments are not a JSON object, when one
turn asks for more than ``max_calls_per_turn`` tools, and after ``max_steps`` model calls
with tools (the last call offers none). Each call's input is held to the window
(``session.input_budget``): tool results are cut to the room left, the call after a cut one
offers no tools, and a call that would still not fit is not made (``LoopOutcome.ending``).
The loop returns a ``LoopOutcome``; model output never changes which tools are offered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from parley.session.attribution import escape_text
from parley.session.input_budget import InputBudget
from parley.session.model import ModelMessage, ModelRequest, ToolCall, Usage
from parley.session.reasons import Ending


@dataclass(frozen=True, slots=True)
class CallModel:
    request: ModelRequest
    step: int


@dataclass(frozen=True, slots=True)
class CallTool:
    call: ToolCall
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RefuseTool:
    call: ToolCall
    reason: str


Effect = CallModel | CallTool | RefuseTool


@dataclass(frozen=True, slots=True)
class ModelTurn:
    text: str
    calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool call gave. ``relayed``: text from outside the server (a webhook tool's
    answer: a ticket, a page anyone wrote), escaped as members' text is before the model
    reads it (review RD-4); the built-in tools' own lines are the server's."""

    content: str
    is_error: bool = False
    relayed: bool = False


@dataclass(slots=True)
class LoopOutcome:
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: list[tuple[ToolCall, str]] = field(default_factory=list)  # (call, outcome)
    ending: Ending | None = None  # the next call did not fit the window: not made


@dataclass(frozen=True, slots=True)
class LoopLimits:
    max_steps: int = 8
    max_calls_per_turn: int = 8


def _arguments(call: ToolCall) -> dict[str, Any] | None:
    try:
        value = json.loads(call.arguments or "{}")
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def tool_loop(
    request: ModelRequest,
    refuse: Callable[[str], str | None],
    limits: LoopLimits | None = None,
    budget: InputBudget | None = None,
) -> Generator[Effect, Any, LoopOutcome]:
    """Drive one run: call the model, run the tools it asks for, feed results back.
    ``budget``: the first call's input tokens and the limit every call is held to (None:
    no limit)."""
    limits = limits or LoopLimits()
    outcome = LoopOutcome()
    messages = list(request.messages)
    for step in range(limits.max_steps + 1):
        full = budget is not None and budget.full
        last = step == limits.max_steps or full
        outcome.ending = None if budget is None else budget.overflow()
        if outcome.ending is not None:
            return outcome
        call_request = replace(
            request, messages=tuple(messages), tools=() if last else request.tools
        )
        turn: ModelTurn = yield CallModel(call_request, step)
        outcome.steps = step + 1
        if turn.usage is not None:
            outcome.input_tokens += turn.usage.input_tokens
            outcome.output_tokens += turn.usage.output_tokens
        if not turn.calls:
            return outcome
        messages.append(ModelMessage("assistant", turn.text, tool_calls=turn.calls))
        if budget is not None:
            budget.add_turn(turn.text, turn.calls)
        for index, call in enumerate(turn.calls):
            arguments = _arguments(call)
            reason = refuse(call.name)
            if full:
                reason = "the context window of this run is full; answer without tools"
            elif last:
                reason = "the step limit of this run is reached; answer without tools"
            elif reason is None and index >= limits.max_calls_per_turn:
                reason = f"at most {limits.max_calls_per_turn} tool calls per turn"
            if reason is not None:
                yield RefuseTool(call, reason)
                result = ToolResult(f"refused: {reason}", is_error=True)
                outcome.calls.append((call, "refused"))
            elif arguments is None:
                # Refused as the others are, so the shell records it as a tool step everyone
                # sees (review: the model's try and what it was told were shown nowhere).
                yield RefuseTool(call, "the arguments are not a JSON object")
                result = ToolResult("error: the arguments are not a JSON object", is_error=True)
                outcome.calls.append((call, "invalid arguments"))
            else:
                result = yield CallTool(call, arguments)
                outcome.calls.append((call, "error" if result.is_error else "ok"))
            content = escape_text(result.content) if result.relayed else result.content
            if budget is not None:
                content = budget.fit_result(content, len(turn.calls) - index)
            messages.append(
                ModelMessage("tool", content, tool_call_id=call.id, is_error=result.is_error)
            )
        if last:
            return outcome
    raise AssertionError("unreachable: the last step returns")
