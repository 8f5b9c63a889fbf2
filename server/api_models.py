"""Pydantic models of every REST request and response body."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from session.commands import unstorable

RoleName = Literal["owner", "editor", "viewer"]
PolicyName = Literal["queue", "coalesce", "interrupt", "reject"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable_text(self) -> Strict:
        """Refuse text the database cannot store (NUL, lone surrogates) as invalid input."""
        for name, value in self:
            problem = unstorable(value) if isinstance(value, str) else None
            if problem is not None:
                raise ValueError(f"{name} {problem}")
        return self


class ErrorDetail(Strict):
    code: str = Field(description="Stable, machine-readable error code.")
    message: str


class ErrorBody(Strict):
    error: ErrorDetail


class Health(Strict):
    status: str


class Readiness(Strict):
    status: str
    database: str
    migrations: str
    listener: str = Field(default="off", description="Cluster mode: ok / down; else off")


class SessionCreate(Strict):
    title: str = Field(default="", max_length=500)
    policy: PolicyName = Field(default="queue", description="How concurrent prompts run.")


class SessionPatch(Strict):
    title: str | None = Field(default=None, max_length=500)
    policy: PolicyName | None = None


class SessionOut(Strict):
    id: str
    title: str
    created_at: int = Field(description="Milliseconds since the epoch.")
    last_seq: int = Field(description="The highest sequence number handed out so far.")
    policy: PolicyName


class SessionList(Strict):
    sessions: list[SessionOut]
    total: int
    limit: int
    offset: int


class MemberPut(Strict):
    role: RoleName


class MemberOut(Strict):
    user_id: str
    role: RoleName
    created_at: int


class MemberList(Strict):
    members: list[MemberOut]


class TokenCreate(Strict):
    user_id: str = Field(min_length=1, max_length=200)
    ttl_seconds: int | None = Field(default=None, ge=1)


class TokenOut(Strict):
    token: str
    expires_at: int = Field(description="Seconds since the epoch.")
    user_id: str
    session_id: str
    role: RoleName


class TranscriptEntryOut(Strict):
    id: str
    seq: int
    kind: Literal["prompt", "message", "reply"]
    author: str
    role: Literal["user", "assistant"]
    status: str
    content: str
    created_at: int
    reason: str | None
    reply_to: str | None
    reply_id: str | None
    answers: list[str]
    started_at: int | None


class TranscriptOut(Strict):
    messages: list[TranscriptEntryOut]


class FactPut(Strict):
    value: str = Field(max_length=2000)


class FactsOut(Strict):
    facts: dict[str, str]


class PinCreate(Strict):
    entry_id: str = Field(min_length=1, max_length=64)


class PinsOut(Strict):
    pins: list[str]


class PreviewMessage(Strict):
    role: Literal["user", "assistant", "tool"]
    author: str | None
    authors: list[str] = Field(description="Everyone who said it, when duplicates were folded")
    content: str
    tokens: int
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
    tokens: int
    system: str
    system_tokens: int
    messages: list[PreviewMessage]
    excluded: list[PreviewExcluded] = Field(description="Left out, and why")
    notes: dict[str, str] = Field(description="Entry id -> what was folded into it")
    summary: PreviewSummary | None = Field(
        description="The summary of older turns given in the system text, if any"
    )
