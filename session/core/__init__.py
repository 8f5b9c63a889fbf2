"""The session core, sans I/O: an event in, the effects it has out.

    effects = handle(view, CommandEvent(actor, command, now_ms, new_id))
    effects = handle(view, RunStart(now_ms, reply_id, reply_author))

Events are a member's commands (``CommandEvent``), a run's steps (``RunStart``,
``TextAppended``, ``ContextDrawn``, ``ToolStepTaken``, ``RunFinished``), membership
changes (``MemberUpdated``, ``TokenRevoked``, ``StopPromptsOf``), a restart
(``Recovered``) and the end of a side-thread run (``ThreadRunFinished``; the side-thread
commands are judged in ``threads``). ``view`` is the session as committed
(``SessionView``); ``effects``
(``Effects``) say what to store, which statuses to set, the queue after the change, what
to audit, which semantic events happened, whether to stop the run in flight or wake the
runner, and the answer (an ack or the error). The session's one writer
(``server.runtime.session_writer.SessionWriter``) carries them out.
"""

from parley.session.core.effects import (
    Ack,
    AppendText,
    AuditRecord,
    BeginRun,
    DocumentChange,
    Effects,
    Finish,
    KeepPrivate,
    NewEntry,
    Pin,
    ReplyState,
    SetFact,
    SetPolicy,
    StopRun,
    ToolStep,
)
from parley.session.core.rules import Event, handle
from parley.session.core.state import CommandEvent, DocumentLimits, SessionView, Standing
from parley.session.core.steps import (
    ContextDrawn,
    MemberUpdated,
    Recovered,
    RunFinished,
    RunStart,
    ShownRun,
    StopPromptsOf,
    TextAppended,
    TokenRevoked,
    ToolStepTaken,
    WaitingPrompt,
)
from parley.session.core.thread_state import SideThread, ThreadLimits, ThreadTurn
from parley.session.core.threads import ThreadRunFinished, apply_to_threads, threads_changed

__all__ = [
    "Ack",
    "AppendText",
    "AuditRecord",
    "BeginRun",
    "CommandEvent",
    "ContextDrawn",
    "DocumentChange",
    "DocumentLimits",
    "Effects",
    "Event",
    "Finish",
    "KeepPrivate",
    "MemberUpdated",
    "NewEntry",
    "Pin",
    "Recovered",
    "ReplyState",
    "RunFinished",
    "RunStart",
    "SessionView",
    "SetFact",
    "SetPolicy",
    "ShownRun",
    "SideThread",
    "Standing",
    "StopPromptsOf",
    "StopRun",
    "TextAppended",
    "ThreadLimits",
    "ThreadRunFinished",
    "ThreadTurn",
    "TokenRevoked",
    "ToolStep",
    "ToolStepTaken",
    "WaitingPrompt",
    "apply_to_threads",
    "handle",
    "threads_changed",
]
