"""Why a prompt ended without an answer: one code per cause, in one table.

Every run or waiting prompt that does not end ``done`` ends with an ``Ending``: a stable
``ReasonCode`` (stored, sent to clients as ``reason_code`` and written to the audit log)
and a human sentence (``reason``). The code alone decides the prompt's terminal status and
its reply's, so the document, the database and REST can never disagree about them:

    code               prompt       reply         cause
    cancelled          cancelled    cancelled     its author or an owner cancelled it
    superseded         interrupted  interrupted   a newer prompt replaced it (``interrupt``)
    timeout            failed       failed        no answer within the run time-out
    provider_error     failed       failed        the model's API failed or refused the call
    quota_exceeded     failed       failed        a token quota of the issuer or session
    forbidden          failed       failed        its author may no longer prompt
    member_removed     failed       failed        its author was removed from the session
    token_revoked      failed       failed        the token it was sent with was revoked
    too_large          failed       failed        a prompt (or a tool step) does not fit the window
    unavailable        failed       failed        the database could not be read to admit it
    storage_error      failed       interrupted   the database failed while the reply streamed
    server_shutdown    failed       interrupted   the server was stopped while it ran
    server_restart     failed       interrupted   the server died while it ran (found on start)
    failover           failed       interrupted   another node took the session over mid-run
    internal_error     failed       failed        a bug: anything else
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from parley.session.commands import storable
from parley.session.lifecycle import PromptStatus, ReplyStatus


class ReasonCode(StrEnum):
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    TIMEOUT = "timeout"
    PROVIDER_ERROR = "provider_error"
    QUOTA_EXCEEDED = "quota_exceeded"
    FORBIDDEN = "forbidden"
    MEMBER_REMOVED = "member_removed"
    TOKEN_REVOKED = "token_revoked"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    STORAGE_ERROR = "storage_error"
    SERVER_SHUTDOWN = "server_shutdown"
    SERVER_RESTART = "server_restart"
    FAILOVER = "failover"
    INTERNAL_ERROR = "internal_error"


_FAILED = (PromptStatus.FAILED, ReplyStatus.FAILED)
_CUT_OFF = (PromptStatus.FAILED, ReplyStatus.INTERRUPTED)

# The one table: what a code makes of the prompt and of its reply.
OUTCOMES: dict[ReasonCode, tuple[PromptStatus, ReplyStatus]] = {
    ReasonCode.CANCELLED: (PromptStatus.CANCELLED, ReplyStatus.CANCELLED),
    ReasonCode.SUPERSEDED: (PromptStatus.INTERRUPTED, ReplyStatus.INTERRUPTED),
    ReasonCode.TIMEOUT: _FAILED,
    ReasonCode.PROVIDER_ERROR: _FAILED,
    ReasonCode.QUOTA_EXCEEDED: _FAILED,
    ReasonCode.FORBIDDEN: _FAILED,
    ReasonCode.MEMBER_REMOVED: _FAILED,
    ReasonCode.TOKEN_REVOKED: _FAILED,
    ReasonCode.TOO_LARGE: _FAILED,
    ReasonCode.UNAVAILABLE: _FAILED,
    ReasonCode.STORAGE_ERROR: _CUT_OFF,
    ReasonCode.SERVER_SHUTDOWN: _CUT_OFF,
    ReasonCode.SERVER_RESTART: _CUT_OFF,
    ReasonCode.FAILOVER: _CUT_OFF,
    ReasonCode.INTERNAL_ERROR: _FAILED,
}

MAX_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a prompt ended unanswered: a code from the table and a sentence for people."""

    code: ReasonCode
    reason: str
    # ``reason`` without the token counts it gives, told when the run drew on what not
    # every member may read: a count holds its size, to the token (review A2;
    # ``session.core.runs.shown_ending``). None: ``reason`` gives none.
    uncounted: str | None = None
    # When the cause passes and the prompt may be sent again, in milliseconds since the
    # epoch (UTC): a quota's next midnight (``session.quota.resets_at_ms``). Set once, as
    # the prompt fails, and stored with it, so every reader is told the same time. None:
    # no time is known (every other cause).
    retry_at: int | None = None

    def __post_init__(self) -> None:
        # A provider's text, as it said it: long (the column's width), and it may hold what
        # no database stores (``storable``).
        reason = storable(self.reason)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        object.__setattr__(self, "reason", reason)

    @property
    def status(self) -> PromptStatus:
        return OUTCOMES[self.code][0]

    @property
    def reply_status(self) -> ReplyStatus:
        return OUTCOMES[self.code][1]


def cancelled_by(user_id: str) -> Ending:
    """The ending of prompts ``user_id`` cancelled (their own, or as an owner others')."""
    return Ending(ReasonCode.CANCELLED, f"cancelled by {user_id}")


def withdrawn(reason_code: str | None, reason: str | None, author: str) -> bool:
    """Whether a prompt that ended so was cancelled by its own ``author``: withdrawn, not
    stopped by an owner or with a side-thread."""
    return reason_code == ReasonCode.CANCELLED and reason == cancelled_by(author).reason
