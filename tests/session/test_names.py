"""``session.names``: which display names may be set, and when two read as one."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.session.names import MAX_DISPLAY_NAME_CHARS, display_name_problem, fold_name


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
