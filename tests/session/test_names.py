"""``session.names``: which display names may be set, and when two read as one."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.session.names import (
    MAX_DISPLAY_NAME_CHARS,
    REFUSED_EVERYWHERE,
    _fold_beyond_ascii,
    display_name_problem,
    fold_name,
    look_alike_key,
    refused_pattern,
    speaker_named,
)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a\x07", "control character (U+0007) at character 2"),
        ("a\x85", "control character (U+0085)"),
        ("a\u2028", "line separator"),
        ("a\u2029", "paragraph separator"),
        ("a\u200b", "format character (U+200B)"),
        ("\u202eecila", "format character (U+202E) at character 1"),
        ("a\u00ad", "format character"),
        ("a\ue000", "private-use"),
        ("a\uffff", "noncharacter"),
        ("a\U0010fffe", "noncharacter"),
        ("\u115f", "shown as nothing"),
        ("\u200da", "joiner"),
        ("ab\u200c", "joiner"),
        ("x" * (MAX_DISPLAY_NAME_CHARS + 1), "at most 80 characters"),
    ],
)
def test_names_people_cannot_read_as_they_are_have_a_problem(name: str, problem: str) -> None:
    found = display_name_problem(name)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Zoë Ångström",
        "李小龍",
        "❤️",
        "1\ufe0f\u20e3",  # keycap one
        "👩🏽\u200d💻",
        "🏳\ufe0f\u200d🌈",
        "\u0915\u094d\u200d\u0937",  # Devanagari: a joiner after a virama
        "\u0645\u06cc\u200c\u062e",  # Persian: a non-joiner between letters
        "\U0001faf8",  # an emoji newer than some Pythons' Unicode
        "x" * MAX_DISPLAY_NAME_CHARS,
    ],
)
def test_names_of_any_script_and_emoji_have_none(name: str) -> None:
    assert display_name_problem(name) is None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice", "  ALICE "),
        ("alice", "alice\u200b"),
        ("alice", "al\u00adice"),
        ("alice", "alice\ufe0f"),
        ("alice", "\uff41lice"),
        ("alice", "\U0001d41alice"),
        ("alice m", "alice\u3000\u00a0m"),
        ("alice", "alice\u2800"),
        ("straße", "STRASSE"),
        ("é", "e\u0301"),
        ("alice", "alice\u0600"),  # a format character, stored before the rule
    ],
)
def test_names_that_read_alike_fold_alike(one: str, other: str) -> None:
    assert fold_name(one) == fold_name(other)


def test_names_that_read_differently_fold_differently() -> None:
    assert fold_name("alice") != fold_name("alicé")
    assert fold_name("al ice") != fold_name("alice")
    assert fold_name("\u200b\u3164 ") == ""


@given(st.text(max_size=MAX_DISPLAY_NAME_CHARS))
def test_folding_is_idempotent_and_leaves_nothing_unseen(name: str) -> None:
    folded = fold_name(name)
    assert fold_name(folded) == folded
    assert folded == folded.strip() and "  " not in folded
    assert not any(unicodedata.category(c) in {"Cc", "Cf"} for c in folded)


def _refused_in_any_context(char: str) -> bool:
    contexts = (char, f"a{char}b", f"\u0628{char}\u0628", f"\u2764{char}\u263a")
    return all(display_name_problem(name) is not None for name in contexts)


def test_the_documents_pattern_refuses_what_the_rules_refuse_everywhere() -> None:
    """Review RC-1: the API document's display_name admitted "\\x85", refused 422. Its
    pattern names points refused wherever they stand (unassigned ones too: noncharacters
    and default-ignorables are refused in any Unicode version), and every assigned one."""
    listed = {p for low, high in REFUSED_EVERYWHERE for p in range(low, high + 1)}
    assert all(_refused_in_any_context(chr(point)) for point in listed)
    for point in set(range(0x10000)) - listed:
        char = chr(point)
        if unicodedata.category(char) not in ("Cs", "Cn") and char not in "\u200c\u200d":
            assert not _refused_in_any_context(char), hex(point)
    pattern = re.compile(refused_pattern())
    assert pattern.fullmatch("Zo\u00eb \u0645\u06cc\u200c\u0631 \u2764\ufe0f") is not None
    for low, high in REFUSED_EVERYWHERE:
        for point in (low, high):
            assert pattern.fullmatch(f"a{chr(point)}b") is None


def test_the_documents_pattern_refuses_what_the_rules_refuse_everywhere_above_the_bmp() -> None:
    """Review RJ-4: the pattern named Basic Multilingual Plane points only; private use of
    planes 15-16, noncharacters, format characters and tags above it, refused wherever
    they stand, were admitted by it. Each is in it now (every point of a short range, the
    ends of a long one), and no assigned point above the plane the rules take somewhere."""
    astral = [(low, high) for low, high in REFUSED_EVERYWHERE if high > 0xFFFF]
    sampled = {
        p
        for low, high in astral
        for p in (range(low, high + 1) if high - low < 256 else (low, high))
    }
    assert all(_refused_in_any_context(chr(point)) for point in sampled)
    listed = {p for low, high in astral for p in range(low, high + 1)}
    for point in set(range(0x10000, 0x110000)) - listed:
        char = chr(point)
        if unicodedata.category(char) != "Cn":
            assert not _refused_in_any_context(char), hex(point)
    pattern = re.compile(refused_pattern())
    assert pattern.fullmatch("\U0001f600 \U00020000 a\U000e0100") is not None
    for point in sampled:
        assert pattern.fullmatch(f"a{chr(point)}b") is None, hex(point)


@pytest.mark.parametrize(
    ("name", "speaker"),
    [
        ("Assistant", "assistant"),
        ("ASSISTANT", "assistant"),
        ("The Assistant", "theassistant"),
        ("\u0410ssistant", "assistant"),  # Cyrillic A
        ("\u0455\u0443\u0455t\u0435m", "system"),  # Cyrillic s, y, s, e
        ("S e r v e r", "server"),
        ("[server]", "server"),
        ("admin", "admin"),
        ("Admin.", "admin"),
        ("\uff41\uff44\uff4d\uff49\uff4e", "admin"),  # fullwidth
        ("Administrator", "administrator"),
        ("P\u0430rley", "parley"),  # Cyrillic a
        ("Parley Assistant", "parleyassistant"),
        ("Server Admin", "serveradmin"),
        ("s\u200cystem", "system"),  # an invisible joiner between
        # Review RN-1: every role word of the speakers' markers (``attribution``), in any
        # case, and with ASCII's own look-alikes (TR39: ``I`` and ``1`` as ``l``, ``0`` as
        # ``O``, ``rn`` as ``m``).
        ("moderator", "moderator"),
        ("Operator", "operator"),
        ("owner", "owner"),
        ("ADMIN", "admin"),
        ("adrnin", "admin"),
        ("ADMlN", "admin"),
        ("ParIey", "parley"),
        ("Par1ey", "parley"),
        ("m0derat0r", "moderator"),
        ("systern", "system"),
        ("the_server", "theserver"),
        ("server.operator", "serveroperator"),
    ],
)
def test_names_that_read_as_a_speaker_the_server_names_are_found(name: str, speaker: str) -> None:
    """FX59: a member shown as ``Assistant``, ``admin``, ``Parley``, ``server`` or ``system``
    (in another case, spaced out, with look-alike letters) posed as the model or the server
    in the demo, and as a user id in what the model is told."""
    assert speaker_named(name) == speaker


@pytest.mark.parametrize(
    "name",
    [
        *("Alice", "Admiral", "Serverina", "Bob the admin", "system32", "Parleyvoo", "", "Ai"),
        *("bot", "mallory", "owners", "Ownership", "operators.team", "AI", "I"),
    ],
)
def test_names_that_hold_a_speakers_word_among_others_are_none(name: str) -> None:
    assert speaker_named(name) is None


@pytest.mark.parametrize(
    ("user_id", "alike"),
    [
        ("aIice", "alice"),  # capital i for l
        ("AIice", "alice"),
        ("a1ice", "alice"),  # digit one for l
        ("rnallory", "mallory"),  # r and n for m
        ("0scar", "oscar"),  # digit zero for O
        ("b0b.rn", "bob.m"),
    ],
)
def test_user_ids_that_look_alike_have_one_key(user_id: str, alike: str) -> None:
    """Review RN-3: ``aIice`` beside ``alice`` and ``rnallory`` beside ``mallory`` were
    added and told to the model as other people; Unicode's confusables (TR39) read them
    alike."""
    assert look_alike_key(user_id) == look_alike_key(alike)


@pytest.mark.parametrize(("one", "other"), [("ali", "all"), ("bill", "biil"), ("iris", "lris")])
def test_user_ids_that_differ_to_the_eye_have_other_keys(one: str, other: str) -> None:
    assert look_alike_key(one) != look_alike_key(other)


@given(st.text(st.characters(max_codepoint=0x7F), max_size=40))
def test_ascii_is_folded_as_any_text_is(name: str) -> None:
    """``fold_name``'s path for ASCII (every user id, folded for each member on an add)
    gives what the general one does."""
    assert fold_name(name) == _fold_beyond_ascii(name)
