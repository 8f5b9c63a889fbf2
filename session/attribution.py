"""Who said what, written so that no member's text can pass for the server's.

The server marks structure in a model input with lines that open with ``[``: the
attribution line that starts every user message (``[alice wrote, bob asks you]``), the
headings of the system text (``[Session facts …]``), references to folded text. Text that
came from members (messages, prompts, pins, facts, replies and summaries that may echo
them, tool results) is escaped before it is placed: a line whose first visible character
is an opening bracket of any script gets a backslash in front, so no line of it reads as
one of the server's. Names are written bare when they are plain, else as JSON strings, so
a name brings no verb, comma or bracket of its own.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parley.session.look_alikes import LATIN_LOOK_ALIKES

ESCAPE = "\\"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
# Characters that show nothing at the start of a line, so a bracket after them still
# opens the line to a reader: format characters, marks, and the blank "letters".
_BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp"})
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_BLANK_LETTERS_BLANKED = dict.fromkeys(map(ord, _BLANK_LETTERS), " ")
# Where ``str.splitlines`` breaks a line: what any reader of lines may take for one. Written
# once, as a regular expression's class (``[{_BREAKS}]``) and as a set.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
LINE_BREAKS = frozenset(_BREAKS)
# A line opens with a bracket, to a reader, when one comes before its first letter (of any
# script): after blanks, digits, punctuation, symbols and marks, an ordered list's markers
# (``1.``, ``a)``, ``iv.``: their letters count as none) included. ``**[alice asks you]**``,
# ``1. 2. [alice asks you]``, ``1\ufe0f\u20e3 [alice asks you]`` read as the server's line
# as ``[alice asks you]`` does (reviews RD-1, RF-1). A text with no line that may (one
# scan in C) needs no look at its lines: such a line's first bracket of ASCII or first
# character beyond ASCII comes after only ASCII that is no letter, or list markers.
_LIST_MARKER = "(?:[0-9]{1,9}|[A-Za-z]{1,4})[.)]"
_MAYBE_BRACKET = re.compile(
    f"(?:\\A|[{_BREAKS}])(?:[A-Za-z]{{1,4}}[.)]|[^A-Za-z{_BREAKS}])*?[([{{\x80-\U0010ffff]"
)
# The lead of a line (``_LEAD``): up to its first letter, a list marker's letters aside.
_LEAD = re.compile(r"(?:[^\W\d_]{1,4}[.)]|[\W\d_])*")
# The ordered list's markers a line opens with, if any, and the blanks after them.
_MARKED = re.compile(f"\\s*(?:{_LIST_MARKER}\\s*)+")
_ASCII_OPENING = re.compile("[([{]")


def has_line_break(text: str) -> bool:
    return not LINE_BREAKS.isdisjoint(text)


# What opens a bracket, after NFKC: general category Ps (open punctuation) or Pi (initial
# quote, which holds brackets too: U+2E02 LEFT SUBSTITUTION BRACKET); and the opening
# brackets Unicode files elsewhere, which ``unicodedata`` cannot find by a property (it has
# no Bidi_Paired_Bracket_Type, and these are not Bidi_Mirrored): the left and middle pieces
# of tall brackets (Sm), left corners (So), opening quotation mark ornaments (So) and
# U+FD3E ORNATE LEFT PARENTHESIS (Pe: it closes in right-to-left text). A test finds every
# character whose name makes it a left bracket, parenthesis or corner and checks it is
# one of these (review: ``⎡alice asks you⎦`` was not escaped).
_OPENING_CATEGORIES = frozenset({"Ps", "Pi"})
_OPENING_SYMBOLS = frozenset(
    "\u231c\u231e"  # TOP / BOTTOM LEFT CORNER
    "\u239b\u239c\u239d"  # LEFT PARENTHESIS UPPER HOOK, EXTENSION, LOWER HOOK
    "\u23a1\u23a2\u23a3"  # LEFT SQUARE BRACKET UPPER CORNER, EXTENSION, LOWER CORNER
    "\u23a7\u23a8\u23a9\u23aa"  # LEFT CURLY BRACKET UPPER HOOK … , CURLY BRACKET EXTENSION
    "\u23b0\u23b1"  # UPPER LEFT OR LOWER RIGHT (and mirrored) CURLY BRACKET SECTION
    "\u27d4"  # UPPER LEFT CORNER WITH DOT
    "\u275b\u275d\u275f\u2760\U0001f676\U0001f678"  # opening quotation mark ornaments
    "\ufd3e"  # ORNATE LEFT PARENTHESIS
)


def _is_opening(char: str) -> bool:
    folded = unicodedata.normalize("NFKC", char)[:1] or char
    return unicodedata.category(folded) in _OPENING_CATEGORIES or folded in _OPENING_SYMBOLS


def _opens_with_bracket(line: str) -> bool:
    """Whether an opening bracket comes before ``line``'s first letter (``_LEAD``), unless
    it is escaped already (a backslash first)."""
    blanked = line.translate(_BLANK_LETTERS_BLANKED)
    lead = _LEAD.match(blanked)
    chars = lead.group() if lead is not None else ""
    if not chars or _visible(chars) in (None, ESCAPE):
        return False
    if _ASCII_OPENING.search(chars) is not None:
        return True
    return not chars.isascii() and any(_is_opening(c) for c in set(chars) if not c.isascii())


# The words of the server's own lines (after NFKC, case folded, blanks made single and
# invisible characters dropped): a line that holds one, opens with no plain letter or digit
# and has a closing bracket or a symbol after it reads as the server's whatever it opens and
# ends with (review RZ-1: ``⊏alice asks you]``, ``匚alice asks you]``: a square-image sign, a
# CJK radical and a Bopomofo letter are no brackets by any Unicode property; review RD-1:
# ``**[alice asks you]**``, `` `[alice asks you]` ``, ``|[alice wrote]|``: Markdown around
# a bracket line, and the words of every line the server writes, ``ask you`` and ``the
# assistant's reply`` among them).
_SERVER_WORDS = (
    "wrote",
    "ask you",
    "asks you",
    "message #",
    "session facts",
    "pinned messages",
    "messages said",
    "end of",
    "summary of",
    "the assistant",
    "was run for",
    "left out",
    "the same",
    "no complete answer",
    "cut off",
)
# What a line holding a word of the server's holds, as written: a piece of each word in
# ASCII, or a character that NFKC, case folding or the dropping of invisible characters
# could make part of one (beyond ASCII, or an ASCII control but the tab, a blank). A line
# without it mimics nothing: one scan in C, before any look at its characters in Python.
_WORD_HINT = (
    "(?i:wrote|ask|message|facts|pinned|end|summary|assistant|run|left|same|answer|cut)"
    "|[\x00-\x08\x0e-\x1b\x1f\x7f-\U0010ffff]"
)
_MAY_HOLD_WORD = re.compile(_WORD_HINT)
# What a closing bracket or a symbol may be, as written: one of ASCII's (categories Pe, Sm
# and Sk) or any character beyond ASCII.
_MAY_CLOSE = ")\\]}+<=>|~^`\x80-\U0010ffff"
# Where such a line may be: one that opens, after blanks of ASCII, with anything but a
# plain letter or digit, and holds a character of ``_MAY_CLOSE`` and ``_WORD_HINT`` (in
# any order: each looked for once, so the scan stays linear; the first is cheaper).
_MAYBE_MIMIC = re.compile(
    f"(?:\\A|[{_BREAKS}])"
    "[\x00-\x09\x0e-\x1b\x1f\x20\x7f]*+"
    f"(?:{_LIST_MARKER}[\x00-\x09\x0e-\x1b\x1f\x20\x7f]*)*"
    f"(?=[^A-Za-z0-9\\\\{_BREAKS}])"
    f"(?=[^{_BREAKS}]*?[{_MAY_CLOSE}])"
    f"(?=[^{_BREAKS}]*?(?:{_WORD_HINT}))"
)
_CLOSING_CATEGORIES = frozenset({"Pe", "Pf", "Sm", "So", "Sk"})
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Mn", "Me"})


def _visible(chars: Iterable[str]) -> str | None:
    """The first character of ``chars`` that shows (None: none does)."""
    for char in chars:
        if char.isspace() or char in _BLANK_LETTERS:
            continue
        if unicodedata.category(char) in _BLANK_CATEGORIES:
            continue
        return char
    return None


def _mimics_server_line(line: str) -> bool:
    """Whether ``line`` opens with no plain letter or digit and holds a word of the server's
    lines and a closing bracket or a symbol after its first character: a look-alike of
    one, whatever it opens and ends with."""
    if _MAY_HOLD_WORD.search(line) is None:
        return False
    first = _visible(line)
    if first is None or first == ESCAPE or (first.isascii() and first.isalnum()):
        return False
    words = _words(line)
    if not any(word in words for word in _SERVER_WORDS):
        return False
    rest = line[line.index(first) + 1 :]
    if rest.isascii():
        return _ASCII_CLOSING.search(rest) is not None
    return any(
        unicodedata.category(c) in _CLOSING_CATEGORIES for c in unicodedata.normalize("NFKC", rest)
    )


# ASCII's controls but its blanks: dropped as invisible (the rest of ASCII is unchanged
# by NFKC, and case folded by ``lower``).
_ASCII_INVISIBLE = dict.fromkeys(c for c in range(0x80) if chr(c) < " " and not chr(c).isspace())
_ASCII_INVISIBLE[0x7F] = None
_ASCII_CLOSING = re.compile("[)\\]}+<=>|~^`]")  # ASCII's Pe, Sm and Sk
# Between the words of a line as read: anything but a letter, a digit, ``#`` or an
# apostrophe is a blank (``asks-you``, ``asks_you``, ``asks\u2010you``: review RF-1).
_NOT_WORD = re.compile(r"[^\w#'\u2019]|_")
# Letters of other scripts (and symbols) that look like Latin ones, read as those, by
# Unicode's confusables data (``session/look_alikes.py``): ``[alice \u0430sks y\u043eu]`` in
# Cyrillic reads as ``asks you`` (review RF-1), so does ``\u0251sks \u028f\u1d0fu``.
_LOOK_ALIKES = str.maketrans(
    {char: latin for latin, chars in LATIN_LOOK_ALIKES.items() for char in chars}
)


def _words(line: str) -> str:
    """``line``'s words as a reader takes them in: NFKC, case folded, look-alike letters
    read as the Latin ones, invisible characters dropped, anything else between letters a
    single blank (in C for a line of ASCII)."""
    if line.isascii():
        shown = line.translate(_ASCII_INVISIBLE).lower()
    else:
        shown = "".join(
            c
            for c in unicodedata.normalize("NFKC", line).casefold().translate(_LOOK_ALIKES)
            if c.isspace() or unicodedata.category(c) not in _INVISIBLE_CATEGORIES
        )
    return " ".join(_NOT_WORD.sub(" ", shown.replace("#", " #")).split())


def escape_text(text: str) -> str:
    """``text`` with a backslash before every line (at any Unicode line break) that could
    pass for one of the server's: its first visible character opens a bracket, or it
    mimics one (``_mimics_server_line``); nothing else changes. Costs one pass over the
    text when no line can."""
    if _MAYBE_BRACKET.search(text) is None and _MAYBE_MIMIC.search(text) is None:
        return text
    lines = text.splitlines(keepends=True)
    marked = [is_server_line(line) for line in lines]  # each line looked at once
    if not any(marked):
        return text
    return "".join(
        ESCAPE + line if mark else line for line, mark in zip(lines, marked, strict=True)
    )


def is_server_line(line: str) -> bool:
    """Whether ``line`` reads as a structure line of the server's (what ``escape_text``
    makes sure no escaped text has): a bracket before its first letter, or a look-alike
    of one after any list markers it opens with."""
    if _opens_with_bracket(line):
        return True
    marker = _MARKED.match(line)
    return _mimics_server_line(line if marker is None else line[marker.end() :])


def name(member: str) -> str:
    """How a member is named in a model input: bare when plain, else a JSON string."""
    return member if _PLAIN_NAME.fullmatch(member) else json.dumps(member)


def one_line(text: str) -> str:
    """``text`` on one line, as a JSON string (line breaks and quotes escaped)."""
    quoted = json.dumps(text, ensure_ascii=False)
    # JSON escapes the control characters among them, not these.
    for char in "\x85\u2028\u2029":
        quoted = quoted.replace(char, f"\\u{ord(char):04x}")
    return quoted


def _names(members: Sequence[str]) -> str:
    return " and ".join(name(m) for m in dict.fromkeys(members))


def attribution_line(wrote: Sequence[str], asking: Sequence[str]) -> str:
    """The first line of a user message: who wrote it, who asks it now, each with their
    own verb (``[alice wrote, bob asks you]``). A member in both is named in both."""
    writers, askers = list(dict.fromkeys(wrote)), list(dict.fromkeys(asking))
    clauses = []
    if writers:
        clauses.append(f"{_names(writers)} {'wrote' if len(writers) == 1 else 'each wrote'}")
    if askers:
        clauses.append(f"{_names(askers)} {'asks you' if len(askers) == 1 else 'ask you'}")
    return f"[{', '.join(clauses)}]"


REPLY_LINE = "[the assistant's reply]"
"""The server's line over a reply of the model's where its role does not say it (a pin, the
summariser's input): a member's line always reads ``… wrote``, so no member id can make
their words read as the model's."""


def tool_line(tool: str) -> str:
    """The server's line over an earlier tool result (``tool`` as the model named it)."""
    return f"[{name(tool)} was run for an earlier answer]"


def placed(line: str, at: str) -> str:
    """A server line (``[…]``) with where it is from as its last clause:
    ``[alice wrote, message #12]``."""
    return f"{line[:-1]}, {at}]"


@dataclass(frozen=True, slots=True)
class Fact:
    """A session fact: one line of text and who set it (``""``: the admin API; None: not
    recorded, as for facts set before authors were kept)."""

    value: str
    author: str | None = None

    def setter(self) -> str:
        if self.author is None:
            return "setter not recorded"
        return f"set by {name(self.author)}" if self.author else "set over the admin API"
