"""What summaries cover, kept once per chain: the same answers as a set per summary."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.session.covers import Covers, covering, covers_all, extend
from parley.session.summary import Summary, chained


def naive(stored: list[tuple[Summary, frozenset[str]]]) -> dict[str, frozenset[str]]:
    """A set per summary, as they were kept before chains."""
    covers: dict[str, frozenset[str]] = {}
    for summary, added in stored:
        extends = summary.extends
        covers[summary.id] = added if extends is None else covers.get(extends, frozenset()) | added
    return covers


_IDS = st.frozensets(st.sampled_from([f"e{n}" for n in range(30)]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-2, 12), _IDS), max_size=14),
    st.frozensets(_IDS.map(lambda s: next(iter(s), "e0")), max_size=4),
)
def test_a_chain_covers_what_a_set_per_summary_covers(
    links: list[tuple[int, frozenset[str]]], probe: frozenset[str]
) -> None:
    """Each summary extends none (-2), one not stored (-1), or an earlier one (an index,
    the newest of its chain or not)."""
    stored: list[tuple[Summary, frozenset[str]]] = []
    for n, (extends, added) in enumerate(links):
        parent = (
            None if extends == -2 else "gone" if extends == -1 or extends >= n else f"s{extends}"
        )
        stored.append((Summary(f"s{n}", 0, n, frozenset(), f"text {n}", parent), added))
    expected = naive(stored)
    for summary in chained(stored):
        want = expected[summary.id]
        assert summary.covers == want and len(summary.covers) == len(want)
        assert set(summary.covers) == want
        assert summary.covers.isdisjoint(probe) == want.isdisjoint(probe)
        assert covers_all(summary.covers, probe) == want.issuperset(probe)


def test_a_chain_keeps_each_entry_once() -> None:
    """A chain of 100 summaries over 1,000 entries keeps 1,000 ids, not 50,500."""
    stored = [
        (
            Summary(f"s{n}", 0, n, frozenset(), "t", None if n == 0 else f"s{n - 1}"),
            frozenset(f"e{n}-{k}" for k in range(10)),
        )
        for n in range(100)
    ]
    found = chained(stored)
    assert len(found[-1].covers) == 1_000 and len(found[0].covers) == 10
    chains = {id(s.covers._chain) for s in found if isinstance(s.covers, Covers)}
    assert len(chains) == 1
    assert len(found[-1].covers._chain.link_of) == 1_000  # type: ignore[attr-defined]


def test_extending_an_older_link_starts_a_chain_of_its_own() -> None:
    first = covering({"a"})
    second = extend(first, {"b"})
    branch = extend(first, {"c"})  # ``first`` is no longer its chain's newest
    assert (set(first), set(second), set(branch)) == ({"a"}, {"a", "b"}, {"a", "c"})
    assert set(extend(frozenset({"x"}), {"y"})) == {"x", "y"}
    assert hash(second) == hash(frozenset({"a", "b"}))
