"""The lease round (``server/cluster/lease_round.py``): with a node of fakes, a bug in one
lease's renewal is that lease's alone (review FX36: a non-database error escaped the
round, so one lease's bug stopped the renewal of every lease after it, every round); on
PostgreSQL, a lease row locked by another transaction holds no other lease up (FX51)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from parley.server.cluster.lease import Lease, Renewal
from parley.server.cluster.lease_round import LeaseRound
from parley.server.cluster.node import ClusterNode
from parley.server.store import access as access_store
from parley.server.store import sessions as session_store
from parley.session.errors import Unavailable
from tests.conftest import RunningServer
from tests.server.cluster.nodes import stop_lease_round, two_in_process
from tests.yclient import YClient


class Table:
    """``LeaseTable.renew`` as the round calls it: ``broken`` sessions raise a bug's error
    (alone or with others), ``taken`` ones are not renewed (another node holds them)."""

    def __init__(
        self, broken: frozenset[str] = frozenset(), taken: frozenset[str] = frozenset()
    ) -> None:
        self.broken, self.taken = set(broken), set(taken)
        self.asked: list[list[str]] = []
        self.down = False

    async def renew(self, leases: list[Lease]) -> Renewal:
        ids = [x.session_id for x in leases]
        self.asked.append(ids)
        if self.down:
            raise Unavailable("the database is unavailable")
        if self.broken & set(ids):
            raise TypeError("a bug in one renewal")
        return Renewal(frozenset(set(ids) - self.taken))

    async def live(self, session_ids: list[str]) -> set[str]:
        return set()  # nobody runs the replicas

    async def orphaned(self) -> list[str]:
        return []


class Node:
    def __init__(self, table: Table, *session_ids: str, fails: str = "") -> None:
        self.leases = {s: Lease(s, "me", 1) for s in session_ids}
        self.leases_table = table
        self.kept: list[str] = []
        self.gone: list[str] = []
        self.fails = fails

    def renewed(self, leases: list[Lease], asked_at: float, left_s: float | None = None) -> None:
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


class TakingOver(Node):
    """A node of fakes whose one replica nobody runs: its takeover waits until ``done``
    is set (on a lease row another transaction holds, or a long load)."""

    def __init__(self, table: Table, *session_ids: str) -> None:
        super().__init__(table, *session_ids)
        self.settings = SimpleNamespace(lease_ttl_s=0.04, cluster_poll_s=3600.0)
        self.applied = {"replica": 0}
        self.live_elsewhere: set[str] = set()
        self.runners: dict[str, object] = {}
        self.registry = SimpleNamespace(loaded=lambda session_id: object(), draining=False)
        self.taking_over = asyncio.Event()
        self.done = asyncio.Event()
        self.kept_meanwhile = 0  # leases renewed while the takeover waits
        self.three_rounds = asyncio.Event()  # of them, three rounds' worth

    def renewed(self, leases: list[Lease], asked_at: float, left_s: float | None = None) -> None:
        super().renewed(leases, asked_at, left_s)
        if self.taking_over.is_set():
            self.kept_meanwhile += len(leases)
            if self.kept_meanwhile >= 3 * len(self.leases):
                self.three_rounds.set()

    async def promote(self, room: object) -> bool:
        self.taking_over.set()
        await self.done.wait()
        return True

    def look_again(self) -> None:
        pass


async def test_a_takeover_held_up_holds_no_renewal_up() -> None:
    """FX51: the round renewed the node's leases, then took sessions over, in one loop: a
    takeover waiting on a lease row another transaction held (a lapsed lease whose holder
    stalled inside a write) held every renewal after it up with it, up to the lock budget
    and past the TTL. The renewals go on while a takeover waits."""
    node = TakingOver(Table(), "a", "b")
    running = asyncio.create_task(_round(node).run())  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(30):
            await node.three_rounds.wait()
        assert not node.done.is_set() and node.gone == []
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_database_fault_still_fails_the_round() -> None:
    table = Table(broken=frozenset("b"))
    table.down = True
    node = Node(table, "a", "b")
    with pytest.raises(Unavailable):
        await _round(node)._keep_leases()
    assert node.kept == [] and node.gone == [] and len(table.asked) == 1


class DownAndUp(Node):
    """A node of fakes, one lease held, whose database is down (both loops' statements
    fail) until the test brings it up; it counts each loop's rounds, failed and not."""

    def __init__(self) -> None:
        super().__init__(Outage(), "a")
        # No poll (``time.monotonic()`` may be past an hour), only the takeovers.
        self.settings = SimpleNamespace(lease_ttl_s=0.04, cluster_poll_s=math.inf)
        self.applied: dict[str, int] = {}
        self.live_elsewhere: set[str] = set()
        self.runners: dict[str, object] = {}
        self.registry = SimpleNamespace(draining=False)

    def look_again(self) -> None:
        pass


