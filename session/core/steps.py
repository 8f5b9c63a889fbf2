"""The events the session core takes besides commands: a run's steps, membership, restart.

Each carries what the core may not read for itself: the time (``now_ms``), the ids the
shell made up (``reply_id``, ``new_id``) and what happened outside (the model's text, a
tool's result, why a run ended). ``ReplyState`` (``session.core.effects``) is the pure
part of the run in flight: what its reply inherited and whether it still streams into the
shared document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from parley.authz.policy import Restriction
from parley.authz.roles import Member
from parley.authz.tokens import ClientClaims
from parley.session.core.effects import AuditRecord, ReplyState
from parley.session.queue import Policy, Run
from parley.session.quota import Quotas
from parley.session.reasons import Ending, ReasonCode
from parley.session.run_fit import RunFit


@dataclass(frozen=True, slots=True)
class RunStart:
    """The runner is free: start the next run, if one may, with a reply ``reply_id``
    signed by ``reply_author`` (the model that writes it). ``quotas`` are the session's and
    ``used_by`` the tokens each member used today, when the run answers more than one
    member and a member's quota is set (else they are not read: nothing to decide).
    ``fit``: how the prompts planned fit the window together, when the run plans several
    (``session.run_fit``; else the runner's build judges the one prompt)."""

    now_ms: int
    reply_id: str
    reply_author: str
    quotas: Quotas = field(default_factory=Quotas)
    used_by: Mapping[str, int] = field(default_factory=dict)
    fit: RunFit | None = None


@dataclass(frozen=True, slots=True)
class TextAppended:
    """The model streamed ``text`` into ``reply``."""

    reply: ReplyState
    text: str


@dataclass(frozen=True, slots=True)
class ContextDrawn:
    """The run drew on something with ``restriction`` (its context, or a tool's result)."""

    reply: ReplyState
    restriction: Restriction


@dataclass(frozen=True, slots=True)
class ToolStepTaken:
    """The run called ``tool`` for ``issuers``: it ended ``status`` (done, error, refused)
    with ``detail`` (arguments and result), which draws on ``restriction``; or, ``running``,
    the call is on its way (``detail``: its arguments), and is taken again as it ends."""

    reply: ReplyState
    issuers: tuple[str, ...]
    tool: str
    status: str
    detail: str
    restriction: Restriction
    now_ms: int
    new_id: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    """``run`` ended: answered (no ``ending``) or ended by ``ending``. ``reply``: its reply
    as it ended (None: it never opened one), ``text`` the reply's full text, and ``audit``
    the records of its model calls and refusals."""

    run: Run
    ending: Ending | None
    now_ms: int
    reply: ReplyState | None = None
    text: str = ""
    audit: tuple[AuditRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class StopPromptsOf:
    """``user_id`` lost the right to have their prompts answered, for ``ending``."""

    user_id: str
    ending: Ending
    now_ms: int


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A stored membership change is put in force: ``before`` -> ``after`` (None: none)."""

    user_id: str
    before: Member | None
    after: Member | None
    now_ms: int


@dataclass(frozen=True, slots=True)
class TokenRevoked:
    """A client token of ``user_id`` was revoked (and is in force here now)."""

    user_id: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class WaitingPrompt:
    """A prompt row the store holds as ``queued`` or ``running``."""

    id: str
    seq: int
    author: str
    status: str
    link_token: ClientClaims | None = None  # ``PendingPrompt.link_token``


@dataclass(frozen=True, slots=True)
class ShownRun:
    """What a side-thread's stored document shows of a run a crash cut off: its reply's
    text so far and its tool steps (id, tool, status), in order. A run's steps are stored
    with its end; as it runs they go to its thread's document, stored as they come."""

    text: str
    tool_steps: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Recovered:
    """The session was loaded: its prompts waiting or in flight as the store holds them.
    Those that were running were cut off by ``cut_off`` (a restart, unless the room was
    given up for another cause or taken over from another node). ``shown_runs``: what
    the side-threads' stored documents show of their runs cut off, by prompt id (a run
    not among them showed nothing: its steps are not known)."""

    waiting: tuple[WaitingPrompt, ...]
    policy: Policy
    cut_off: ReasonCode
    now_ms: int
    shown_runs: Mapping[str, ShownRun] = field(default_factory=dict)
