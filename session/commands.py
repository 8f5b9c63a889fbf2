"""JSON commands clients send on text frames, parsed and validated without I/O.

    {"type": "prompt",  "id": "<client id>", "text": "…"}     ask the model
    {"type": "message", "id": "<client id>", "text": "…"}     talk to the other members only
    {"type": "cancel",  "id": "<client id>", "prompt_id": "…"} cancel a queued or running prompt
    {"type": "set_policy", "id": "<client id>", "policy": "queue"|"coalesce"|"interrupt"|"reject"}
    {"type": "pin" | "unpin", "id": "<client id>", "entry_id": "…"}  keep a message in every input
    {"type": "set_fact", "id": "<client id>", "key": "…", "value": "…" | null}
    {"type": "thread_open" | "thread_prompt" | …}   side-threads (``session.thread_commands``)

Every command gets exactly one reply: ``ack`` or ``error`` (see ``ack`` / ``error_reply``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from parley.session.attribution import has_line_break
from parley.session.errors import (
    InvalidInput,
    ParleyError,
    RateLimited,
    TooLarge,
    UnknownCommand,
    error_for,
    retry_after_ms,
)
from parley.session.json_constants import finite_float, reject_constant
from parley.session.json_values import json_values_refusal
from parley.session.queue import Policy
from parley.session.thread_commands import THREAD_TYPES, ThreadCommand, parse_thread_command
from parley.session.unique_keys import unique_object

MAX_COMMAND_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_chars: int = 32_000
    max_frame_chars: int = 256_000


@dataclass(frozen=True, slots=True)
class PromptCommand:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class MessageCommand:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class CancelCommand:
    id: str
    prompt_id: str


@dataclass(frozen=True, slots=True)
class PolicyCommand:
    id: str
    policy: Policy


@dataclass(frozen=True, slots=True)
class PinCommand:
    id: str
    entry_id: str
    pinned: bool


@dataclass(frozen=True, slots=True)
class FactCommand:
    id: str
    key: str
    value: str | None  # None removes the fact


Command = (
    PromptCommand
    | MessageCommand
    | CancelCommand
    | PolicyCommand
    | PinCommand
    | FactCommand
    | ThreadCommand
)

FACT_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
# Names that are a URL path's dot segments, which clients resolve away (review: a fact
# named ".." made the Python SDK's delete_fact delete the session itself).
PATH_DOTS = frozenset({".", ".."})
# A key a JavaScript object cannot hold as its own: assigned, it sets the prototype, so a
# Yjs client's ``toJSON()`` of the facts drops it (review: a fact so named reached every
# model call and no member's page). Refused when set; one stored before can be deleted.
JS_PROTO = "__proto__"
MAX_FACT_CHARS = 2000


def check_fact(key: str, value: str | None) -> None:
    """A fact is one line (it is given to the model as one quoted line under its author)."""
    if not FACT_KEY.fullmatch(key):
        raise _invalid("key", "a fact key is 1-100 letters, digits or _.:-")
    if key in PATH_DOTS:
        raise _invalid("key", f"a fact key may not be {key!r}: it names a fact in a URL path")
    if key == JS_PROTO and value is not None:
        raise _invalid("key", f"a fact key may not be {key!r}: JavaScript clients cannot read it")
    if value is not None and len(value) > MAX_FACT_CHARS:
        raise TooLarge(f"a fact is at most {MAX_FACT_CHARS} characters")
    if value is not None and has_line_break(value):
        raise _invalid("value", "a fact is one line: no line breaks")


def _invalid(at: str, message: str) -> InvalidInput:
    """``message`` as the problem of field ``at`` (REST lists it in ``error.details``)."""
    return InvalidInput(message, ((at, message),))


class CommandError(InvalidInput):
    """A command that could not be parsed; ``command_id`` is echoed when it was readable."""

    def __init__(self, error: ParleyError, command_id: str | None) -> None:
        super().__init__(error.message)
        self.code = error.code
        self.http_status = error.http_status
        self.command_id = command_id


def parse_command(frame: str, limits: Limits) -> Command:
    """Parse one text frame; raise ``CommandError`` carrying the stable error code."""
    if len(frame) > limits.max_frame_chars:
        raise CommandError(TooLarge(f"command exceeds {limits.max_frame_chars} characters"), None)
    refusal = json_values_refusal(frame)
    if refusal is not None:  # unparsed: its id if it is the first or last key
        raise CommandError(refusal, command_id_unread(frame))
    try:
        data = json.loads(
            frame,
            parse_constant=reject_constant,
            parse_float=finite_float,
            object_pairs_hook=unique_object,
        )
    except (ValueError, RecursionError):
        raise CommandError(InvalidInput("frame is not valid JSON"), None) from None
    except InvalidInput as exc:  # a key given twice: named by its id as JSON reads it
        raise CommandError(exc, command_id_of(frame)) from None  # (the last, if repeated)
    if not isinstance(data, dict):
        raise CommandError(InvalidInput("a command must be a JSON object"), None)
    raw_id = data.get("id")
    command_id = raw_id if isinstance(raw_id, str) else None
    try:
        return command_from(data, limits)
    except ParleyError as exc:
        raise CommandError(exc, command_id) from None


def unstorable(text: str) -> str | None:
    """Why a database could not store ``text`` (NUL, lone surrogates), or None if it can.

    Such text is refused as invalid input where it arrives, not when it is written."""
    if "\x00" in text:
        return "contains a NUL character"
    if text.isascii():  # known at once: no surrogate, no copy
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate?)"
    return None


# What a database cannot store in text: NUL (PostgreSQL refuses it) and lone surrogates
# (no UTF-8 encoding).
_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD, one character for one
    (offsets into it stay true). For text the server did not take from a member and so
    cannot refuse: what a model or a tool says, made storable where it enters."""
    return text if unstorable(text) is None else _UNSTORABLE_CHARS.sub("\ufffd", text)


