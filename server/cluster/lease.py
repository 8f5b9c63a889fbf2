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

Renewals wait on no row (``LeaseTable.renew``): one another transaction holds is skipped and
asked again next round. As last committed it still runs until its expiry, before which no
takeover succeeds, so the holder counts on it until then; one still locked past that is lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.authz.roles import Member
from parley.authz.tokens import ClientClaims
from parley.server.store.health import LOCK_HELD, lock_waited
from parley.session.errors import Unavailable

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
    asked again at the next renewal. Every other one is lost: taken over, fenced, its
    session deleted, or its row locked once it had run out (a takeover may be under way)."""

    renewed: frozenset[str] = frozenset()
    locked: Mapping[str, float] = field(default_factory=dict)

    def holds(self, session_id: str) -> bool:
        return session_id in self.renewed or session_id in self.locked


_ACQUIRE = text(
    """
    INSERT INTO session_leases (session_id, holder, epoch, expires_at)
    VALUES (:session_id, :holder, 1, clock_timestamp() + make_interval(secs => :ttl))
    ON CONFLICT (session_id) DO UPDATE
        SET holder = EXCLUDED.holder,
            epoch = session_leases.epoch + 1,
            expires_at = EXCLUDED.expires_at
        WHERE session_leases.expires_at < clock_timestamp()
    RETURNING epoch, members_version
    """
)

# Returns the count of the session's member and token changes (``lock_session``): as of
# the commit, since a change locks this row first and so waits for the write's commit.
_FENCE = text(
    """
    UPDATE session_leases SET expires_at = clock_timestamp() + make_interval(secs => :ttl)
    WHERE session_id = :session_id AND holder = :holder AND epoch = :epoch
    RETURNING members_version
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
    ), members_version
    """
)

# Renews the node's leases whose rows it can lock at once, in session order (as a role
# change locks them, ``count_role_change``), and reads every row asked for as last
# committed (the statement's snapshot), with the seconds it has left (NULL: none). A row
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
            THEN extract(epoch FROM l.expires_at - clock_timestamp()) END AS left_s
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

    async def fence(self, connection: AsyncConnection, lease: Lease) -> int:
        """In a write transaction: renew the lease, or raise ``Fenced`` if it was lost.
        Returns the session's ``members_version`` as of the commit."""
        version = (await connection.execute(_FENCE, self._fenced(lease))).scalar_one_or_none()
        if version is None:
            raise Fenced(LOST)
        return int(version)

    async def fence_member(
        self, connection: AsyncConnection, lease: Lease, user_id: str, token: ClientClaims | None
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
        found = (await connection.execute(_FENCE_MEMBER, parameters)).first()
        if found is None:
            raise Fenced(LOST)
        stored, maker, revoked, version = found
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
        (see ``Renewal``). ``Unavailable`` if the database fails."""
        if not leases:
            return Renewal()
        epochs = {x.session_id: x.epoch for x in leases}
        async with database_errors(), self.engine.begin() as connection:
            rows = await connection.execute(
                _RENEW_ALL, {"holder": self.holder, "ids": list(epochs), "ttl": self.ttl_s}
            )
            renewed: set[str] = set()
            locked: dict[str, float] = {}
            for row in rows:
                if row.renewed_epoch is not None:
                    if int(row.renewed_epoch) == epochs[row.session_id]:
                        renewed.add(row.session_id)
                elif row.left_s is not None and int(row.epoch) == epochs[row.session_id]:
                    locked[row.session_id] = float(row.left_s)
        return Renewal(frozenset(renewed), locked)

    async def release(self, lease: Lease) -> None:
        """Give the lease up now (another node may take it at once)."""
        async with self.engine.begin() as connection:
            await connection.execute(
                _RELEASE,
                {"session_id": lease.session_id, "holder": lease.holder, "epoch": lease.epoch},
            )

    async def orphaned(self, limit: int = 50) -> list[str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(_ORPHANED, {"limit": limit})
            return [row.session_id for row in rows]

    async def live(self, session_ids: list[str]) -> set[str]:
        """Which of ``session_ids`` some node holds right now."""
        if not session_ids:
            return set()
        async with self.engine.connect() as connection:
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
