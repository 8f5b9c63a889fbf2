"""The reason table: every code ends a prompt and its reply in a final status they can reach."""

from __future__ import annotations

import pytest

from parley.session.lifecycle import (
    PromptStatus,
    ReplyStatus,
    check_prompt_transition,
    check_reply_transition,
    is_terminal,
)
from parley.session.reasons import (
    MAX_REASON_CHARS,
    OUTCOMES,
    Ending,
    ReasonCode,
    cancelled_by,
    withdrawn,
)


def test_every_code_has_an_outcome() -> None:
    assert set(OUTCOMES) == set(ReasonCode)


@pytest.mark.parametrize("code", list(ReasonCode))
def test_each_code_ends_waiting_and_running_prompts_and_their_reply(code: ReasonCode) -> None:
    ending = Ending(code, "why")
    assert is_terminal(ending.status) and ending.status is not PromptStatus.DONE
    check_prompt_transition(PromptStatus.QUEUED, ending.status)
    check_prompt_transition(PromptStatus.RUNNING, ending.status)
    check_reply_transition(ReplyStatus.STREAMING, ending.reply_status)


def test_cut_off_replies_are_interrupted_and_their_prompts_failed() -> None:
    for code in (ReasonCode.SERVER_RESTART, ReasonCode.FAILOVER, ReasonCode.STORAGE_ERROR):
        ending = Ending(code, "cut off")
        assert (ending.status, ending.reply_status) == (
            PromptStatus.FAILED,
            ReplyStatus.INTERRUPTED,
        )


def test_a_long_reason_is_cut_to_the_column() -> None:
    ending = Ending(ReasonCode.PROVIDER_ERROR, "x" * 5000)
    assert len(ending.reason) == MAX_REASON_CHARS and ending.reason.endswith("…")


def test_a_prompt_is_withdrawn_only_when_its_own_author_cancelled_it() -> None:
    mine = cancelled_by("alice")
    assert withdrawn(mine.code.value, mine.reason, "alice")
    assert not withdrawn(mine.code.value, mine.reason, "bob")  # an owner stopped bob's
    assert not withdrawn(ReasonCode.CANCELLED.value, "the side-thread was closed", "alice")
    assert not withdrawn(ReasonCode.TIMEOUT.value, "cancelled by alice", "alice")
