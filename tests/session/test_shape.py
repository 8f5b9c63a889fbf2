"""session/shape.py: a text is shaped once, and what is kept stays bounded."""

from __future__ import annotations

from parley.session.attribution import escape_text
from parley.session.dedup import blocks, normalise
from parley.session.shape import ShapeMemo, digest


def test_a_text_is_shaped_once_and_its_shape_is_what_the_fold_would_find() -> None:
    memo = ShapeMemo(limit=8, max_escaped_chars=1_000)
    text = "[not the server]\n" + "a line\n" * 5 + "\nend"
    shape = memo(text, 4)
    assert memo(text, 4) is shape and memo.shaped == 1
    assert shape.exact == digest(normalise(text))
    assert shape.escaped == escape_text(text) != text
    assert shape.blocks == tuple((a, b, digest(key)) for a, b, key in blocks(text, 4))
    assert memo("plain", 4).escaped is None  # nothing to escape: the text itself serves


def test_the_escaped_texts_kept_stay_under_their_bound() -> None:
    memo = ShapeMemo(limit=100, max_escaped_chars=50)
    for i in range(20):
        memo(f"(escaped {i:02d})", 4)  # 13 characters each, escaped
    assert memo._escaped_chars <= 50
    assert memo._escaped_chars == sum(len(s.escaped or "") for s in memo._cache.values())
    assert memo.shaped == 20
