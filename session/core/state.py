"""What the session core decides on: one command event and the session as committed now."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from parley.authz.policy import Subject
from parley.session.commands import Command
from parley.session.queue import OrderingQueue, Run
from parley.session.schema import SessionDocument


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """``actor`` sent ``command`` at ``now_ms``; ``new_id`` names an entry it may create.

    ``admin``: the door already decided (a REST route authorised its caller, or the admin
    key) and audits the change itself; the core then judges the change, not the actor.
    """

    actor: str
    command: Command
    now_ms: int
    new_id: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    max_pins: int
    max_facts: int


@dataclass(frozen=True, slots=True)
class SessionView:
    """The session as committed, read (never changed) by the core.

    ``subject``: a member as of now (None: not a member). ``running``: the run in flight
    whose reply streams now (None before its runner took it, or when none is).
    ``last_seq``: the highest sequence number handed out. ``accepting_prompts``: False
    while the server shuts down. ``subjects``: every member as of now (who must all be
    able to read what enters the shared document); ``restricted_replies``: the session's
    policy for replies that draw on restricted material (``private`` or ``shared``).
    """

    doc: SessionDocument
    queue: OrderingQueue
    subject: Callable[[str], Subject | None]
    running: Run | None
    last_seq: int
    limits: DocumentLimits
    accepting_prompts: bool = True
    subjects: Callable[[], Iterable[Subject]] = tuple
    restricted_replies: str = "private"