def unstorable_in(data: object, path: str = "") -> tuple[str, str] | None:
    """Where (a dotted path) and why parsed JSON ``data`` holds text a database cannot
    store, at any depth and in keys too; None if all of it can be stored."""
    if isinstance(data, str):
        problem = unstorable(data)
        return None if problem is None else (path, problem)
    if not isinstance(data, dict | list | tuple):
        return None
    # No recursion (a deeply nested body must not overflow the stack), and no path built
    # but the one reported: each open container's key and what is left of it.
    open_: list[tuple[str | int, Iterator[tuple[Any, Any]]]] = [(path, _members(data))]
    while open_:
        for key, value in open_[-1][1]:
            if isinstance(key, str) and (problem := unstorable(key)) is not None:
                return _path(open_), f"has a key that {problem}"
            if isinstance(value, str):
                if (problem := unstorable(value)) is not None:
                    return _path(open_, key), problem
            elif isinstance(value, dict | list | tuple):
                open_.append((key, _members(value)))
                break
        else:
            open_.pop()
    return None


def _members(container: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _path(open_: list[tuple[str | int, Iterator[tuple[Any, Any]]]], *last: str | int) -> str:
    """``a[1].b``: the keys of the open containers below the first (its path), then ``last``."""
    where = str(open_[0][0])
    for key in [*(key for key, _ in open_[1:]), *last]:
        if isinstance(key, int):
            where += f"[{key}]"
        else:
            where = f"{where}.{key}" if where else key
    return where


def _check_strings(data: dict[str, Any]) -> None:
    found = unstorable_in(data)
    if found is not None:
        raise InvalidInput(f"'{found[0]}' {found[1]}")


MAX_ENTRY_ID_CHARS = 64  # as REST's paths and bodies take them


def _entry_id(data: dict[str, Any], field: str) -> str:
    entry_id = data.get(field)
    if not isinstance(entry_id, str) or not entry_id:
        raise InvalidInput(f"'{field}' must be a non-empty string")
    if len(entry_id) > MAX_ENTRY_ID_CHARS:
        raise InvalidInput(f"'{field}' exceeds {MAX_ENTRY_ID_CHARS} characters")
    return entry_id


# Each command type's fields: any other is refused (``invalid``), at every door, so a field
# a newer client relies on is never dropped unread by an older server (docs/websocket.md:
# "Unknown fields").
FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset({"type", "id", *names})
    for kind, names in {
        "prompt": ("text",),
        "message": ("text",),
        "cancel": ("prompt_id",),
        "pin": ("entry_id",),
        "unpin": ("entry_id",),
        "set_fact": ("key", "value"),
        "set_policy": ("policy",),
        "thread_open": ("title", "anchor"),
        "thread_prompt": ("thread_id", "text"),
        "thread_summarise": ("thread_id",),
        "thread_share": ("thread_id", "text", "turn_ids"),
        "thread_close": ("thread_id",),
        "thread_delete": ("thread_id",),
    }.items()
}