class Outage(Table):
    """``Table``, down at first; counts the renewals and the takeover rounds' reads, and
    those since it came up."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.rounds = {"renewals": 0, "takeovers": 0}
        self.since_up = {"renewals": 0, "takeovers": 0}
        self.failed_three = asyncio.Event()  # each loop failed three rounds or more
        self.worked_twice = asyncio.Event()  # since it came up, each worked two rounds

    def _asked(self, loop: str) -> None:
        self.rounds[loop] += 1
        if min(self.rounds.values()) >= 3:
            self.failed_three.set()
        if not self.down:
            self.since_up[loop] += 1
            if min(self.since_up.values()) >= 2:
                self.worked_twice.set()

    async def renew(self, leases: list[Lease]) -> Renewal:
        self._asked("renewals")
        return await super().renew(leases)

    async def orphaned(self) -> list[str]:
        self._asked("takeovers")
        if self.down:
            raise Unavailable("the database is unavailable")
        return []


async def test_a_database_outage_is_one_line_per_node(caplog: pytest.LogCaptureFixture) -> None:
    """FX61: while the database was down each of the node's two loops (the renewals and
    the takeovers) logged a warning every round, every quarter of the TTL. An outage now
    makes one warning, whichever loop meets it first and however many rounds fail, and
    one line once the loops work again."""
    node = DownAndUp()
    table = node.leases_table
    assert isinstance(table, Outage)
    caplog.set_level(logging.INFO, logger="parley.cluster")
    running = asyncio.create_task(_round(node).run())  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(30):
            await table.failed_three.wait()
            table.down = False
            await table.worked_twice.wait()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "parley.cluster"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert node.gone == [] and "a" in node.kept


@contextlib.asynccontextmanager
async def three_run_here(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, ClusterNode, RunningServer, list[str]]]:
    """Three sessions run on the first of two nodes whose lease rounds run only when a
    test drives them: the database's URL (asyncpg's), the node, its server, the sessions."""
    # A lease long enough that none runs out while the test drives the round, and a lock
    # budget short enough that a statement waiting on a lock fails soon.
    settings = {"lease_ttl_s": 60.0, "db_lock_timeout_s": 1.0}
    async with two_in_process(tmp_path, **settings) as (url, first, _):
        sids = [await first.new_session({"ann": "editor"}) for _ in range(3)]
        for sid in sids:
            await first.connect(sid, "ann")
        node = first.app.state.parley.rooms.cluster
        await stop_lease_round(node)
        assert node.running == set(sids)
        yield url.replace("+asyncpg", ""), node, first, sids


def skipped(metrics: Any) -> float:
    """``parley_cluster_lease_renewals_skipped_total`` in a ``GET /metrics`` answer."""
    name = "parley_cluster_lease_renewals_skipped_total "
    return next(float(x[len(name) :]) for x in metrics.text.splitlines() if x.startswith(name))


async def expiries(url: str) -> dict[str, datetime]:
    database = await asyncpg.connect(url)
    try:
        rows = await database.fetch("SELECT session_id, expires_at FROM session_leases")
    finally:
        await database.close()
    return {row["session_id"]: row["expires_at"] for row in rows}


@contextlib.asynccontextmanager
async def row_locked(url: str, session_id: str, *, lapsed: bool = False) -> AsyncIterator[None]:
    """``session_id``'s lease row locked by another transaction (a member's change on
    another node, a takeover under way) until the block ends; ``lapsed``: its lease ran
    out (on the database's clock) first."""
    database = await asyncpg.connect(url)
    try:
        if lapsed:
            await database.execute(
                "UPDATE session_leases SET expires_at = clock_timestamp() - interval '1 s'"
                " WHERE session_id = $1",
                session_id,
            )
        async with database.transaction():
            await database.execute(
                "SELECT 1 FROM session_leases WHERE session_id = $1 FOR NO KEY UPDATE",
                session_id,
            )
            yield
    finally:
        await database.close()


@pytest.mark.postgres
@pytest.mark.parametrize("lapsed", [False, True], ids=["within-its-expiry", "past-its-expiry"])
async def test_a_row_locked_elsewhere_holds_no_other_lease_up(tmp_path: Path, lapsed: bool) -> None:
    """FX51: the round's one statement waited on a lease row another transaction held,
    up to the lock budget and past the TTL: every other session of the (healthy) node
    lost its lease, and the round failed. Now the row is skipped and the others renewed;
    it is asked again next round, and lost only if it stayed locked past its expiry on
    the database's clock. Nothing of it tells storage it is failing."""
    async with three_run_here(tmp_path) as (url, node, server, sids):
        locked = sids[1]
        async with row_locked(url, locked, lapsed=lapsed):
            before = await expiries(url)
            await LeaseRound(node)._keep_leases()
            after = await expiries(url)
            assert after[locked] == before[locked]
            # Counted as skipped while it was kept; lost, as lost (``leases_lost``).
            assert skipped(await server.http.get("/metrics")) == (0 if lapsed else 1)
            assert all(after[s] > before[s] for s in sids if s != locked)
            assert node.running == set(sids) - ({locked} if lapsed else set())
            assert server.app.state.parley.store.health.failing is None
            assert (await server.http.get("/readyz")).status_code == 200
        if lapsed:
            letting_go = node._letting_go.get(locked)
            if letting_go is not None:
                await asyncio.wait_for(asyncio.shield(letting_go), 30)
            return
        await LeaseRound(node)._keep_leases()  # the next round asks for it again
        assert (await expiries(url))[locked] > before[locked]
        assert node.running == set(sids)


@pytest.mark.postgres
async def test_a_lease_asked_on_use_is_not_held_up_by_its_locked_row(tmp_path: Path) -> None:
    """A node past its lease's local deadline asks for the lease before it answers
    (``lease_holds``): a row locked elsewhere held that up to the lock budget, and then
    refused the call ``unavailable``. It holds as last committed, and no takeover comes
    before that runs out: the node answers, its deadline moved up to it."""
    async with three_run_here(tmp_path) as (url, node, server, sids):
        sid = sids[0]
        room = server.app.state.parley.rooms.loaded(sid)
        assert room is not None
        node.held_until[sid] = 0.0  # past its lease on its own clock
        async with row_locked(url, sid):
            assert await node.lease_holds(room)
        assert node.held_until[sid] > time.monotonic()
        assert sid in node.running


class Abandoned(Exception):
    """A write given up after its fence: rolled back, its lease row as last committed."""


@contextlib.asynccontextmanager
async def own_write(server: RunningServer, room: Any) -> AsyncIterator[None]:
    """A write of the node's own of ``room``'s session, between its fence (the room's,
    which locks the session's lease row) and its end, until the block ends; then given up
    (rolled back)."""
    store = server.app.state.parley.store
    fenced, release = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with store.transaction() as tx:
            await room.writer.document.fence.check(tx)
            fenced.set()
            await release.wait()
            raise Abandoned

    writer = asyncio.create_task(write())
    try:
        async with asyncio.timeout(30):
            await fenced.wait()
        yield
    finally:
        release.set()
        with pytest.raises(Abandoned):
            await writer


async def lapse(url: str, session_id: str) -> None:
    """``session_id``'s lease runs out, as last committed, on the database's clock."""
    database = await asyncpg.connect(url)
    try:
        await database.execute(
            "UPDATE session_leases SET expires_at = clock_timestamp() - interval '1 s'"
            " WHERE session_id = $1",
            session_id,
        )
    finally:
        await database.close()


@pytest.mark.postgres
async def test_a_row_the_nodes_own_write_holds_past_its_expiry_loses_no_session(
    tmp_path: Path,
) -> None:
    """FX61: a renewal skips a lease row another transaction holds, and counted the lease
    lost when the row was still held past its expiry as last committed, even when the
    node's own write held it (between its fence and its end, on a loaded machine): the
    healthy node gave its own session up, and a socket opening there got 503 "this node
    lost the session". While its own write holds the row no takeover can succeed, so the
    lease is kept (by the round and when asked on use), and renewed once the write ends,
    even rolled back."""
    async with three_run_here(tmp_path) as (url, node, server, sids):
        sid = sids[0]
        room = server.app.state.parley.rooms.loaded(sid)
        assert room is not None
        token = await server.token(sid, "ann")  # (a write: it takes the lease row)
        await lapse(url, sid)
        async with own_write(server, room):
            await LeaseRound(node)._keep_leases()
            assert node.running == set(sids)
            node.held_until[sid] = 0.0  # past its lease on its own clock too
            # Admitted as the runner (``serves`` asks for the lease), and synced.
            client = await YClient.connect(server.ws_url, sid, token)
            try:
                async with asyncio.timeout(10):
                    await client.synced.wait()
            finally:
                await client.close()
            assert sid in node.running
            # Skipped twice (by the round, and on use), each time kept.
            assert skipped(await server.http.get("/metrics")) == 2
        before = await expiries(url)
        await LeaseRound(node)._keep_leases()  # the next round renews it
        assert (await expiries(url))[sid] > before[sid]
        assert node.running == set(sids)


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["token-mint", "member-change"])
async def test_a_row_the_nodes_own_change_of_members_holds_past_its_expiry_loses_no_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """FX68: FX61 kept a lease whose row the node's own fenced write held past its expiry,
    but the node's other transactions that lock that row (``lock_session``: a client token
    minted, a member changed, served on this node) still counted as another node's: the
    healthy node gave its session up ("a healthy node lost a lease at a 1.5 s TTL"). Here
    such a transaction holds the row (open, on an event) while the round runs: the lease
    is kept, and renewed once it ends."""
    async with three_run_here(tmp_path) as (url, node, server, sids):
        sid = sids[0]
        await lapse(url, sid)
        locked, go = asyncio.Event(), asyncio.Event()
        # After the lease row's lock, each reads the member as stored: it waits there.
        module: Any = access_store if change == "token-mint" else session_store
        read_member = module.read_member

        async def held(connection: Any, session_id: str, user_id: str) -> Any:
            if session_id == sid and not locked.is_set():
                locked.set()
                await go.wait()
            return await read_member(connection, session_id, user_id)

        monkeypatch.setattr(module, "read_member", held)
        if change == "token-mint":
            call = server.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "ann"})
        else:
            call = server.http.put(f"/api/v1/sessions/{sid}/members/bob", json={"role": "viewer"})
        sent = asyncio.create_task(call)
        try:
            async with asyncio.timeout(30):
                await locked.wait()
            await LeaseRound(node)._keep_leases()
            assert node.running == set(sids)
            assert skipped(await server.http.get("/metrics")) == 1
        finally:
            go.set()
            response = await asyncio.wait_for(sent, 30)
        assert response.status_code in (200, 201), response.text
        before = await expiries(url)
        await LeaseRound(node)._keep_leases()  # the next round renews it
        assert (await expiries(url))[sid] > before[sid]
        assert node.running == set(sids)
