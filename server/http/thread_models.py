"""REST models of private side-threads."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from parley.server.http.models import AsUser, CommandId, Strict
from parley.session.thread_commands import MAX_TITLE_CHARS


class ThreadPost(Strict):
    anchor: str | None = Field(
        None, max_length=64, description="An entry of the session: its context ends there"
    )
    # Lengths are the door's to judge (``too_large``, as for the socket's command); the
    # document states the limit all the same (review: it said none).
    title: str = Field(
        "",
        description=f"At most {MAX_TITLE_CHARS} characters (longer: 413 too_large)",
        json_schema_extra={"maxLength": MAX_TITLE_CHARS},
    )
    id: CommandId | None = None
    as_user: AsUser = None


class ThreadOpened(Strict):
    thread_id: str
    anchor_seq: int = Field(description="The session's entries up to this seq are its context")


class ThreadPickPost(Strict):
    turn_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, description="Finished replies of the side-thread to post (at most 50)"
    )
    id: CommandId | None = None
    as_user: AsUser = None


class ThreadTurnOut(Strict):
    id: str
    index: int
    kind: Literal["prompt", "reply", "tool"]
    author: str
    text: str
    status: str
    reason_code: str | None
    retry_at: int | None = Field(
        None,
        description="When it may be sent again, in milliseconds since the epoch (UTC): set "
        "on a prompt a token quota failed (reason_code quota_exceeded) and its reply, the next "
        "UTC midnight, when the quotas start over; null otherwise (docs/models.md: quotas)",
    )
    summarise: bool = Field(description="A prompt asking for a draft to share, or that draft")
    restricted: bool = Field(description="Drew on what not every member may read")
    drew_on: list[dict[str, Any]] = Field(description="The readers of what it drew on")
    created_at: int


class ThreadOut(Strict):
    id: str
    owner: str
    anchor_seq: int
    title: str
    status: Literal["open", "closed"]
    created_at: int
    turns: list[ThreadTurnOut] | int = Field(
        description="The turns (one thread), or how many (a list of threads)"
    )
    running: bool


class ThreadListOut(Strict):
    threads: list[ThreadOut]


class ThreadRunAccepted(Strict):
    thread_id: str
    turn_id: str = Field(description="The prompt's turn")
    reply_id: str = Field(description="The reply's turn, once it is written")
