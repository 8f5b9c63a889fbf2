"""session/shape.py: a text is shaped once, and what is kept stays bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.session import dedup, shape
from parley.session.attribution import escape_text
from parley.session.shape import ShapeMemo, block_spans, digest, size_of


def blocks(text: str, min_lines: int) -> Iterator[tuple[int, int, str]]:
    """The definition ``block_spans`` keeps, line by line (the fold's before it): runs of at
    least ``min_lines`` non-blank lines, as ``(start_line, end_line, text)``, each line of
    ``text`` as written but for the blanks that end it."""
    lines = text.split("\n")
    start = None
    for index, line in enumerate([*lines, ""]):
        if line.strip():
            if start is None:
                start = index
            continue
        if start is not None and index - start >= min_lines:
            block = lines[start:index]
            written = "\n".join(x.rstrip() for x in block)
            yield start, index, written
        start = None


def test_a_text_is_shaped_once_and_its_shape_is_what_the_fold_would_find() -> None:
    memo = ShapeMemo(limit=8, max_bytes=100_000)
    text = "[not the server]\n" + "a line\n" * 5 + "\nend"
    shape = memo(text, 4)
    assert memo(text, 4) is shape and memo.shaped == 1
    assert shape.written == digest(dedup.as_written(text))
    assert shape.escaped == escape_text(text) != text
    assert shape.blocks == tuple((a, b, digest(written)) for a, b, written in blocks(text, 4))
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


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(["a", "B", " ", "\t", "\n", "\n", "\r", "\u2028", "İ", "ß"])),
    st.integers(1, 4),
)
def test_block_spans_are_the_blocks_of_dedup_each_key_digested(text: str, min_lines: int) -> None:
    expected = [(a, b, digest(w)) for a, b, w in blocks(text, min_lines)]
    assert list(block_spans(text, min_lines)) == expected


def test_a_text_of_many_lines_is_shaped_without_a_step_per_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its blocks are found in C: the shaping reads the text as written as a whole, and
    each block once, never one of its 16,000 lines."""
    calls: list[str] = []
    as_written = dedup.as_written

    def counted(text: str) -> str:
        calls.append(text)
        return as_written(text)

    monkeypatch.setattr(shape, "as_written", counted)
    text = "x\n" * 16_000 + "end"
    spans = ShapeMemo(limit=8, max_bytes=100_000)(text, 4).blocks
    lines = "\n".join(["x"] * 16_000 + ["end"])
    assert spans == ((0, 16_001, digest(lines)),)
    assert len(calls) == 2  # the text, and its one block
