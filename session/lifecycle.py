"""The lifecycles of prompts and replies: every allowed transition, in one table each.

    prompt:  queued ──> running ──> done
               │          ├──────> failed       (provider error, timeout, restart, revoked rights)
               │          ├──────> cancelled    (author or owner cancelled it)
               │          └──────> interrupted  (a newer prompt pre-empted it)
               ├──────> cancelled
               ├──────> interrupted             (superseded by a newer prompt, ``interrupt``)
               └──────> failed                  (could not run at all)

    reply:   streaming ──> done | failed | cancelled | interrupted

    tool step: running ──> done | error | cancelled | interrupted   (``refused``: as taken)

Anything not in these tables raises IllegalTransition; terminal states have no exits.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from parley.session.errors import Conflict


class PromptStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class ReplyStatus(StrEnum):
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


PROMPT_TRANSITIONS: dict[PromptStatus, frozenset[PromptStatus]] = {
    PromptStatus.QUEUED: frozenset(
        {
            PromptStatus.RUNNING,
            PromptStatus.CANCELLED,
            PromptStatus.FAILED,
            PromptStatus.INTERRUPTED,
        }
    ),
    PromptStatus.RUNNING: frozenset(
        {
            PromptStatus.DONE,
            PromptStatus.FAILED,
            PromptStatus.CANCELLED,
            PromptStatus.INTERRUPTED,
        }
    ),
    PromptStatus.DONE: frozenset(),
    PromptStatus.FAILED: frozenset(),
    PromptStatus.CANCELLED: frozenset(),
    PromptStatus.INTERRUPTED: frozenset(),
}

REPLY_TRANSITIONS: dict[ReplyStatus, frozenset[ReplyStatus]] = {
    ReplyStatus.STREAMING: frozenset(
        {ReplyStatus.DONE, ReplyStatus.FAILED, ReplyStatus.CANCELLED, ReplyStatus.INTERRUPTED}
    ),
    ReplyStatus.DONE: frozenset(),
    ReplyStatus.FAILED: frozenset(),
    ReplyStatus.CANCELLED: frozenset(),
    ReplyStatus.INTERRUPTED: frozenset(),
}


class ToolStepStatus(StrEnum):
    """A tool step's status. A call that leaves the server is stored ``running`` before it
    goes, and ends with its answer (``done``, ``error``), or cut short with its run
    (``cancelled``, else ``interrupted``); a call refused is stored ``refused``, ended."""

    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


TOOL_STEP_TRANSITIONS: dict[ToolStepStatus, frozenset[ToolStepStatus]] = {
    ToolStepStatus.RUNNING: frozenset(
        {
            ToolStepStatus.DONE,
            ToolStepStatus.ERROR,
            ToolStepStatus.CANCELLED,
            ToolStepStatus.INTERRUPTED,
        }
    ),
    ToolStepStatus.DONE: frozenset(),
    ToolStepStatus.ERROR: frozenset(),
    ToolStepStatus.REFUSED: frozenset(),
    ToolStepStatus.CANCELLED: frozenset(),
    ToolStepStatus.INTERRUPTED: frozenset(),
}


class IllegalTransition(Conflict):
    """A status change the lifecycle table does not allow."""


S = TypeVar("S", PromptStatus, ReplyStatus, ToolStepStatus)


def _check(what: str, table: Mapping[S, frozenset[S]], old: S, new: S) -> None:
    """Raise ``IllegalTransition`` unless ``table`` lets a ``what`` go from ``old`` to ``new``."""
    if new not in table[old]:
        raise IllegalTransition(f"{what} cannot go from {old} to {new}")


def check_prompt_transition(old: PromptStatus, new: PromptStatus) -> None:
    _check("prompt", PROMPT_TRANSITIONS, old, new)


def check_reply_transition(old: ReplyStatus, new: ReplyStatus) -> None:
    _check("reply", REPLY_TRANSITIONS, old, new)


def check_tool_step_transition(old: ToolStepStatus, new: ToolStepStatus) -> None:
    _check("tool step", TOOL_STEP_TRANSITIONS, old, new)


def prompt_predecessors(status: PromptStatus) -> frozenset[PromptStatus]:
    """The statuses a prompt may have before it becomes ``status``: the store updates a row
    only from one of these, so the database obeys the same table as the document."""
    return frozenset(old for old, allowed in PROMPT_TRANSITIONS.items() if status in allowed)


def is_terminal(status: PromptStatus) -> bool:
    return not PROMPT_TRANSITIONS[status]
