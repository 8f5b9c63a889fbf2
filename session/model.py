"""What a model call is given and what it yields: the provider port's vocabulary.

Providers (``server/providers``) turn a ``ModelRequest`` into an async stream of
``ModelEvent``; closing the stream must stop the upstream call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ModelMessage:
    role: Literal["user", "assistant"]
    content: str
    author: str | None = None  # the member who wrote a user message (the latest, if several)
    authors: tuple[str, ...] = ()  # everyone who said it, when duplicates were folded


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call. ``answering`` indexes the messages this call answers (the run's
    prompts, several when a coalesced run answers them together); ``issuers`` are their
    authors, in order."""

    session_id: str
    issuers: tuple[str, ...]
    system: str
    messages: tuple[ModelMessage, ...]
    answering: tuple[int, ...]
    max_output_tokens: int = 1024


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str = "stop"


ModelEvent = TextDelta | Usage | Finish


class ModelProvider(Protocol):
    """The port every model backend implements."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Yield events for one call. Closing the iterator (``aclose``) cancels the call."""
        ...