def command_from(data: dict[str, Any], limits: Limits) -> Command:
    """The command a parsed JSON object states, judged by every rule of its form, in one
    order: the id, the type, unknown fields, text a database cannot store, then each field
    (its type, then its size and form). The one parser of every door: a socket's frame
    (``parse_command``), a forwarded one, and the REST routes that change a session
    (``server.runtime.session_writes``). Raises ``InvalidInput``, ``TooLarge`` or
    ``UnknownCommand``; whether the sender may do it is the core's to judge after."""
    command_id = data.get("id")
    if not isinstance(command_id, str) or not command_id.strip():
        raise InvalidInput("'id' must be a non-empty string")
    if len(command_id) > MAX_COMMAND_ID_CHARS:
        raise InvalidInput(f"'id' exceeds {MAX_COMMAND_ID_CHARS} characters")
    kind = data.get("type")
    known = FIELDS.get(kind) if isinstance(kind, str) else None
    if known is None:
        raise UnknownCommand(f"unknown command type {kind!r}")
    unknown = [name for name in data if name not in known]
    if unknown:
        named = ", ".join(repr(name[:40]) for name in unknown[:5])  # a name may be long
        raise InvalidInput(f"unknown field(s) {named} in a {kind!r} command")
    # Only now: what a field no command has holds is never walked (review: 350,000 lists in
    # one were walked 0.5 s, then the field refused).
    _check_strings(data)
    if kind in ("prompt", "message"):
        text = data.get("text")
        if not isinstance(text, str):
            raise InvalidInput("'text' must be a string")
        if not text.strip():
            raise InvalidInput("'text' is empty")
        if len(text) > limits.max_text_chars:
            raise TooLarge(f"'text' exceeds {limits.max_text_chars} characters")
        if kind == "prompt":
            return PromptCommand(id=command_id, text=text)
        return MessageCommand(id=command_id, text=text)
    if kind == "cancel":
        return CancelCommand(id=command_id, prompt_id=_entry_id(data, "prompt_id"))
    if kind in ("pin", "unpin"):
        entry_id = _entry_id(data, "entry_id")
        return PinCommand(id=command_id, entry_id=entry_id, pinned=kind == "pin")
    if kind == "set_fact":
        key, value = data.get("key"), data.get("value")
        if not isinstance(key, str):
            raise InvalidInput("'key' must be a string")
        if value is not None and not isinstance(value, str):
            raise InvalidInput("'value' must be a string, or null to remove the fact")
        check_fact(key, value)
        return FactCommand(id=command_id, key=key, value=value)
    if kind == "set_policy":
        policy = data.get("policy")
        if not isinstance(policy, str) or policy not in {p.value for p in Policy}:
            raise InvalidInput(f"'policy' must be one of {', '.join(p.value for p in Policy)}")
        return PolicyCommand(id=command_id, policy=Policy(policy))
    if isinstance(kind, str) and kind in THREAD_TYPES:
        return parse_thread_command(kind, command_id, data, limits.max_text_chars)
    raise UnknownCommand(f"unknown command type {kind!r}")


# A command's id where clients put it, first or last (``{"id": …`` / ``…, "id": "…"}``):
# a string's quotes are escaped, so only a key matches.
_ID_NEAR_END = re.compile(r'"id"\s*:\s*"([^"\\]{1,' + str(MAX_COMMAND_ID_CHARS) + '})"')
ID_SEARCH_CHARS = 512


def command_id_unread(frame: str) -> str | None:
    """The id of a command frame refused unread, if it is near one of its ends (found in
    constant time, whatever the frame's size)."""
    for part in (frame[:ID_SEARCH_CHARS], frame[-ID_SEARCH_CHARS:]):
        found = _ID_NEAR_END.search(part)
        if found is not None:
            return found.group(1)
    return None


def command_id_of(frame: str) -> str | None:
    """The id of a command frame, if one can be read (for replies to unparsed frames)."""
    if json_values_refusal(frame) is not None:
        return command_id_unread(frame)  # not parsed: ``parse_command`` refuses it so
    try:
        data = json.loads(frame, parse_constant=reject_constant, parse_float=finite_float)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        return str(data["id"])[:MAX_COMMAND_ID_CHARS]
    return None


def ack(command_id: str, *, seq: int | None = None, **ids: str | int) -> str:
    """The acknowledgement of a stored command: its sequence number and the ids it made."""
    return json.dumps({"type": "ack", "id": command_id, "seq": seq, **ids})


def error_reply(command_id: str | None, error: ParleyError, *, details: bool = False) -> str:
    """A command's error reply; with ``details``, also the problems an ``InvalidInput``
    lists, for a reply that another node answers a REST call with (``reply_error``): REST
    names the field (review: a fact's line break was ``at: "value"`` on the node that runs
    the session, ``at: "body"`` through another). A socket's reply has none."""
    reply: dict[str, Any] = {
        "type": "error",
        "id": command_id,
        "code": error.code.value,
        "message": error.message,
    }
    if details and isinstance(error, InvalidInput) and error.details:
        reply["details"] = [[at, what] for at, what in error.details]
    wait_s = error.retry_after_s if isinstance(error, RateLimited) else None
    wait_ms = retry_after_ms(wait_s)
    if wait_ms is not None:
        # When to send it again (not stored: resent by its id, it is judged anew), in the
        # shape a 1013's reason has (review RH-2: a socket's refusal said nothing).
        reply["retry_after_ms"] = wait_ms
        if details:
            reply["retry_after_s"] = wait_s
    return json.dumps(reply)


def reply_error(reply: dict[str, Any]) -> ParleyError:
    """The error an error reply (``error_reply``) reports, as it was raised where the reply
    was made: its code, its message and the problems it lists."""
    listed = reply.get("details")
    details = tuple((str(at), str(what)) for at, what in listed) if listed else ()
    error = error_for(str(reply.get("code")), str(reply.get("message")), details)
    wait = reply.get("retry_after_s")
    if not isinstance(wait, int | float) and isinstance(reply.get("retry_after_ms"), int):
        wait = reply["retry_after_ms"] / 1000  # a socket's reply (the relay's, say)
    if isinstance(error, RateLimited) and isinstance(wait, int | float):
        error.retry_after_s = float(wait)
    return error
