"""REST models of a session's resources: quotas and usage, the audit log, documents, tools,
kept text and semantic events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from parley.server.http.models import (
    WHOLE,
    CapabilityName,
    HttpUrl,
    Strict,
)


class QuotasPut(Strict):
    """Replaces the session's quotas; a limit left out or null is no limit."""

    session_tokens_per_day: Annotated[int, Field(ge=1, le=10**15), WHOLE] | None = Field(
        default=None, description="Tokens a UTC day; null: no limit"
    )
    user_tokens_per_day: Annotated[int, Field(ge=1, le=10**15), WHOLE] | None = Field(
        default=None, description="For each member; null: no limit"
    )


class QuotasOut(Strict):
    session_tokens_per_day: int | None
    user_tokens_per_day: int | None


class UserUsageOut(Strict):
    user_id: str
    input_tokens: int
    output_tokens: int
    calls: int = Field(
        description="Model calls this user's prompts took part in, the summary calls "
        "their runs set off included (a summary is paid by the run's issuers)"
    )


class UsageOut(Strict):
    session_id: str
    day: str = Field(description="UTC day, YYYY-MM-DD")
    input_tokens: int
    output_tokens: int
    users: list[UserUsageOut]
    quotas: QuotasOut


class AuditRecordOut(Strict):
    id: int
    at: int = Field(description="Milliseconds since the epoch.")
    kind: str = Field(description="model_call, tool_refused, membership, policy, refused, …")
    actor: str = Field(description="The user who acted (or 'admin')")
    data: dict[str, Any]
    withheld: list[str] = Field(
        description="Fields of data withheld from this reader (null in data): a model_call's "
        "drew_on, input_tokens, output_tokens and ms, when the reader may not read everything "
        "the call drew on, or it is another member's side-thread call (see Permissions)"
    )


# An id-ordered list's cursor (``http.cursor``, ``store.horizon``).
NEXT_CURSOR = (
    "Pass as ?cursor= to read on after this page's last item: the next page, or once "
    "next_after is null, what is written since (null: none listed; ask again with the "
    "cursor given). Exact on PostgreSQL, where ?after= with the id of an item since "
    "removed may skip or repeat a few"
)


class AuditList(Strict):
    records: list[AuditRecordOut]
    next_after: int | None = Field(
        description="Pass as ?after= for the next page: given whenever records follow this "
        "page, which ends at limit records or PARLEY_AUDIT_PAGE_MAX_BYTES (null: none yet)"
    )
    next_cursor: str | None = Field(description=NEXT_CURSOR)


MAX_NAME_CHARS = 200
MAX_READER_USERS = 1000
MAX_READER_ROLES = 100
MAX_DOCUMENT_TITLE_CHARS = 500
NameStr = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


class ReadersIn(Strict):
    # At least one reader (``authz.policy.check_readers``): the document says so (review).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"minItems": 1}}}
                for name in ("users", "roles")
            ]
        },
    )

    users: list[NameStr] = Field(default_factory=list, max_length=MAX_READER_USERS)
    roles: list[NameStr] = Field(default_factory=list, max_length=MAX_READER_ROLES)


class DocumentCreate(Strict):
    title: str = Field(min_length=1, max_length=MAX_DOCUMENT_TITLE_CHARS)
    text: str = Field(
        min_length=1, description="At most PARLEY_MAX_DOCUMENT_CHARS characters (default 200000)"
    )
    readers: ReadersIn = Field(description="Who may read it (and so what is drawn from it)")


class DocumentOut(Strict):
    id: str
    title: str
    readers: ReadersIn
    chars: int
    created_at: int
    text: str | None = Field(description="Only when one document is asked for")


class DocumentList(Strict):
    documents: list[DocumentOut]


TOOL_NAME = r"[A-Za-z0-9_-]{1,64}"


class ToolCreate(Strict):
    name: str = Field(pattern=f"^{TOOL_NAME}$")
    description: str = Field(min_length=1, max_length=2000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"}, description="JSON Schema of the arguments"
    )
    url: HttpUrl
    capability: CapabilityName | None = Field(
        default=None, description="Needed to use it; default tool:<name>"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120)


class ToolOut(Strict):
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    capability: str
    timeout_s: float
    created_at: int
    secret: str | None = Field(description="The signing secret: shown once, when created")


class ToolList(Strict):
    tools: list[ToolOut]


class PrivateOut(Strict):
    entry_id: str
    kind: Literal["tool", "reply", "message"] = Field(
        description="A tool step, a reply, or a message shared back from a side-thread"
    )
    text: str
    readers: list[dict[str, Any]] = Field(description="Readers of every source it drew on")


class EventOut(Strict):
    seq: int = Field(description="The event's number in its session: from 1, in commit order")
    at_ms: int = Field(description="Milliseconds since the epoch.")
    kind: str = Field(
        description="prompt_accepted, message_posted, run_started, reply_completed, "
        "run_failed, member_joined, member_changed, member_left, settings_changed, "
        "pin_changed, fact_set"
    )
    actor: str | None = Field(description="The member (or 'admin') who acted; null: the server")
    data: dict[str, Any] = Field(description="Ids, authors and codes; never content")


class EventList(Strict):
    events: list[EventOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page")
