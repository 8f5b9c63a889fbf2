"""The session core, sans I/O: a command event in, the effects it has out.

    effects = handle(view, CommandEvent(actor, command, now_ms, new_id))

``view`` is the session as committed (``SessionView``); ``effects`` (``Effects``) say
what to store, which statuses to set, the queue after the change, what to audit, whether
to stop the run in flight or wake the runner, and the answer (an ack or the error).
``server.runtime.room.SessionRoom.execute`` carries them out through the room's one writer.
"""

from session.core.effects import (
    Ack,
    AuditRecord,
    DocumentChange,
    Effects,
    Finish,
    NewEntry,
    Pin,
    SetFact,
    SetPolicy,
    StopRun,
)
from session.core.rules import handle
from session.core.state import CommandEvent, DocumentLimits, SessionView

__all__ = [
    "Ack",
    "AuditRecord",
    "CommandEvent",
    "DocumentChange",
    "DocumentLimits",
    "Effects",
    "Finish",
    "NewEntry",
    "Pin",
    "SessionView",
    "SetFact",
    "SetPolicy",
    "StopRun",
    "handle",
]
