"""Members' display names: which ones may be set, and when two read as one.

A display name is shown to people (the member list, presence stamps, ``author_name`` in
transcripts), so it must show what it holds and must not pass for another member's.
``display_name_problem`` judges a name set by anyone (REST bodies call it through their
model); ``fold_name`` is the form two names are compared in, so a member cannot take
another's name with an invisible character, another letter case, a compatibility form or
extra spaces. Stored names are never rewritten: they are folded when compared, and the
store keeps each one's ``name_key`` beside it, so a name is compared with the few that fold
alike, found by an index, not with every member's.

Names are compared as ``read_name`` reads them: folded, and with the letters of other
scripts that look like Latin ones (Unicode's confusables data, ``session.look_alikes``:
Cyrillic U+0430 for Latin "a") read as those, as the speakers' markers in what the model is
told are read (``session.attribution``). So a name may not pass for another member's with
look-alike letters, nor for a speaker the server itself names (``speaker_named``:
"Assistant", "system", "admin", …). ASCII's own look-alikes (Unicode's confusables within
the characters of user ids, case as written: ``I`` and ``1`` as ``l``, ``0`` as ``O``,
``rn`` as ``m``) are read too by ``look_alike_key``, by which a new member's user id is
compared with the others' (``aIice`` beside ``alice``) and a name against the speakers.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

from parley.session.code_points import (
    FORMAT_CHARACTERS,
    class_of,
    merged,
    points_of,
    ranges_of,
)
from parley.session.errors import ReservedName
from parley.session.look_alikes import ASCII_LOOK_ALIKES, LATIN_LOOK_ALIKES

MAX_DISPLAY_NAME_CHARS = 80
# Letters of other scripts that look like Latin ones, read as those (``read_name``).
_AS_LATIN = str.maketrans(
    {char: latin for latin, chars in LATIN_LOOK_ALIKES.items() for char in chars}
)
# ASCII's controls but its blanks: what shows nothing in ASCII (NFKC leaves ASCII as it is,
# and case folds it as ``lower`` does).
ASCII_INVISIBLE = dict.fromkeys(c for c in range(0x80) if chr(c) < " " and not chr(c).isspace())
ASCII_INVISIBLE[0x7F] = None

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): what a renderer
# shows nothing for. Python's ``unicodedata`` does not expose the property.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Variation selectors are kept in a name (an emoji's "❤️", an ideograph's variant, the
# Mongolian script's forms) and folded away for comparison.
_VARIATION_SELECTORS = ((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
_ZWNJ, _ZWJ = "\u200c", "\u200d"
# Not default-ignorable, yet shown as a space (the Braille pattern blank).
_BLANKS = frozenset("\u2800")
# Refused outright: controls, line and paragraph separators, private use, surrogates.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Co": "a private-use character (each font shows its own, or nothing)",
    "Cs": "a surrogate",
}
# Where Unicode assigns new emoji (pictographs only): taken unassigned, so a server whose
# Python knows an older Unicode does not refuse an emoji a phone offers.
_PICTOGRAPHS = (0x1F000, 0x1FAFF)
_ARABIC_LETTERS = (
    (0x0600, 0x06FF),
    (0x0750, 0x077F),
    (0x08A0, 0x08FF),
    (0xFB50, 0xFDFF),
    (0xFE70, 0xFEFF),
)
_VIRAMA = 9  # canonical combining class


def _within(char: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    point = ord(char)
    return any(low <= point <= high for low, high in ranges)


def _is_noncharacter(point: int) -> bool:
    return 0xFDD0 <= point <= 0xFDEF or point & 0xFFFE == 0xFFFE


def _joiner_in_place(name: str, at: int) -> bool:
    """Whether the ZWJ or ZWNJ at ``name[at]`` joins as a script or an emoji needs it:
    after a virama (as IDNA's CONTEXTJ rule), a ZWJ inside an emoji sequence, a ZWNJ
    between two Arabic-script letters (Persian writes words so)."""
    if at == 0 or at == len(name) - 1:
        return False
    before, after = name[at - 1], name[at + 1]
    if unicodedata.combining(before) == _VIRAMA:
        return True
    if name[at] == _ZWJ:
        emoji_end = unicodedata.category(before) in {"So", "Sk"} or _within(
            before, _VARIATION_SELECTORS
        )
        return emoji_end and unicodedata.category(after) == "So"
    return all(
        _within(c, _ARABIC_LETTERS) and unicodedata.category(c).startswith("L")
        for c in (before, after)
    )


def _char_problem(name: str, at: int) -> str | None:
    char = name[at]
    point = ord(char)
    category = unicodedata.category(char)
    if category in _REFUSED_CATEGORIES:
        return _REFUSED_CATEGORIES[category]
    if _is_noncharacter(point):
        return "a noncharacter"
    if category == "Cn" and not _PICTOGRAPHS[0] <= point <= _PICTOGRAPHS[1]:
        return f"a character unassigned in Unicode {unicodedata.unidata_version}"
    if char in (_ZWJ, _ZWNJ):
        return None if _joiner_in_place(name, at) else "a joiner outside a script or emoji"
    if category == "Cf":
        return "an invisible format character"
    if _within(char, _DEFAULT_IGNORABLE) and not _within(char, _VARIATION_SELECTORS):
        return "a character shown as nothing"
    return None


# Code points ``display_name_problem`` refuses wherever they stand, whatever Unicode version
# Python knows (controls, format characters, separators, private use, noncharacters,
# default-ignorables): what the API document's pattern says (review RC-1; RJ-4: above the
# Basic Multilingual Plane too). Not surrogates (a UTF-16 pattern cannot tell a lone one
# from half of an emoji), joiners (taken in context), nor unassigned points (which depend
# on the version: judged after the pattern). ``tests/session/test_names.py`` checks it
# against the rules.
_REFUSED_BESIDE_FORMAT = (
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x2028, 0x2029),
    (0x2065, 0x2065),
    (0x3164, 0x3164),
    (0xE000, 0xF8FF),
    (0xFDD0, 0xFDEF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    *((plane << 16 | 0xFFFE, plane << 16 | 0xFFFF) for plane in range(16)),
    (0xE0000, 0xE00FF),
    (0xE01F0, 0xE0FFF),
    (0xF0000, 0x10FFFF),
)
_FORMAT_BUT_JOINERS = ranges_of(points_of(FORMAT_CHARACTERS) - {ord(_ZWJ), ord(_ZWNJ)})
REFUSED_EVERYWHERE = merged(_REFUSED_BESIDE_FORMAT + _FORMAT_BUT_JOINERS)


def refused_pattern() -> str:
    """``REFUSED_EVERYWHERE`` as a JSON Schema (ECMA-262) pattern of names holding none."""
    return f"^[^{class_of(REFUSED_EVERYWHERE)}]*$"


def display_name_problem(name: str) -> str | None:
    """Why ``name`` may not be a display name, None if it may: more than
    ``MAX_DISPLAY_NAME_CHARS`` characters, or a character people cannot see or that
    changes how the rest shows (controls, line and paragraph separators, format
    characters such as zero-width spaces, soft hyphens and bidirectional overrides,
    private-use, unassigned and noncharacters). Joiners are taken where a script or an
    emoji sequence needs them; a name of blanks alone shows nothing (``""`` clears it).
    Costs one pass over at most 80 characters."""
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        return f"at most {MAX_DISPLAY_NAME_CHARS} characters"
    for at, char in enumerate(name):
        problem = _char_problem(name, at)
        if problem is not None:
            return f"has {problem} (U+{ord(char):04X}) at character {at + 1}"
    if name and not fold_name(name):
        return 'shows nothing: blanks alone ("" clears the name)'
    return None


def fold_name(name: str) -> str:
    """``name`` as it is compared with other members' names and user ids: NFKC, without
    default-ignorable code points, controls or format characters, case-folded (then NFKC
    again, as casefolding can undo it), blanks made spaces, runs of whitespace one space,
    outer whitespace stripped. Two names that fold alike read alike; "" means the name
    shows nothing. A name of ASCII (every user id) is folded in C: a few µs."""
    if name.isascii():
        return " ".join(name.translate(ASCII_INVISIBLE).lower().split())
    return _fold_beyond_ascii(name)


def _fold_beyond_ascii(name: str) -> str:
    normal = unicodedata.normalize("NFKC", name)
    visible = "".join(c for c in normal if c.isspace() or not _shows_nothing(c))
    folded = unicodedata.normalize("NFKC", visible.casefold())
    spaced = "".join(" " if c in _BLANKS else c for c in folded)
    return " ".join(spaced.split())


def read_name(name: str) -> str:
    """``name`` as two names are compared: ``fold_name``, then each letter that looks like
    a Latin one (``LATIN_LOOK_ALIKES``) read as that one. Two names that read alike are
    taken for one ("" means the name shows nothing)."""
    return fold_name(name).translate(_AS_LATIN)


def name_key(name: str) -> str:
    """A short fixed-length key of ``read_name(name)`` ("" for a name that shows nothing):
    names that read alike have one key, so the store finds them by an index on it (a fold
    may be 18 times the name's length, more than an index entry may hold). Keys of names
    that read apart may meet: whoever compares by key reads the names found again."""
    read = read_name(name)
    return hashlib.blake2b(read.encode(), digest_size=16).hexdigest() if read else ""


def _shows_nothing(char: str) -> bool:
    # Controls and format characters too: names stored before the rule may hold them.
    return unicodedata.category(char) in {"Cc", "Cf"} or _within(char, _DEFAULT_IGNORABLE)


# The speakers the server names: the model ("the assistant", ``attribution.REPLY_LINE``),
# the server's own lines, the admin key (``admin`` in audit records), the product, and the
# roles a bracket line of the server's may open with (``[server] alice is the owner now``:
# ``attribution`` escapes a member's bracket that opens with one). A name whose letters and
# digits are these words alone, one after another ("Server Admin", "Parley Assistant"),
# poses as one; a name that holds one among others ("Bob the admin", "Serverina") does not.
SPEAKER_WORDS = (
    *("administrator", "assistant", "moderator", "operator", "server", "system", "parley"),
    *("admin", "owner"),
)
_ASCII_AS_ONE = str.maketrans({k: v for k, v in ASCII_LOOK_ALIKES.items() if len(k) == 1})
_ASCII_SEQUENCES = re.compile("|".join(k for k in ASCII_LOOK_ALIKES if len(k) > 1))
# A speaker's word as a look-alike reading gives it: an ``i`` may have been written ``I``,
# which reads as ``l`` (``ADMIN`` reads ``admln``).
_WORD_READ = {word: word.replace("i", "[il]") for word in SPEAKER_WORDS}
_SPEAKER = re.compile(f"(?:the)?(?:{'|'.join(_WORD_READ.values())})+")
_SPEAKER_WORDS_READ = [
    (w, re.compile(r)) for w, r in sorted(_WORD_READ.items(), key=lambda item: -len(item[0]))
]


def look_alike_key(name: str) -> str:
    """``name`` as the eye reads it: Unicode's confusables within ASCII (TR39:
    ``ASCII_LOOK_ALIKES``, case as written: ``I`` and ``1`` as ``l``, ``0`` as ``O``, ``rn`` as
    ``m``) read as the one they look like, then folded (``fold_name``) with look-alike
    letters of other scripts as Latin ones (``read_name``). Two user ids of one key read
    alike (``aIice``, ``alice``); ``read_name`` compares letter case apart (``ALICE`` reads
    ``allce`` here)."""
    ascii = name.isascii()  # every user id: NFKC and the letters beyond ASCII change nothing
    written = (name if ascii else unicodedata.normalize("NFKC", name)).translate(_ASCII_AS_ONE)
    spelled = _ASCII_SEQUENCES.sub(lambda found: ASCII_LOOK_ALIKES[found.group()], written)
    return read_name(spelled)


def speaker_named(name: str) -> str | None:
    """The speaker words ``name`` reads as (its letters and digits as ``look_alike_key``
    reads them), None if it reads as none. Costs a few passes over at most 200 characters."""
    read = "".join(c for c in look_alike_key(name) if c.isalnum())
    if _SPEAKER.fullmatch(read) is None:
        return None
    at, words = (3, ["the"]) if read.startswith("the") else (0, [])
    while at < len(read):
        found = next(((w, m) for w, r in _SPEAKER_WORDS_READ if (m := r.match(read, at))), None)
        if found is None:  # read otherwise by the pattern: named as read
            return read
        words.append(found[0])
        at = found[1].end()
    return "".join(words)


@functools.lru_cache(maxsize=4096)
def is_speaker_name(name: str) -> bool:
    """Whether ``name`` reads as a speaker the server names (``speaker_named``), kept for
    the names a model input gives at every message (a member stored under such an id
    before they were refused)."""
    return speaker_named(name) is not None


def speaker_name_refusal(name: str | None, at: str) -> ReservedName | None:
    """``ReservedName`` (naming ``at``: ``display_name``, ``user_id``) if ``name`` reads as
    a speaker the server names (``speaker_named``), else None."""
    speaker = None if not name else speaker_named(name)
    if speaker is None:
        return None
    what = f"reads as {speaker!r}, a speaker the server names; choose another"
    return ReservedName(f"{at}: {what}", ((at, what),))
