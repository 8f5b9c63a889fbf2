"""A model's streamed text made storable piece by piece (``StreamedText``)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from parley.session.commands import storable
from parley.session.model import StreamedText


def _through(pieces: list[str]) -> str:
    streamed = StreamedText()
    return "".join([streamed.piece(p) for p in pieces] + [streamed.end()])


def test_a_pair_split_between_pieces_is_joined() -> None:
    assert _through(["a", "\ud83d", "\ude00b"]) == "a😀b"
    assert _through(["\ud83d", "", "\ude00"]) == "😀"  # an empty piece between keeps it
    assert _through(["x\ud83d"]) == "x\ufffd"  # the stream ended without the second half
    assert _through(["\ude00", "y"]) == "\ufffdy"  # a second half with no first
    assert _through(["\ud83d", "\ud83d", "\ude00"]) == "\ufffd😀"
    assert _through(["a\x00b"]) == "a\ufffdb"


@given(st.text(), st.integers(min_value=0, max_value=2**32))
def test_any_text_cut_anywhere_in_utf16_reads_back_as_it_was(text: str, seed: int) -> None:
    """Sliced at any UTF-16 unit (as a JavaScript proxy may), the text comes back whole;
    nothing is held back once it ended."""
    units = text.encode("utf-16-le", "surrogatepass")
    length = len(units) // 2
    cuts = sorted(random.Random(seed).sample(range(length + 1), k=min(5, length)))
    pieces, at = [], 0
    for cut in [*cuts, length]:
        pieces.append(units[at * 2 : cut * 2].decode("utf-16-le", "surrogatepass"))
        at = cut
    assert _through(pieces) == storable(text)
