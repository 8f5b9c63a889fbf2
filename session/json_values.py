"""How many values a JSON text holds, bounded before it is parsed: the one rule of every
door that parses what a client sent (a socket's command frame, a REST body).

Parsing is the loop's time, and a value costs the same to parse whatever it is worth: a
1 MB command of 350,000 empty lists in a field no command has was parsed, walked, and only
then refused, 0.5-0.8 s of the loop each (review). No body Parley takes holds more than
``MAX_JSON_VALUES`` values (a webhook's 1,000 session ids are the most), so a text with
more is refused unparsed, whatever its size.

The count is of commas and opening brackets outside strings (every value but the first
follows one), found with ``bytes`` methods (C loops over the text, a few milliseconds a
MiB): a command's text may hold any number of them, and they are not counted.

Nor does one nest deeper than ``MAX_JSON_DEPTH`` arrays and objects (a document's readers,
three, are the deepest): past that a text is refused unparsed too. Python's parser
recurses once a level, and a frame of a thousand ``[`` (well within the values' count)
ended in its ``RecursionError``, told as "not valid JSON" with no id (review FX36). The
depth is read from the same marks outside strings, in a loop bounded by the count.
"""

from __future__ import annotations

from parley.session.errors import InvalidInput

MAX_JSON_VALUES = 4096
MAX_JSON_DEPTH = 64  # arrays and objects, one in another
_OPENERS = frozenset(b"[{")
# All but a quote and the marks a value follows: deleted in one pass (``bytes.translate``).
_UNMARKED = bytes(b for b in range(256) if b not in b'",[{')


def json_values_refusal(raw: str | bytes, limit: int = MAX_JSON_VALUES) -> InvalidInput | None:
    """``InvalidInput`` when the JSON text ``raw`` holds more than ``limit`` values, else
    None. Judged by counting characters, never by parsing: a text that is not JSON may pass
    (its parser is the one to say what is wrong) but then costs no more to parse than one
    of ``limit`` values, as a parser stops at the first fault."""
    text = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _over(text, limit):
        return InvalidInput(f"more than {limit} JSON values: no command or body holds that many")
    if _too_deep(text, MAX_JSON_DEPTH):
        return InvalidInput(
            f"JSON nested too deeply: more than {MAX_JSON_DEPTH} arrays and objects, one in"
            " another (no command or body nests that deep)"
        )
    return None


def _unescaped(text: bytes) -> bytes:
    """``text`` with its escapes out (an escaped backslash first: ``\\\\"`` ends a string),
    so every quote left opens or closes a string. UTF-8's multibyte characters hold no
    ASCII bytes."""
    if b"\\" not in text:
        return text
    return text.replace(b"\\\\", b"").replace(b'\\"', b"")


def _over(text: bytes, limit: int) -> bool:
    marks = text.translate(None, _UNMARKED)
    if len(marks) < limit:  # even were every one outside strings
        return False
    if b"\\" in text:
        marks = _unescaped(text).translate(None, _UNMARKED)
    # Two quotes a string, and at most two strings (a key and its value) follow each comma
    # or bracket: too many are refused before the marks are cut at them.
    quotes = marks.count(b'"')
    if quotes > 4 * limit:
        return True
    inside = sum(map(len, marks.split(b'"')[1::2])) if quotes else 0
    return 1 + len(marks) - quotes - inside > limit  # the first value, one after each mark


_DEPTH_MARKS = bytes(b for b in range(256) if b not in b'"[]{}')


def _too_deep(text: bytes, depth: int) -> bool:
    """Whether arrays and objects outside strings nest more than ``depth`` deep (called
    once ``_over`` passed the text: at most ``MAX_JSON_VALUES`` of them open, so the loop
    below is bounded by the count, closing brackets past the first fault aside)."""
    if text.count(b"[") + text.count(b"{") <= depth:  # even were every one outside strings
        return False
    brackets = b"".join(_unescaped(text).translate(None, _DEPTH_MARKS).split(b'"')[0::2])
    level = 0
    for byte in brackets:
        level += 1 if byte in _OPENERS else -1
        if level > depth:
            return True
        if level < 0:  # not JSON: its parser says so, at this fault at the latest
            return False
    return False
