"""The lease round (``server/cluster/lease_round.py``) with a node of fakes: a bug in one
lease's renewal is that lease's alone (review FX36: a non-database error escaped the
round, so one lease's bug stopped the renewal of every lease after it, every round)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from parley.server.cluster.lease import Lease
from parley.server.cluster.lease_round import LeaseRound
from parley.session.errors import Unavailable


class Table:
    """``LeaseTable.renew`` as the round calls it: ``broken`` sessions raise a bug's error
    (alone or with others), ``taken`` ones are not renewed (another node holds them)."""

    def __init__(
        self, broken: frozenset[str] = frozenset(), taken: frozenset[str] = frozenset()
    ) -> None:
        self.broken, self.taken = set(broken), set(taken)
        self.asked: list[list[str]] = []
        self.down = False

    async def renew(self, leases: list[Lease]) -> set[str]:
        ids = [x.session_id for x in leases]
        self.asked.append(ids)
        if self.down:
            raise Unavailable("the database is unavailable")
        if self.broken & set(ids):
            raise TypeError("a bug in one renewal")
        return set(ids) - self.taken


class Node:
    def __init__(self, table: Table, *session_ids: str, fails: str = "") -> None:
        self.leases = {s: Lease(s, "me", 1) for s in session_ids}
        self.leases_table = table
        self.kept: list[str] = []
        self.gone: list[str] = []
        self.fails = fails

    def renewed(self, leases: list[Lease], asked_at: float) -> None:
        for lease in leases:
            if lease.session_id == self.fails:
                raise KeyError(lease.session_id)
            self.kept.append(lease.session_id)

    def lost(self, session_id: str, lease: Lease) -> None:
        if session_id == self.fails:
            raise KeyError(session_id)
        self.gone.append(session_id)


def _round(node: Node) -> LeaseRound:
    return LeaseRound(node)  # type: ignore[arg-type]


def _logged(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [getattr(r, "session_id", None) for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_bug_in_one_renewal_leaves_the_others_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = Table(broken=frozenset("b"), taken=frozenset("d"))
    node = Node(table, "a", "b", "c", "d")
    await _round(node)._keep_leases()
    assert node.kept == ["a", "c"] and node.gone == ["d"]
    assert _logged(caplog) == ["b"]  # with its session id; b is neither kept nor lost
    assert table.asked[0] == ["a", "b", "c", "d"]  # all in one statement first


async def test_a_bug_after_the_renewal_is_that_leases_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for fails in ("a", "d"):  # in keeping a renewed one, in letting a lost one go
        caplog.clear()
        node = Node(Table(taken=frozenset("d")), "a", "b", "c", "d", fails=fails)
        await _round(node)._keep_leases()
        assert node.kept == [s for s in "abc" if s != fails] and node.gone == ["d"][: fails != "d"]
        assert _logged(caplog) == [fails]


async def test_a_database_fault_still_fails_the_round() -> None:
    table = Table(broken=frozenset("b"))
    table.down = True
    node = Node(table, "a", "b")
    with pytest.raises(Unavailable):
        await _round(node)._keep_leases()
    assert node.kept == [] and node.gone == [] and len(table.asked) == 1
