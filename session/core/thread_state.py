"""The state of private side-threads as the session core reads it (``session.core.threads``
holds their rules): each thread with its turns, and the limits they are held to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from parley.authz.policy import Restriction, restrict

OPEN, CLOSED = "open", "closed"
RUNNING, DONE = "running", "done"


@dataclass(frozen=True, slots=True)
class ThreadLimits:
    # ``max_runs_per_session`` refuses only a member with a run of their own (review
    # RV41-F1): a member's first run is never refused for the others'.
    max_threads_per_member: int = 20
    max_turns_per_thread: int = 200
    max_runs_per_session: int = 4
    max_share_chars: int = 32_000
    # One member's share of the session's runs (``runs_per_member``): their runs past it
    # would leave the other members none (review).
    max_runs_per_member: int = 2

    @property
    def runs_per_member(self) -> int:
        """The most side-thread runs one member may have under way at once."""
        return min(self.max_runs_per_member, self.max_runs_per_session)


@dataclass(frozen=True, slots=True)
class ThreadTurn:
    """One turn of a side-thread: a ``prompt`` of its owner, a ``reply`` of the model
    (``restriction``: what it drew on) or a ``tool`` step of a run. ``index`` orders the
    thread; ``summarise``: a prompt asking for a draft to share back, and its reply.
    ``retry_at``: as a session prompt's (``Ending.retry_at``), on a prompt a quota failed
    and its reply: when it may be sent again, ms since the epoch; None otherwise."""

    id: str
    thread_id: str
    index: int
    kind: str
    author: str
    text: str
    status: str
    created_at: int
    restriction: Restriction = ()
    reason_code: str | None = None
    summarise: bool = False
    command_id: str = ""  # of the command that stored a prompt: a resent one is not run again
    retry_at: int | None = None


@dataclass(frozen=True, slots=True)
class SideThread:
    id: str
    owner: str
    anchor_seq: int  # the shared session's entries up to this sequence number are its context
    title: str
    status: str
    created_at: int
    turns: tuple[ThreadTurn, ...] = ()
    command_id: str = ""  # of the command that opened it: a resent one opens no other

    @property
    def running(self) -> bool:
        """A run answers its last prompt now."""
        prompts = [t for t in self.turns if t.kind == "prompt"]
        return bool(prompts) and prompts[-1].status == RUNNING

    @property
    def restriction(self) -> Restriction:
        """What anything derived from the whole thread draws on."""
        return restrict(*(t.restriction for t in self.turns))

    def turn(self, turn_id: str) -> ThreadTurn | None:
        return next((t for t in self.turns if t.id == turn_id), None)

    def summary(self) -> dict[str, object]:
        return {
            "id": self.id,
            "owner": self.owner,
            "anchor_seq": self.anchor_seq,
            "title": self.title,
            "status": self.status,
            "created_at": self.created_at,
            "turns": len(self.turns),
            "running": self.running,
        }


def running_threads(threads: Iterable[SideThread], owner: str | None = None) -> int:
    """How many of ``threads`` run now (only ``owner``'s, if given)."""
    return sum(1 for t in threads if t.running and (owner is None or t.owner == owner))
