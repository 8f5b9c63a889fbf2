"""session/shape.py: a text is shaped once, and what is kept stays bounded."""

from __future__ import annotations

from parley.session.attribution import escape_text
from parley.session.dedup import blocks, normalise
from parley.session.shape import ShapeMemo, digest, size_of


def test_a_text_is_shaped_once_and_its_shape_is_what_the_fold_would_find() -> None:
    memo = ShapeMemo(limit=8, max_bytes=100_000)
    text = "[not the server]\n" + "a line\n" * 5 + "\nend"
    shape = memo(text, 4)
    assert memo(text, 4) is shape and memo.shaped == 1
    assert shape.exact == digest(normalise(text))
    assert shape.escaped == escape_text(text) != text
    assert shape.blocks == tuple((a, b, digest(key)) for a, b, key in blocks(text, 4))
    assert memo("plain", 4).escaped is None  # nothing to escape: the text itself serves


def test_what_is_kept_stays_under_its_bound_however_the_texts_are_shaped() -> None:
    memo = ShapeMemo(limit=1_000, max_bytes=200_000)
    for i in range(20):
        memo(f"({i}\n" + "a\nb\nc\nd\n\n" * 200, 4)  # 200 blocks each, and escaped
    assert len(memo(f"({i}\n" + "a\nb\nc\nd\n\n" * 200, 4).blocks) == 200
    assert memo.shaped == 20
    assert 0 < memo.bytes_kept <= 200_000
    assert memo.bytes_kept == sum(size_of(shape) for shape in memo._cache.values())
    assert len(memo._cache) < 20  # the oldest went
