"""Session leases on PostgreSQL: who runs a session's queue, and the fence on its writes.

A lease row names its holder, an epoch and an expiry on the database's clock (so node
clocks never matter). A node takes a lease only when it is absent or expired, and each take
raises the epoch. Every write transaction of the holder first runs ``fence()``: an UPDATE
of its own row matching holder *and* epoch. The row lock it takes is held to the commit, so
a takeover either waits for that write to commit (and then finds the lease renewed) or has
already raised the epoch (and the write finds no row and aborts). A node that lost its
lease therefore cannot write afterwards, however late it notices.

Reads are not fenced by the database: a node answers them from its own room. It does so as
the session's runner only while its lease is known to hold on its own monotonic clock
(``LeaseTable.known_until``); a node that stalled past that (a freeze, an event loop
blocked longer than the TTL) renews the lease before it answers, or gives the session up.

Renewals and takeovers wait on no row (``LeaseTable.renew``, ``try_acquire``): one another
transaction holds is skipped and asked again next round. As last committed it still runs
until its expiry, before which no takeover succeeds, so the holder counts on it until then;
one still locked past that is lost, unless a transaction of this node holds it (a write
whose fence ran, a member changed or a token minted here: ``LeaseTable.locked``), and has
not ended: then nobody else can take it, whatever its committed expiry says.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.authz.roles import Member
from parley.authz.tokens import ClientClaims
from parley.server.store.health import LOCK_HELD, lock_waited
from parley.session.errors import Unavailable

if TYPE_CHECKING:
    from parley.server.store.transaction import StoreTx

LOST = "this node lost the session to another node; nothing was stored"


class NotHolder(Unavailable):
    """This node does not run the session (another node does); nothing was stored."""


class Fenced(NotHolder):
    """This node's lease was taken over: the write was refused and nothing was stored."""


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Database faults surface as ``Unavailable``, as the store's do."""
    try:
        yield
    except (OperationalError, DBAPIError, OSError) as exc:
        if lock_waited(exc):  # a write held the lease's row: the database is up
            raise Unavailable(LOCK_HELD) from exc
        raise Unavailable("the database is unavailable") from exc


@dataclass(frozen=True, slots=True)
class StoredMember:
    """What the fence of a member's write read as stored at its commit: the ``member``
    (None: no member), the ``maker`` whose invite link gave the token it was sent with
    (None: none, or no member), whether that token is ``revoked``, and the session's
    ``members_version``."""

    member: Member | None
    maker: Member | None
    revoked: bool
    members_version: int


def _member(user_id: str, stored: str | None) -> Member | None:
    """A member from the fence's JSON of their row (None: no row)."""
    if stored is None:
        return None
    role, grants, denials, epoch = json.loads(stored)
    rights = frozenset(json.loads(grants)), frozenset(json.loads(denials))
    return Member(user_id, role, *rights, token_epoch=epoch)


@dataclass(frozen=True, slots=True)
class Lease:
    session_id: str
    holder: str
    epoch: int
    # The session's ``members_version`` as it was taken (not part of which lease it is).
    members_version: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Renewal:
    """What ``LeaseTable.renew`` found of the leases it was given: ``renewed``, extended by
    the TTL now; ``locked``, their rows locked by another transaction (a write of the
    session under way, a member's change, a takeover attempt), so skipped, never waited
    for: still this node's as last committed, for the seconds given (database clock), and
    asked again at the next renewal; one that ran out as last committed is there (for 0 s)
    only while a transaction of this node holds its row, which no takeover can pass. Every
    other one is lost: taken over, fenced, its session deleted, or its row locked by a
    transaction not this node's once it had run out (a takeover may be under way)."""

    renewed: frozenset[str] = frozenset()
    locked: Mapping[str, float] = field(default_factory=dict)

    def holds(self, session_id: str) -> bool:
        return session_id in self.renewed or session_id in self.locked


