"""What counts as the same text: ``as_written``.

The fold gives a text repeated as written once, its later copies as references to the
first (``session.fold``). Nothing looser counts: letter case, stops, punctuation, wording
all carry meaning (another code, another date, "do" against "do NOT"), so no likeness of
texts (case folding, MinHash near-duplicates: reviews, 2026-12-06) ever makes two texts one.
"""

from __future__ import annotations

import re

# The blanks that end a line, each run tried once (not from each of its blanks: a line of
# 30,000 blanks then "x" would cost 30,000² steps), in C.
_LINE_END_BLANKS = re.compile(r"(?m)(?<![^\S\n])[^\S\n]++$")


def as_written(text: str) -> str:
    """The text as its author wrote it, but for blanks at the end of a line and blank lines
    at either end: what two texts must share for one to stand for the other (a reference
    to a member's text, a block, a reply or a tool result given before), whoever wrote
    them. Letter case (``kQ7`` and
    ``Kq7``, ``Straße`` and ``STRASSE``), stops and punctuation (``..`` may be an
    argument), indentation and the blanks inside a line all count (reviews: a member's
    words, block or reply stood for another's in other case or indentation)."""
    return _LINE_END_BLANKS.sub("", text).strip("\n")
