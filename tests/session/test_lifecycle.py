"""The prompt and reply lifecycles: the whole transition matrix, derived from the enums."""

from __future__ import annotations

import itertools

import pytest

from parley.session.lifecycle import (
    PROMPT_TRANSITIONS,
    REPLY_TRANSITIONS,
    TOOL_STEP_TRANSITIONS,
    IllegalTransition,
    PromptStatus,
    ReplyStatus,
    ToolStepStatus,
    check_prompt_transition,
    check_reply_transition,
    check_tool_step_transition,
    is_terminal,
    prompt_predecessors,
)

P = PromptStatus
R = ReplyStatus

# The lifecycle as the module docstring draws it, written down independently of the table
# so that a stray edge added to (or dropped from) the table makes a test fail.
PROMPT_EDGES = {
    (P.QUEUED, P.RUNNING),
    (P.QUEUED, P.CANCELLED),
    (P.QUEUED, P.FAILED),
    (P.QUEUED, P.INTERRUPTED),  # superseded by a newer prompt under the interrupt policy
    (P.RUNNING, P.DONE),
    (P.RUNNING, P.FAILED),
    (P.RUNNING, P.CANCELLED),
    (P.RUNNING, P.INTERRUPTED),
}
REPLY_EDGES = {(R.STREAMING, end) for end in (R.DONE, R.FAILED, R.CANCELLED, R.INTERRUPTED)}
T = ToolStepStatus
TOOL_STEP_EDGES = {(T.RUNNING, end) for end in (T.DONE, T.ERROR, T.CANCELLED, T.INTERRUPTED)}

PROMPT_TERMINALS = {P.DONE, P.FAILED, P.CANCELLED, P.INTERRUPTED}
REPLY_TERMINALS = {R.DONE, R.FAILED, R.CANCELLED, R.INTERRUPTED}

ALL_PROMPT_PAIRS = list(itertools.product(PromptStatus, PromptStatus))
ALL_REPLY_PAIRS = list(itertools.product(ReplyStatus, ReplyStatus))


def _id(pair: tuple[object, object]) -> str:
    return f"{pair[0]}->{pair[1]}"


@pytest.mark.parametrize("pair", ALL_PROMPT_PAIRS, ids=_id)
def test_prompt_transition_matrix(pair: tuple[PromptStatus, PromptStatus]) -> None:
    old, new = pair
    if pair in PROMPT_EDGES:
        check_prompt_transition(old, new)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_prompt_transition(old, new)
        assert old.value in info.value.message and new.value in info.value.message


@pytest.mark.parametrize("pair", ALL_REPLY_PAIRS, ids=_id)
def test_reply_transition_matrix(pair: tuple[ReplyStatus, ReplyStatus]) -> None:
    old, new = pair
    if pair in REPLY_EDGES:
        check_reply_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_reply_transition(old, new)


def test_tables_cover_every_status() -> None:
    assert set(PROMPT_TRANSITIONS) == set(PromptStatus)
    assert set(REPLY_TRANSITIONS) == set(ReplyStatus)
    table_edges = {(a, b) for a, ends in PROMPT_TRANSITIONS.items() for b in ends}
    assert table_edges == PROMPT_EDGES
    table_edges = {(a, b) for a, ends in REPLY_TRANSITIONS.items() for b in ends}
    assert table_edges == REPLY_EDGES


@pytest.mark.parametrize("status", list(PromptStatus))
def test_is_terminal_exactly_for_states_without_exits(status: PromptStatus) -> None:
    assert is_terminal(status) == (status in PROMPT_TERMINALS)
    if status in PROMPT_TERMINALS:
        for new in PromptStatus:
            with pytest.raises(IllegalTransition):
                check_prompt_transition(status, new)


@pytest.mark.parametrize("status", sorted(REPLY_TERMINALS))
def test_terminal_reply_states_have_no_exits(status: ReplyStatus) -> None:
    for new in ReplyStatus:
        with pytest.raises(IllegalTransition):
            check_reply_transition(status, new)


def test_no_self_loops_and_nothing_returns_to_the_start() -> None:
    for status in PromptStatus:
        with pytest.raises(IllegalTransition):
            check_prompt_transition(status, status)
        with pytest.raises(IllegalTransition):
            check_prompt_transition(status, P.QUEUED)
    for status in ReplyStatus:
        with pytest.raises(IllegalTransition):
            check_reply_transition(status, R.STREAMING)


def test_every_state_reaches_a_terminal_state() -> None:
    for start in PromptStatus:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in PROMPT_TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & PROMPT_TERMINALS


def test_a_prompt_reaches_each_status_only_from_its_predecessors() -> None:
    for new in PromptStatus:
        for old in PromptStatus:
            allowed = old in prompt_predecessors(new)
            assert allowed == (new in PROMPT_TRANSITIONS[old])


@pytest.mark.parametrize("pair", list(itertools.product(T, T)), ids=_id)
def test_tool_step_transition_matrix(pair: tuple[ToolStepStatus, ToolStepStatus]) -> None:
    old, new = pair
    assert (new in TOOL_STEP_TRANSITIONS[old]) == (pair in TOOL_STEP_EDGES)
    if pair in TOOL_STEP_EDGES:
        check_tool_step_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_tool_step_transition(old, new)
