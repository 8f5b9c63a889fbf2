"""What each summary of a chain covers, kept once per chain.

A summary covers what the one it extends covers, and the turns it added. Kept as a set
per summary, a chain of ``n`` summaries over ``N`` entries held about ``n * N / 2`` ids:
at 6,000 entries and 903 summaries of a 16k-token window, 2.7 million, 139 MB for one
session, and a load spent most of its time building them. A ``Chain`` keeps each entry id
once, with the link that first covered it; each summary's ``Covers`` is a read-only view
of the chain up to its own link.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set


class Chain:
    """The entry ids of one chain of summaries, each with the link that first covered it."""

    __slots__ = ("link_of", "sizes")

    def __init__(self) -> None:
        self.link_of: dict[str, int] = {}
        self.sizes: list[int] = []  # ids covered up to and including each link

    def add(self, ids: Iterable[str]) -> Covers:
        """A new link covering everything before it and ``ids``."""
        link = len(self.sizes)
        link_of = self.link_of
        for entry_id in ids:
            link_of.setdefault(entry_id, link)
        self.sizes.append(len(link_of))
        return Covers(self, link)


class Covers(Set[str]):
    """The entry ids a summary covers: its chain up to its link."""

    __slots__ = ("_chain", "_link")

    def __init__(self, chain: Chain, link: int) -> None:
        self._chain = chain
        self._link = link

    def __contains__(self, entry_id: object) -> bool:
        link = self._chain.link_of.get(entry_id)  # type: ignore[call-overload]
        return link is not None and link <= self._link

    def __len__(self) -> int:
        return self._chain.sizes[self._link]

    def __iter__(self) -> Iterator[str]:
        mine = self._link
        return (entry_id for entry_id, link in self._chain.link_of.items() if link <= mine)

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return f"Covers({sorted(self)!r})"


def covering(ids: Iterable[str]) -> Covers:
    """What a summary that starts a chain covers."""
    return Chain().add(ids)


def extend(covers: Set[str], ids: Iterable[str]) -> Covers:
    """What a summary extending one that covers ``covers`` covers with ``ids`` added: a
    new link of the same chain when ``covers`` is its newest, else a chain of its own."""
    if isinstance(covers, Covers) and covers._link == len(covers._chain.sizes) - 1:
        return covers._chain.add(ids)
    chain = Chain()
    chain.add(covers)
    return chain.add(ids)


def covers_all(covers: Set[str], ids: Iterable[str]) -> bool:
    """Whether ``covers`` holds every one of ``ids``."""
    return all(entry_id in covers for entry_id in ids)