# Takes the lease if its row is absent, or expired and free: a row another transaction
# holds (a stalled holder's write, a member's change, another takeover) is skipped, never
# waited for (FX61: the wait, up to the lock budget, held the takeover round up), and asked
# again next round. A row inserted by another node meanwhile (not in this statement's
# snapshot) meets ON CONFLICT: nothing taken.
_ACQUIRE = text(
    """
    WITH free AS (
        SELECT session_id FROM session_leases WHERE session_id = :session_id
        FOR NO KEY UPDATE SKIP LOCKED
    ), taken AS (
        UPDATE session_leases
        SET holder = :holder, epoch = epoch + 1,
            expires_at = clock_timestamp() + make_interval(secs => :ttl)
        WHERE session_id IN (SELECT session_id FROM free) AND expires_at < clock_timestamp()
        RETURNING epoch, members_version
    ), added AS (
        INSERT INTO session_leases (session_id, holder, epoch, expires_at)
        SELECT :session_id, :holder, 1, clock_timestamp() + make_interval(secs => :ttl)
        WHERE NOT EXISTS (SELECT 1 FROM session_leases WHERE session_id = :session_id)
        ON CONFLICT (session_id) DO NOTHING
        RETURNING epoch, members_version
    )
    SELECT epoch, members_version FROM taken
    UNION ALL SELECT epoch, members_version FROM added
    """
)

# Returns the count of the session's member and token changes (``lock_session``): as of
# the commit, since a change locks this row first and so waits for the write's commit.
_FENCE = text(
    """
    UPDATE session_leases SET expires_at = clock_timestamp() + make_interval(secs => :ttl)
    WHERE session_id = :session_id AND holder = :holder AND epoch = :epoch
    RETURNING members_version, pg_current_xact_id()::text::bigint AS xact
    """
)

# The fence of a member's write, which also reads the member as stored (their role, grants,
# denials and membership's epoch; NULL: no member), the member whose invite link gave the
# client token it was sent with (the same; NULL: none, or no member) and whether that token
# is revoked:
# locking reads (after the lease row's lock), so they see a change committed while it
# waited for that lock, which its snapshot, taken before, does not; and a change after it
# waits for the write's commit (``lock_session`` takes the lease row first). FOR SHARE, not
# FOR KEY SHARE: a change of no key column (a role, a revocation) does not conflict with
# the latter, which then reads the row as the snapshot had it.
_FENCE_MEMBER = text(
    """
    UPDATE session_leases SET expires_at = clock_timestamp() + make_interval(secs => :ttl)
    WHERE session_id = :session_id AND holder = :holder AND epoch = :epoch
    RETURNING (
        SELECT json_build_array(m.role, m.grants, m.denials, m.token_epoch)::text FROM members m
        WHERE m.session_id = session_leases.session_id AND m.user_id = :member
        FOR SHARE
    ), (
        SELECT json_build_array(m.role, m.grants, m.denials, m.token_epoch)::text FROM members m
        WHERE m.session_id = session_leases.session_id AND m.user_id = :maker
        FOR SHARE
    ), (
        SELECT t.revoked_at IS NOT NULL FROM client_tokens t
        WHERE t.session_id = session_leases.session_id AND t.id = :token
        FOR SHARE
    ), members_version, pg_current_xact_id()::text::bigint AS xact
    """
)

# Renews the node's leases whose rows it can lock at once, in session order (as a role
# change locks them, ``count_role_change``), and reads every row asked for as last
# committed (the statement's snapshot), with the seconds it has left (NULL: none) and
# whether a transaction of this node holds it (``held_ids``, ``held_xacts``: the sessions
# and transactions that locked them, a write's fence or a change of the members or tokens
# made here, not known to have ended; the database says whether each still runs, as one
# ended by it, ``idle_in_transaction_session_timeout``, or on a lost connection, is not
# known here until its task runs again). A row
# another transaction holds is skipped, never waited for (FX51: the wait, up to the lock
# budget and past the TTL, held every other lease up, and the writes of the sessions whose
# rows it had locked meanwhile). FOR NO KEY UPDATE: the lock the UPDATE takes.
_RENEW_ALL = text(
    """
    WITH free AS (
        SELECT session_id FROM session_leases
        WHERE holder = :holder AND session_id = ANY(:ids) AND expires_at > '-infinity'
        ORDER BY session_id
        FOR NO KEY UPDATE SKIP LOCKED
    ), renewed AS (
        UPDATE session_leases
        SET expires_at = clock_timestamp() + make_interval(secs => :ttl)
        WHERE session_id IN (SELECT session_id FROM free)
        RETURNING session_id, epoch
    )
    SELECT l.session_id, l.epoch, r.epoch AS renewed_epoch,
        CASE WHEN l.holder = :holder AND l.expires_at > clock_timestamp()
            THEN extract(epoch FROM l.expires_at - clock_timestamp()) END AS left_s,
        EXISTS (
            SELECT 1 FROM unnest(
                CAST(:held_ids AS text[]), CAST(:held_xacts AS bigint[])
            ) AS h(session_id, xact)
            WHERE h.session_id = l.session_id
                AND pg_xact_status(h.xact::text::xid8) = 'in progress'
        ) AS held_here
    FROM session_leases l LEFT JOIN renewed r ON r.session_id = l.session_id
    WHERE l.session_id = ANY(:ids)
    """
)

