"""What a model call is given and what it yields: the provider port's vocabulary.

Providers (``server/providers``) turn a ``ModelRequest`` into an async stream of
``ModelEvent``; closing the stream must stop the upstream call. Providers render this
vocabulary into their wire format; they add nothing to the content, so what the context
preview shows is what the model is given.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from parley.session.commands import storable, unstorable
from parley.session.names import is_speaker_name

WIRE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The tail of a derived name (``wire_name``): an id ending so is derived too.
DERIVED_TAIL = re.compile(r"-[0-9a-f]{12}\Z")
# The user turn a provider whose API refuses an input opening with the model's turn
# (Anthropic's) puts before it: it stands in for the turns the context left out, and a
# build counts it (``ContextSettings.user_turn_first``, ``tokens.opening_tokens``).
OPENING = "(earlier conversation left out)"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for a tool. ``arguments`` is the JSON text the model wrote (it may be
    invalid JSON: the tool loop answers that with an error result, it does not crash)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ModelMessage:
    """One message of the conversation.

    ``user``: a member's message (``author``: who it is from, the member who asks it when
    someone does; ``authors`` when duplicates were folded). Its ``content`` opens with
    ``attribution``, the server's line naming every author with their verb, then a line
    break and ``body``, the members' escaped text (``session.attribution``): providers
    with structured fields send the two apart, the content stays what the preview shows.
    ``assistant``: the model's earlier output, with the ``tool_calls`` it made.
    ``tool``: the result of the tool call ``tool_call_id`` (``is_error`` when it failed).
    """

    role: Literal["user", "assistant", "tool"]
    content: str
    author: str | None = None
    authors: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False
    attribution: str = ""

    @property
    def body(self) -> str:
        """The content after the attribution line (all of it when there is none)."""
        if not self.attribution:
            return self.content
        return self.content.removeprefix(self.attribution).removeprefix("\n")


def wire_name(member: str) -> str:
    """A member as a provider's ``name`` field takes it (OpenAI's: ``^[a-zA-Z0-9_-]{1,64}$``;
    the name is part of the input, ``session.tokens``): the id itself when it fits, else
    its allowed characters and a digest of the whole id, so two
    members never share a name by losing the same characters. An id that fits but ends
    as a derived name does (``-`` and 12 hex digits) is derived too: passed as itself it
    could be another member's derived name (review: ``bob_smith-2451e212998c`` was sent
    as ``bob.smith``'s). So distinct ids get distinct names, but for a 48-bit digest
    collision. An id that reads as a speaker the server names (``server``, stored before
    such ids were refused: ``names.is_speaker_name``) is derived too, after ``member_``."""
    reserved = is_speaker_name(member)
    if not reserved and WIRE_NAME.fullmatch(member) and not DERIVED_TAIL.search(member):
        return member
    kept = re.sub(r"[^A-Za-z0-9_-]+", "_", member)[: 41 if reserved else 48].strip("_")
    kept = f"member_{kept}" if reserved else kept or "member"
    return f"{kept}-{hashlib.blake2b(member.encode(), digest_size=6).hexdigest()}"


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call. ``answering`` indexes the messages this call answers (the run's
    prompts, several when a coalesced run answers them together); ``issuers`` are their
    authors, in order. ``purpose`` is ``summary`` for the audited calls that condense old
    turns. ``model`` names the model when the provider serves several (None: its default)."""

    session_id: str
    issuers: tuple[str, ...]
    system: str
    messages: tuple[ModelMessage, ...]
    answering: tuple[int, ...]
    max_output_tokens: int = 1024
    tools: tuple[ToolSpec, ...] = ()
    purpose: Literal["reply", "summary"] = "reply"
    model: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the model stopped: ``stop``, ``length``, ``tool_calls`` or a provider's word."""

    reason: str = "stop"


ModelEvent = TextDelta | ToolCall | Usage | Finish


def storable_call(call: ToolCall) -> ToolCall:
    """``call`` with its text as a database can store it (``commands.storable``): the
    model's words enter the server here, to be stored and shown, and a NUL or a lone
    surrogate in them (valid JSON escapes) made every later read of the transcript fail.
    Streamed text is made storable across its pieces by ``StreamedText``."""
    return ToolCall(storable(call.id), storable(call.name), storable(call.arguments))


class StreamedText:
    """A model's streamed text made storable piece by piece (``storable``), a UTF-16
    surrogate pair split between two pieces joined rather than stored as two U+FFFD: a
    proxy that slices JavaScript strings sends an emoji's halves as ``"\\ud83d"``, then
    ``"\\ude00"`` (review RV37 F3). A piece ending in a pair's first half keeps it back
    for the next; ``end`` gives what is still kept (U+FFFD: no second half came)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def piece(self, text: str) -> str:
        """What of ``text`` (after what was kept back) can be stored and shown now."""
        if self._held:
            text, self._held = self._held + text, ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        if unstorable(text) is None:
            return text
        # Pairs of halves made one character each; lone halves (and NULs) then replaced.
        units = text.encode("utf-16-le", "surrogatepass")
        return storable(units.decode("utf-16-le", "surrogatepass"))

    def end(self) -> str:
        """What was kept back, as it can be stored (the stream ended)."""
        held, self._held = self._held, ""
        return storable(held)


class ModelProvider(Protocol):
    """The port every model backend implements."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Yield events for one call. Closing the iterator (``aclose``) cancels the call.

        Raises ``session.errors.ProviderError`` for a failure the provider could name."""
        ...
