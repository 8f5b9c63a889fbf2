"""What the session core decides an event does, as data the room carries out.

The room applies ``Effects`` through its one writer, in this order: the ``entry`` is
stored (the store checks the seq it hands out against ``entry.seq``), ``finish`` sets
statuses, ``begin`` marks a run's prompts running and opens its reply, ``change`` edits
the document, ``tool_step`` adds a step to the reply, ``end_steps`` ends steps stored
``running``, ``keep`` stores text server-side, ``queue`` replaces the queue and its plan,
the side-threads' changes (``thread``, ``thread_turns``, ``thread_settle``), ``audit`` and
``events`` are written in the same transaction; after the commit the update is broadcast,
what was kept is delivered to the members who may read it, ``stop`` stops the run in
flight (``stop_threads`` the side-thread runs), ``wake_runner`` lets the next run start,
``thread_run`` starts a side-thread run, and the command is answered with ``ack``.
``append`` (streamed reply text) is a document update alone, stored through the group
commit. A refusal carries ``error`` (and the ``audit`` of the refusal, written on its own)
and nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parley.authz.policy import Restriction
from parley.authz.tokens import ClientClaims
from parley.session.commands import ack
from parley.session.core.thread_state import SideThread, ThreadTurn
from parley.session.entries import EntryKind
from parley.session.errors import ParleyError
from parley.session.events import SessionEvent
from parley.session.queue import OrderingQueue, Policy, Run
from parley.session.reasons import Ending


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A transcript entry to store (row and document alike) with sequence number ``seq``."""

    id: str
    kind: EntryKind
    author: str
    command_id: str
    text: str
    seq: int
    status: str
    created_at: int
    source: str | None = None  # ``private_thread``: shared back from a side-thread
    # A prompt sent with a token from another member's invite link: its claims, stored with
    # it (``PendingPrompt.link_token``).
    link_token: ClientClaims | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """Prompts that reach their final status: ``done`` without an ``ending``, else the one
    it decides."""

    prompt_ids: tuple[str, ...]
    ending: Ending | None


@dataclass(frozen=True, slots=True)
class Pin:
    entry_id: str
    pinned: bool


@dataclass(frozen=True, slots=True)
class SetFact:
    key: str
    value: str | None  # None removes the fact
    author: str


@dataclass(frozen=True, slots=True)
class SetPolicy:
    policy: Policy


DocumentChange = Pin | SetFact | SetPolicy


@dataclass(frozen=True, slots=True)
class ReplyState:
    """The reply of the run in flight: ``restriction``, what it drew on; ``private``: the
    rest of it no longer streams into the shared document (policy ``private``)."""

    reply_id: str
    restriction: Restriction = ()
    private: bool = False


@dataclass(frozen=True, slots=True)
class BeginRun:
    """Mark ``run``'s prompts running and open its reply ``reply_id`` after the last."""

    run: Run
    reply_id: str
    author: str
    created_at: int


@dataclass(frozen=True, slots=True)
class AppendText:
    """Stream ``text`` into the shared document's reply ``reply_id``."""

    reply_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ToolStep:
    """A tool step of reply ``reply_id`` as the shared document shows it (``text``)."""

    id: str
    reply_id: str
    author: str
    tool: str
    status: str
    text: str
    created_at: int


@dataclass(frozen=True, slots=True)
class EndToolStep:
    """The tool step ``id``, stored ``running``, reaches ``status``, shown as ``text``."""

    id: str
    status: str
    text: str


@dataclass(frozen=True, slots=True)
class KeepPrivate:
    """Text kept server-side (restricted replies and tool details) with its readers, and
    delivered after the commit to the members who may read it; ``shown``: the shared
    document holds it already (a reply under ``restricted_replies: shared``), so it is
    kept for its readers and not sent again."""

    entry_id: str
    kind: str
    text: str
    restriction: Restriction
    shown: bool = False


@dataclass(frozen=True, slots=True)
class AuditRecord:
    kind: str
    actor: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StopRun:
    """Stop the run in flight with ``ending``; ``wait``: answer only once it has stopped."""

    ending: Ending
    wait: bool


@dataclass(frozen=True, slots=True)
class OpenThread:
    thread: SideThread


@dataclass(frozen=True, slots=True)
class SetThreadStatus:
    thread_id: str
    status: str


@dataclass(frozen=True, slots=True)
class DeleteThread:
    thread_id: str


ThreadChange = OpenThread | SetThreadStatus | DeleteThread


@dataclass(frozen=True, slots=True)
class ThreadTurnStatus:
    """A side-thread prompt reaches ``status`` (with the code of why it ended unanswered,
    and when it may be sent again if that is known: ``Ending.retry_at``)."""

    thread_id: str
    turn_id: str
    status: str
    reason_code: str | None
    retry_at: int | None = None


@dataclass(frozen=True, slots=True)
class BeginThreadRun:
    """After the commit: run the side-thread ``thread_id``'s prompt ``prompt_id`` for
    ``owner`` (whose scope it acts with), its reply to be ``reply_id``."""

    thread_id: str
    prompt_id: str
    reply_id: str
    owner: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The fields of a command's acknowledgement: its seq and the ids it names."""

    seq: int | None
    ids: tuple[tuple[str, str | int], ...] = ()

    def reply(self, command_id: str) -> str:
        return ack(command_id, seq=self.seq, **dict(self.ids))


@dataclass(frozen=True, slots=True)
class Effects:
    """Everything one event does; see the module docstring for the order.

    ``reply``: the reply of the run in flight after a run step (None: unchanged)."""

    ack: Ack | None = None
    error: ParleyError | None = None
    entry: NewEntry | None = None
    finish: tuple[Finish, ...] = ()
    begin: BeginRun | None = None
    change: DocumentChange | None = None
    tool_step: ToolStep | None = None
    end_steps: tuple[EndToolStep, ...] = ()
    keep: tuple[KeepPrivate, ...] = ()
    queue: OrderingQueue | None = None  # the queue after the change; None: unchanged
    audit: tuple[AuditRecord, ...] = ()
    events: tuple[SessionEvent, ...] = ()
    stop: StopRun | None = None
    wake_runner: bool = False
    append: AppendText | None = None
    reply: ReplyState | None = None
    # The text of each reply completed, None when restricted: what a ``reply.completed``
    # webhook may carry (the events themselves carry no content).
    replies: tuple[tuple[str, str | None], ...] = ()
    # Side-threads (``session.core.threads``): stored in the same transaction, never in the
    # shared document; ``thread_run`` starts after the commit, ``stop_threads`` stop then.
    thread: ThreadChange | None = None
    thread_turns: tuple[ThreadTurn, ...] = ()
    thread_settle: tuple[ThreadTurnStatus, ...] = ()
    thread_run: BeginThreadRun | None = None
    stop_threads: tuple[tuple[str, Ending], ...] = ()

    @property
    def writes(self) -> bool:
        """True when carrying this out takes the writer's transaction (``append`` alone
        does not: it goes through the group commit)."""
        return (
            self.entry is not None
            or bool(self.finish)
            or self.begin is not None
            or self.change is not None
            or self.tool_step is not None
            or bool(self.end_steps)
            or bool(self.keep)
            or self.queue is not None
            or self.thread is not None
            or bool(self.thread_turns)
            or bool(self.thread_settle)
            # A refusal's audit is written on its own (``refused``), not by the writer.
            or (self.error is None and bool(self.audit))
        )


def refused(error: ParleyError, *audit: AuditRecord) -> Effects:
    return Effects(error=error, audit=audit)
