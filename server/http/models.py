"""Pydantic models of every REST request and response body."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from parley.session.code_points import FORMAT_CHARACTERS, class_of, merged, points_of
from parley.session.commands import MAX_FACT_CHARS, unstorable_in
from parley.session.names import MAX_DISPLAY_NAME_CHARS, display_name_problem, refused_pattern

RoleName = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="owner, editor, viewer, or a custom role defined under /api/v1/roles",
    ),
]
CapabilityName = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{0,39}(:[A-Za-z0-9_.-]{1,100})?$",
        description="e.g. prompt, pin, manage_members, tool:deploy, read:<document id>",
    ),
]
PolicyName = Literal["queue", "coalesce", "interrupt", "reject"]


def _whole(value: object, info: ValidationInfo) -> object:
    """A decimal with no fraction (``5000.0``, ``5e3``) as its integer; anything else as it
    is, for strict validation (``true`` and ``"100"`` stay refused). A double read from a
    number it is not (``parsed_body``'s context: ``read_numbers``) is the number's integer,
    or kept, and refused, when it has a fraction: ``86400.000000000001`` is read as 86400.0."""
    if not isinstance(value, float) or not value.is_integer():
        return value
    read_as_whole = info.context.get(READ_AS_WHOLE, {}) if info.context else {}
    at = (info.field_name or "", value)
    if at in read_as_whole:
        whole: int | None = read_as_whole[at]
        return value if whole is None else whole
    return int(value)


# The context key of what ``read_numbers`` found in a body (``NumbersRead.read_as_whole``).
READ_AS_WHOLE = "read_as_whole"


# Of every integer body field, after its bounds (``Annotated[int, Field(ge=1), WHOLE]``:
# bounds given after it, or on an optional field's ``Field``, are not applied to the
# integer and leave the OpenAPI document). The document's ``"type": "integer"`` (JSON
# Schema 2020-12) is any number with a zero fraction, so ``5000.0`` is taken as 5000
# (review I2: refused for its form, though the document allowed it), and
# ``86400.000000000001`` is refused as ``5000.5`` is (review B2-4).
WHOLE = BeforeValidator(_whole)

# What no webhook's or tool's URL holds: C0 and C1 controls, DEL, Unicode's blanks
# (White_Space: the space, U+00A0, U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F, U+3000)
# and format characters (soft hyphen, zero-width, bidirectional, U+FEFF, tags).
# ``tests/server/test_http_url_pattern.py`` checks it against Unicode's categories.
_URL_CONTROLS_AND_BLANKS = (
    (0x0000, 0x0020),
    (0x007F, 0x00A0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)
URL_REFUSED = merged(_URL_CONTROLS_AND_BLANKS + FORMAT_CHARACTERS)
# A webhook's or a tool's URL, judged by the server with the pattern the document gives
# (review RJ-3: the server's ``\\s`` and the document's meant other sets), then parsed
# (``outbound.targets``: "malformed URL (…)").
HTTP_URL_PATTERN = f"^https?://[^{class_of(URL_REFUSED)}]{{1,1990}}$"
_HTTP_URL = re.compile(HTTP_URL_PATTERN)
_URL_REFUSED_POINTS = frozenset(points_of(URL_REFUSED))


def _of_the_published_form(url: str) -> str:
    if _HTTP_URL.fullmatch(url) is not None:
        return url
    for at, char in enumerate(url):
        if ord(char) in _URL_REFUSED_POINTS:
            raise ValueError(
                f"has a control, blank or format character (U+{ord(char):04X}) "
                f"at character {at + 1}"
            )
    raise ValueError("must be http:// or https:// and at most 1990 characters after it")


HttpUrl = Annotated[
    str,
    Field(description="Where Parley POSTs", json_schema_extra={"pattern": HTTP_URL_PATTERN}),
    AfterValidator(_of_the_published_form),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable_text(self) -> Strict:
        """Refuse text the database cannot store (NUL, lone surrogates) as invalid input,
        at any depth of free-form JSON fields (tool parameters, say) and in their keys.
        Nested models check themselves."""
        for name, value in self:
            found = unstorable_in(value, name)
            if found is not None:
                raise ValueError(f"{found[0]} {found[1]}")
        return self


class FieldProblem(Strict):
    at: str = Field(description="Where: a dotted path into the body, or a parameter's name.")
    message: str


class ErrorDetail(Strict):
    code: str = Field(description="Stable, machine-readable error code.")
    message: str
    details: list[FieldProblem] | None = Field(
        default=None,
        description="Every problem found (invalid): all of the input's form, or the rule it broke",
    )
    retry_after_ms: int | None = Field(
        default=None,
        ge=1,
        description="When to try again, in milliseconds (429 rate_limited from a budget, "
        "too_many_streams, quota_exceeded: when the day's quotas start over; 503 while the "
        "database is unavailable): the Retry-After header's wait, which is "
        "in whole seconds rounded up, as a WebSocket command's refusal gives it",
    )


class ErrorBody(Strict):
    error: ErrorDetail


class Health(Strict):
    status: str


class Readiness(Strict):
    status: str
    database: str
    migrations: str
    listener: str = Field(default="off", description="Cluster mode: ok / down; else off")


SESSION_TITLE_MAX_CHARS = 500


class SessionCreate(Strict):
    title: str = Field(default="", max_length=SESSION_TITLE_MAX_CHARS)
    policy: PolicyName = Field(default="queue", description="How concurrent prompts run.")


RestrictedReplies = Literal["private", "shared"]


class SessionPatch(Strict):
    title: str | None = Field(default=None, max_length=SESSION_TITLE_MAX_CHARS)
    policy: PolicyName | None = None
    model: str | None = Field(
        default=None,
        max_length=100,
        description="One of the configured models; null: back to the server's default",
    )
    restricted_replies: RestrictedReplies | None = Field(
        default=None,
        description="private: a reply drawing on what not every member may read is shown "
        "only to those who may (others see a placeholder); shared: it is shown to everyone "
        "(an owner's decision, audited; a member's choice covers only what they may read)",
    )


class SessionOut(Strict):
    id: str
    title: str
    created_at: int = Field(description="Milliseconds since the epoch.")
    last_seq: int = Field(description="The highest sequence number handed out so far.")
    policy: PolicyName
    model: str | None = Field(description="The session's model; null: the server's default")
    restricted_replies: RestrictedReplies
    restricted_replies_by: str | None = Field(
        default=None,
        description="The member who chose shared: a reply drawing on what they may not read "
        "stays private; null: the admin key chose it (or the policy is private)",
    )


class SessionList(Strict):
    sessions: list[SessionOut]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page (null: none after this one); a "
        "session deleted meanwhile moves no other session past it, as ?offset= would"
    )


def _shown_as_it_is(name: str) -> str:
    problem = display_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


# A name people read: every character shows (``session.names``, the one rule for it).
DisplayName = Annotated[
    str,
    Field(
        max_length=MAX_DISPLAY_NAME_CHARS,
        description="How people see the member; empty: by user id. No control, format "
        "(zero-width, soft hyphen, bidirectional), line or paragraph separator, private-use, "
        "unassigned (new emoji aside) or noncharacter code points; joiners only inside a "
        "script or an emoji sequence. The pattern excludes those refused wherever they "
        "stand; unassigned code points are judged after it (which ones depends on the "
        "server's Unicode version), and joiners and blank names too. Nor one that reads as "
        "a speaker the server names (assistant, server, system, admin, administrator, "
        "parley, moderator, operator, owner; letter case, spacing and look-alike letters "
        "aside): 422 reserved_name",
        # The rules a pattern can say, for the document (refused by ``_shown_as_it_is``).
        json_schema_extra={"pattern": refused_pattern()},
    ),
    AfterValidator(_shown_as_it_is),
]


class MemberPut(Strict):
    role: RoleName
    display_name: DisplayName | None = Field(
        default=None, description="Absent or null: the member keeps the name they have"
    )
    grants: list[CapabilityName] = Field(default_factory=list, max_length=100)
    denials: list[CapabilityName] = Field(
        default_factory=list, max_length=100, description="Win over the role and the grants"
    )


class MemberOut(Strict):
    user_id: str
    role: RoleName
    grants: list[str]
    denials: list[str]
    capabilities: list[str] = Field(description="What the member may do now")
    created_at: int
    display_name: str = Field(description="Empty: shown by user id")


class MePatch(Strict):
    display_name: DisplayName


class MySession(Strict):
    id: str
    title: str
    role: RoleName = Field(description="The caller's role there")
    created_at: int = Field(description="Milliseconds since the epoch.")
    last_seq: int


class MySessionList(Strict):
    sessions: list[MySession]
    limit: int
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page, of older sessions (null: none "
        "after this one); sessions created or deleted meanwhile move none past it"
    )


class InviteCreate(Strict):
    user_id: str = Field(min_length=1, max_length=200, description="A member of the session")
    max_uses: Annotated[int, Field(ge=1, le=100), WHOLE] = Field(
        default=1, description="Browsers it may sign in"
    )
    ttl_seconds: Annotated[int, Field(ge=60, le=2_592_000), WHOLE] = Field(
        default=86_400, description="How long the link works (30 days at most)"
    )
    token_ttl_seconds: Annotated[int, Field(ge=60), WHOLE] | None = Field(
        default=None,
        description="Each token's lifetime, at most PARLEY_TOKEN_TTL_MAX_S seconds "
        "(default 604800); default: PARLEY_TOKEN_TTL_DEFAULT_S",
    )


class InviteOut(Strict):
    id: str
    session_id: str
    user_id: str
    max_uses: int
    uses: int
    created_by: str
    created_at: int = Field(description="Milliseconds since the epoch.")
    expires_at: int = Field(description="Seconds since the epoch.")


class InviteCreated(InviteOut):
    secret: str = Field(description="Shown once; only its SHA-256 is kept")
    link: str = Field(
        description="The demo's path with the secret in the URL fragment, which browsers "
        "never send to the server"
    )


class InviteList(Strict):
    invites: list[InviteOut]


class InviteExchange(Strict):
    invite: str = Field(min_length=16, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")


class RolePut(Strict):
    capabilities: list[CapabilityName] = Field(max_length=100)


class RoleOut(Strict):
    name: str
    builtin: bool
    capabilities: list[str]


class RoleList(Strict):
    roles: list[RoleOut]


class MemberList(Strict):
    members: list[MemberOut]


# Body fields bounded by a setting, not by the model: (model, field) -> the JSON Schema
# keyword and the setting whose value the served document gives it (``app.with_setting_maxima``).
SETTING_MAXIMA = {
    ("TokenCreate", "ttl_seconds"): ("maximum", "token_ttl_max_s"),
    ("InviteCreate", "token_ttl_seconds"): ("maximum", "token_ttl_max_s"),
    ("DocumentCreate", "text"): ("maxLength", "max_document_chars"),
    ("EntryPost", "text"): ("maxLength", "max_prompt_chars"),
}


class TokenCreate(Strict):
    user_id: str = Field(min_length=1, max_length=200)
    ttl_seconds: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        default=None,
        description="At most PARLEY_TOKEN_TTL_MAX_S seconds (default 604800); "
        "default: PARLEY_TOKEN_TTL_DEFAULT_S",
    )


class TokenOut(Strict):
    token: str
    jti: str = Field(description="The token's id: revoke it with DELETE …/tokens/{jti}.")
    expires_at: int = Field(description="Seconds since the epoch.")
    user_id: str
    session_id: str
    role: RoleName


class TranscriptEntryOut(Strict):
    id: str
    seq: int
    kind: Literal["prompt", "message", "reply", "tool"]
    author: str
    role: Literal["user", "assistant", "tool"]
    status: str
    content: str
    created_at: int
    reason: str | None = Field(description="Why it ended unanswered, for people")
    reason_code: str | None = Field(
        description="Why it ended unanswered, as a stable code (docs/document.md: reasons)"
    )
    reply_to: str | None
    reply_id: str | None
    answers: list[str]
    started_at: int | None
    tool: str | None = Field(description="On a tool step: the tool it ran")
    author_name: str | None = Field(
        default=None, description="The author's display name now (null: none, or a reply)"
    )
    source: str | None = Field(
        None,
        description="On a message a member shared back from a private side-thread: "
        "``private_thread``",
    )
    retry_at: int | None = Field(
        None,
        description="When it may be sent again, in milliseconds since the epoch (UTC): set "
        "when a token quota failed it (reason_code quota_exceeded), the next UTC midnight, "
        "when the quotas start over; null otherwise (docs/models.md: quotas)",
    )


class TranscriptOut(Strict):
    messages: list[TranscriptEntryOut]


class FactPut(Strict):
    # Its length is the socket's rule (``check_fact``: ``too_large`` past 2,000 characters);
    # the document states it all the same (review RJ-2: it said none).
    value: str = Field(
        description=f"At most {MAX_FACT_CHARS} characters (longer: 413 too_large)",
        json_schema_extra={"maxLength": MAX_FACT_CHARS},
    )


class FactsOut(Strict):
    facts: dict[str, str]


class PinCreate(Strict):
    entry_id: str = Field(min_length=1, max_length=64)


class PinsOut(Strict):
    pins: list[str]


UserId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._@:+-]{1,200}$")]
CommandId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="Your id for this command: sent again, it is answered with the first "
        "answer and stored once. Absent: the server makes one (a retry is then a new command).",
    ),
]
AsUser = Annotated[
    UserId | None,
    Field(description="With the admin key only: the member the command is sent as"),
]


class EntryPost(Strict):
    # Its length is the door's (``too_large``, as on a socket); the served document gives
    # this server's bound (``SETTING_MAXIMA``; review RJ-2).
    text: str = Field(
        min_length=1,
        description="At most PARLEY_MAX_PROMPT_CHARS characters (default 32000; longer: "
        "413 too_large)",
    )
    id: CommandId | None = None
    as_user: AsUser = None


class CancelPost(Strict):
    id: CommandId | None = None
    as_user: AsUser = None


class PromptAccepted(Strict):
    prompt_id: str
    seq: int
    position: int | None = Field(
        description="1: the next to run; null when it runs, or no longer waits"
    )


class MessagePosted(Strict):
    message_id: str
    seq: int
    position: None = Field(default=None, description="Always null: a message does not wait")


class PromptStatusOut(Strict):
    prompt_id: str
    seq: int
    author: str
    status: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    reason_code: str | None = Field(
        description="Why it ended unanswered (docs/document.md: reasons)"
    )
    reason: str | None
    reply_id: str | None
    position: int | None = Field(description="While it waits, 1: the next to run; else null")
    retry_at: int | None = Field(
        None,
        description="When it may be sent again, in milliseconds since the epoch (UTC): set "
        "when a token quota failed it (reason_code quota_exceeded), the next UTC midnight, "
        "when the quotas start over; null otherwise (docs/models.md: quotas)",
    )


class PreviewMessage(Strict):
    role: Literal["user", "assistant", "tool"]
    author: str | None
    authors: list[str] = Field(description="Everyone who said it, when duplicates were folded")
    content: str
    tokens: int = Field(description="Its content, its framing (role, separators) and name")
    answering: bool = Field(description="One of the prompts this call answers")


class PreviewExcluded(Strict):
    entry_id: str
    reason: str


class PreviewSummary(Strict):
    id: str
    from_seq: int
    to_seq: int
    entries: int = Field(description="How many transcript entries it stands for")
    tokens: int


class ContextPreview(Strict):
    user_id: str
    prompt_ids: list[str] = Field(description="The prompts the call answers (none: history)")
    tokenizer: str
    budget: int
    tokens: int = Field(
        description="system_tokens + tools_tokens + opening_tokens + every message's tokens: "
        "the input as given now, without the entries excluded as running or waiting "
        "(pending_tokens)"
    )
    pending_tokens: int = Field(
        description="What the entries excluded as running (the run in flight) or waiting "
        "(prompts a run answers first) add to the call once their runs end, as they stand "
        "now: each prompt as history, the reply by its text so far, each tool step with its "
        "result; not in tokens. Their replies' text still to come adds more",
    )
    system: str
    system_tokens: int = Field(description="The system text framed, and the reply's opening")
    tools: list[str] = Field(description="The tools the call offers, by name")
    tools_tokens: int = Field(description="What their definitions add to the input")
    opening_tokens: int = Field(
        0,
        description="The user turn the provider puts before an input that opens with the "
        "model's turn (Anthropic's: '(earlier conversation left out)'), else 0",
    )
    messages: list[PreviewMessage]
    excluded: list[PreviewExcluded] = Field(description="Left out, and why")
    notes: dict[str, str] = Field(description="Entry id -> what was folded into it")
    summary: PreviewSummary | None = Field(
        description="The summary of older turns given in the system text, if any"
    )