_RELEASE = text(
    """
    UPDATE session_leases SET expires_at = clock_timestamp() - interval '1 second'
    WHERE session_id = :session_id AND holder = :holder AND epoch = :epoch
    """
)

# Sessions with work (a prompt waiting or cut off, or a forwarded command unanswered) and
# nobody holding them: what a surviving node takes over.
_ORPHANED = text(
    """
    SELECT session_id FROM (
        SELECT DISTINCT session_id FROM entries WHERE status IN ('queued', 'running')
        UNION
        SELECT DISTINCT session_id FROM session_commands WHERE result IS NULL
    ) AS busy
    WHERE NOT EXISTS (
        SELECT 1 FROM session_leases l
        WHERE l.session_id = busy.session_id AND l.expires_at >= clock_timestamp()
    )
    LIMIT :limit
    """
)

_HOLDERS = text("SELECT DISTINCT holder FROM session_leases WHERE expires_at >= clock_timestamp()")

# Lapsed leases of nodes that did not confirm a change of roles or tools (see
# ``server.cluster.access``): a new epoch, so their holder cannot renew or write under them
# again and must take the session afresh; '-infinity' marks them fenced once.
_FENCE_LAPSED = text(
    """
    UPDATE session_leases SET epoch = epoch + 1, expires_at = '-infinity'
    WHERE expires_at < clock_timestamp() AND expires_at > '-infinity'
        AND NOT (holder = ANY(:kept))
    """
)

_LIVE = text(
    """
    SELECT session_id FROM session_leases
    WHERE session_id = ANY(:ids) AND expires_at >= clock_timestamp()
    """
)


# Of the TTL, what a holder does not count on (``LeaseTable.known_until``): the database
# and this node's clocks need not run at quite the same rate.
LEASE_MARGIN = 0.2


