"""The side-thread commands, on the same command channel as the session's own.

    {"type": "thread_open", "id": "…", "anchor"?: "<entry id>", "title"?: "…"}
    {"type": "thread_prompt", "id": "…", "thread_id": "…", "text": "…"}
    {"type": "thread_summarise", "id": "…", "thread_id": "…"}    a draft to share back
    {"type": "thread_share", "id": "…", "thread_id": "…", "text": "…"}           edited text
    {"type": "thread_share", "id": "…", "thread_id": "…", "turn_ids": ["…", …]}  picked replies
    {"type": "thread_close" | "thread_delete", "id": "…", "thread_id": "…"}

Parsed here without I/O; judged by the session core (``session.core.threads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parley.session.errors import InvalidInput, TooLarge

MAX_TITLE_CHARS = 200
MAX_PICKED_TURNS = 50
MAX_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class ThreadOpenCommand:
    id: str
    anchor: str | None  # an entry of the shared session; None: its latest
    title: str


@dataclass(frozen=True, slots=True)
class ThreadPromptCommand:
    """Prompt in a side-thread; ``summarise``: ask for a draft of it to share back (the
    server writes the instruction)."""

    id: str
    thread_id: str
    text: str
    summarise: bool = False


@dataclass(frozen=True, slots=True)
class ThreadShareCommand:
    """Post into the shared session either ``text`` (say, an edited summary) or the
    replies ``turn_ids`` of the side-thread."""

    id: str
    thread_id: str
    text: str | None
    turn_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ThreadCloseCommand:
    """Close a side-thread (kept, read-only) or, with ``delete``, remove it."""

    id: str
    thread_id: str
    delete: bool


ThreadCommand = ThreadOpenCommand | ThreadPromptCommand | ThreadShareCommand | ThreadCloseCommand

THREAD_TYPES = frozenset(
    {
        "thread_open",
        "thread_prompt",
        "thread_summarise",
        "thread_share",
        "thread_close",
        "thread_delete",
    }
)


def _id(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'{key}' must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"'{key}' exceeds {MAX_ID_CHARS} characters")
    return value


def _text(data: dict[str, Any], max_chars: int) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise InvalidInput("'text' must be a string")
    if not text.strip():
        raise InvalidInput("'text' is empty")
    if len(text) > max_chars:
        raise TooLarge(f"'text' exceeds {max_chars} characters")
    return text


def parse_thread_command(
    kind: str, command_id: str, data: dict[str, Any], max_text_chars: int
) -> ThreadCommand:
    """The thread command of type ``kind`` (one of ``THREAD_TYPES``) in ``data``."""
    if kind == "thread_open":
        # Every field's form before any size (REST's body model judges the anchor's form
        # before the door reads the title's length: one answer at both doors).
        anchor = _id(data, "anchor", required=False)
        title = data.get("title", "")
        if not isinstance(title, str):
            raise InvalidInput("'title' must be a string")
        if len(title) > MAX_TITLE_CHARS:
            raise TooLarge(f"'title' exceeds {MAX_TITLE_CHARS} characters")
        return ThreadOpenCommand(command_id, anchor, title.strip())
    thread_id = _id(data, "thread_id")
    assert thread_id is not None
    if kind == "thread_prompt":
        return ThreadPromptCommand(command_id, thread_id, _text(data, max_text_chars))
    if kind == "thread_summarise":
        return ThreadPromptCommand(command_id, thread_id, "", summarise=True)
    if kind == "thread_share":
        return _share(command_id, thread_id, data, max_text_chars)
    return ThreadCloseCommand(command_id, thread_id, delete=kind == "thread_delete")


def _share(
    command_id: str, thread_id: str, data: dict[str, Any], max_text_chars: int
) -> ThreadShareCommand:
    picked = data.get("turn_ids")
    if ("text" in data) == (picked is not None):
        raise InvalidInput("give either 'text' or 'turn_ids'")
    if picked is None:
        return ThreadShareCommand(command_id, thread_id, _text(data, max_text_chars), ())
    if not isinstance(picked, list) or not picked:
        raise InvalidInput("'turn_ids' must be a non-empty list")
    # Each id's form before their count, as REST's body model judges them first.
    ids = tuple(_id({"turn_id": t}, "turn_id") or "" for t in picked)
    if len(picked) > MAX_PICKED_TURNS:
        raise TooLarge(f"at most {MAX_PICKED_TURNS} turns are shared at once")
    if len(set(ids)) != len(ids):
        raise InvalidInput("'turn_ids' names a turn twice")
    return ThreadShareCommand(command_id, thread_id, None, ids)