class LeaseTable:
    """The ``session_leases`` operations of one node (``holder``)."""

    def __init__(self, engine: AsyncEngine, holder: str, ttl_s: float) -> None:
        self.engine = engine
        self.holder = holder
        self.ttl_s = ttl_s
        # The transactions of this node that locked a lease row (its session, and the
        # transaction's id) and have not ended here: a write's fence, a member changed or
        # a token minted here (``lock_session``, told through ``Database.lease_locks``).
        # While one runs, nobody else can take that lease.
        self._held_here: Counter[tuple[str, int]] = Counter()
        # The node's renewals take turns: one renewing a row would be, to another at once,
        # a transaction not known as this node's (FX68: the renewal on use and the round's
        # ran together, and the second counted a run-out lease the first renewed lost).
        self._renewing = asyncio.Lock()

    def locked(self, session_id: str, xact: int) -> Callable[[], None]:
        """Transaction ``xact`` of this node locked ``session_id``'s lease row: held here
        until the returned callable is called, once it has ended (``LeaseLocks``)."""
        key = (session_id, xact)
        self._held_here[key] += 1
        return lambda: self._released(key)

    def _released(self, key: tuple[str, int]) -> None:
        self._held_here[key] -= 1
        if self._held_here[key] <= 0:
            del self._held_here[key]

    def known_until(self, asked_at: float, left_s: float | None = None) -> float:
        """Until when (``time.monotonic()``) a lease taken or renewed by a statement sent at
        ``asked_at`` surely holds: the database set its expiry a TTL after it ran the
        statement, which is later, less ``LEASE_MARGIN``. ``left_s``: not renewed but found
        to run so much longer by that statement (``Renewal.locked``), in place of the TTL."""
        return asked_at + (self.ttl_s if left_s is None else left_s) * (1 - LEASE_MARGIN)

    async def try_acquire(self, session_id: str) -> Lease | None:
        """Take the lease if nobody holds it (absent or expired); None if someone does."""
        async with database_errors(), self.engine.begin() as connection:
            taken = (
                await connection.execute(
                    _ACQUIRE, {"session_id": session_id, "holder": self.holder, "ttl": self.ttl_s}
                )
            ).first()
        if taken is None:
            return None
        epoch, members_version = taken
        return Lease(session_id, self.holder, int(epoch), int(members_version))

    async def fence(self, tx: StoreTx, lease: Lease) -> int:
        """In write transaction ``tx`` of this node: renew the lease, or raise ``Fenced`` if
        it was lost. Returns the session's ``members_version`` as of the commit. Its row
        stays locked by this node until ``tx`` ends (``renew`` asks after it)."""
        found = (await tx.connection.execute(_FENCE, self._fenced(lease))).first()
        if found is None:
            raise Fenced(LOST)
        tx.when_ended(self.locked(lease.session_id, int(found.xact)))
        return int(found.members_version)

    async def fence_member(
        self, tx: StoreTx, lease: Lease, user_id: str, token: ClientClaims | None
    ) -> StoredMember:
        """``fence`` for a write of member ``user_id`` sent with the client token of claims
        ``token`` (None: none known): also, read at the commit (``_FENCE_MEMBER``), the
        member as stored, the member whose invite link gave the token (``made_by``) as
        stored, whether the token is revoked, and the session's ``members_version``."""
        parameters = {
            **self._fenced(lease),
            "member": user_id,
            "maker": None if token is None or not token.made_by else token.made_by,
            "token": None if token is None else token.token_id,
        }
        found = (await tx.connection.execute(_FENCE_MEMBER, parameters)).first()
        if found is None:
            raise Fenced(LOST)
        stored, maker, revoked, version, xact = found
        tx.when_ended(self.locked(lease.session_id, int(xact)))
        made_by = "" if token is None else token.made_by
        return StoredMember(
            _member(user_id, stored),
            _member(made_by, maker) if made_by else None,
            bool(revoked),
            int(version),
        )

    def _fenced(self, lease: Lease) -> dict[str, object]:
        return {
            "session_id": lease.session_id,
            "holder": lease.holder,
            "epoch": lease.epoch,
            "ttl": self.ttl_s,
        }

    async def renew(self, leases: list[Lease]) -> Renewal:
        """Extend these leases of this node, waiting on no row another transaction holds
        (see ``Renewal``: one run out as last committed is kept while a transaction of
        this node holds its row, FX61, FX68). ``Unavailable`` if the database fails."""
        if not leases:
            return Renewal()
        async with self._renewing:
            return await self._renew(leases)

    async def _renew(self, leases: list[Lease]) -> Renewal:
        epochs = {x.session_id: x.epoch for x in leases}
        held = [key for key in self._held_here if key[0] in epochs]
        parameters = {
            "holder": self.holder,
            "ids": list(epochs),
            "ttl": self.ttl_s,
            "held_ids": [session_id for session_id, _ in held],
            "held_xacts": [xact for _, xact in held],
        }
        async with database_errors(), self.engine.begin() as connection:
            rows = await connection.execute(_RENEW_ALL, parameters)
            renewed: set[str] = set()
            locked: dict[str, float] = {}
            for row in rows:
                if row.renewed_epoch is not None:
                    if int(row.renewed_epoch) == epochs[row.session_id]:
                        renewed.add(row.session_id)
                elif int(row.epoch) == epochs[row.session_id]:
                    # Run out as last committed: a takeover may be under way, unless a
                    # transaction of this node holds the row (as its epoch is this
                    # lease's, a takeover cannot have passed it).
                    if row.left_s is not None:
                        locked[row.session_id] = float(row.left_s)
                    elif row.held_here:
                        locked[row.session_id] = 0.0
        return Renewal(frozenset(renewed), locked)

    async def release(self, lease: Lease) -> None:
        """Give the lease up now (another node may take it at once)."""
        async with database_errors(), self.engine.begin() as connection:
            await connection.execute(
                _RELEASE,
                {"session_id": lease.session_id, "holder": lease.holder, "epoch": lease.epoch},
            )

    async def orphaned(self, limit: int = 50) -> list[str]:
        """Sessions with work and no live lease (what a takeover round takes)."""
        async with database_errors(), self.engine.connect() as connection:
            rows = await connection.execute(_ORPHANED, {"limit": limit})
            return [row.session_id for row in rows]

    async def live(self, session_ids: list[str]) -> set[str]:
        """Which of ``session_ids`` some node holds right now."""
        if not session_ids:
            return set()
        async with database_errors(), self.engine.connect() as connection:
            rows = await connection.execute(_LIVE, {"ids": session_ids})
            return {row.session_id for row in rows}

    async def fence_lapsed(self, kept: set[str]) -> None:
        """Fence every lapsed lease of a holder not in ``kept``."""
        async with database_errors(), self.engine.begin() as connection:
            await connection.execute(_FENCE_LAPSED, {"kept": sorted(kept)})

    async def holders(self) -> set[str]:
        """The nodes holding a live lease right now (those that run sessions)."""
        async with database_errors(), self.engine.connect() as connection:
            rows = await connection.execute(_HOLDERS)
            return {str(row.holder) for row in rows}
