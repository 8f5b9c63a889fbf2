"""This process as one node of a cluster on one PostgreSQL.

Each loaded session is, on this node, either **run** here (this node holds its lease: it
is the only writer of the document and runs the queue) or a **read replica** (it applies
the update log the running node writes and forwards its sockets' commands there). Nodes
learn of new updates, forwarded commands and their replies through LISTEN/NOTIFY, and
re-read the tables after any reconnect and every ``cluster_poll_s`` so a lost notification
only delays, never loses, anything.

A background round (``LeaseRound``) renews this node's leases, takes over sessions whose
holder stopped renewing (its replicas first, then any session with work and no live holder)
and notices a lease it lost (the room is given up and reloaded on next use). A node answers
as a session's runner only while its lease is known to hold (``serves``): one that stalled
past it renews the lease first, or gives the session up, before it answers anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.authz.policy import Subject
from parley.authz.tokens import ClientClaims
from parley.server.cluster.access import CHANNEL_ACCESS, CHANNEL_ACCESS_SEEN, AccessSync
from parley.server.cluster.forwarding import CHANNEL_COMMAND, CHANNEL_RESULT
from parley.server.cluster.lease import Fenced, Lease, LeaseTable, NotHolder
from parley.server.cluster.lease_round import LeaseRound
from parley.server.cluster.listener import NotificationListener, asyncpg_dsn
from parley.server.cluster.metrics import ClusterMetrics
from parley.server.cluster.presence import CHANNEL_AWARENESS, PresenceRelay
from parley.server.cluster.relay import (
    ADMIN_SENDER,
    FORWARD_POLL_S,
    MAX_TAIL_PAGES,
    CommandRelay,
    unavailable,
)
from parley.server.cluster.tail import catch_up_threads, read_tail
from parley.server.runtime.back_references import BackReference
from parley.server.runtime.commands import handle_frame
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.runtime.session_writes import (
    CHARGE_WRITE,
    FORWARDED_ID,
    SETTINGS_WRITE,
    apply_session_write,
)
from parley.server.settings import Settings
from parley.server.store.access import CHANNEL_SETTINGS, read_revoked_tokens, read_roles
from parley.server.store.group_commit import MembersMoved
from parley.server.store.port import SessionTx
from parley.server.store.rows import read_members
from parley.server.store.sessions import CHANNEL_DELETED, Store, StoreTx
from parley.server.store.tables import sessions
from parley.session.closes import CloseCode
from parley.session.commands import command_id_of, error_reply, reply_error
from parley.session.errors import ShuttingDown, Unavailable
from parley.session.queue import Policy
from parley.session.reasons import ReasonCode

if TYPE_CHECKING:
    from parley.server.runtime.rooms import RoomRegistry

log = logging.getLogger("parley.cluster")

CHANNEL_DOC = "parley_doc"  # payload: session id (an update was committed)
CHANNEL_PRIVATE = "parley_private"  # payload: "<session id> <entry id>" (restricted text)
CHANNEL_THREAD = "parley_thread"  # payload: "<session id> <thread id> <owner>"
TAIL_PAGE = 500


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _store_tx(tx: SessionTx) -> StoreTx:
    """Cluster mode runs on PostgreSQL: its rooms' transactions are the database's."""
    if not isinstance(tx, StoreTx):
        raise TypeError("cluster mode needs the database store")
    return tx


def _connection(tx: SessionTx) -> AsyncConnection:
    return _store_tx(tx).connection


class HolderFence:
    """The ``WriteFence`` of a room on a cluster node: only the lease holder writes."""

    room: BackReference[SessionRoom] = BackReference()  # the room holds its fence

    def __init__(self, node: ClusterNode, room: SessionRoom) -> None:
        self.node = node
        self.room = room
        # The lease under which the members as stored were last read, and their
        # ``members_version`` then.
        self._members_read: tuple[Lease, int] | None = None

    async def check(
        self,
        tx: SessionTx,
        member: str | None = None,
        token: ClientClaims | None = None,
        *,
        appended: bool = False,
    ) -> None:
        lease = self.node.leases.get(self.room.session_id)
        if lease is None:
            raise NotHolder("another node runs this session; try again")
        table = self.node.leases_table
        store_tx = _store_tx(tx)
        connection = store_tx.connection
        try:
            if member is None:
                version = await table.fence(store_tx, lease)
            else:
                stored = await table.fence_member(store_tx, lease, member, token)
                version = stored.members_version
        except Fenced:
            self.node.lost(self.room.session_id, lease)
            raise
        if member is not None:
            # Changed on another node, which has yet to put it in force here: the command
            # is judged by the member, the token and its link's maker as stored, refused
            # and audited as any other (review RA-3: stored after their ``member_left``;
            # and after a ``member_changed`` to viewer, their token's revocation, or its
            # maker's removal).
            membership = self.room.membership
            membership.as_stored(member, stored.member)
            if token is not None and token.made_by:
                membership.as_stored(token.made_by, stored.maker)
            if stored.revoked and token is not None:
                membership.revoking.add(token.token_id)
        read = self._members_read
        if version == (lease.members_version if read is None or read[0] != lease else read[1]):
            return
        # Members or tokens changed since they were last read here (on another node, say,
        # not in force here yet): as the fence holds the lease row, which every such change
        # locks first (``lock_session``), they stay as read here until this write commits.
        # What this write and those after it judge (what every member may read, whether a
        # run may start) is judged by them (reviews RH-2, RH-3).
        membership = self.room.membership
        members = await read_members(connection, self.room.session_id)
        now = int(self.room.clock())
        revoked_tokens = await read_revoked_tokens(connection, self.room.session_id, now)
        membership.hold_stored([row.as_member() for row in members], revoked_tokens)
        # The restricted-reply policy is counted with them (``READING_SETTINGS``): a reply
        # streaming ``shared`` goes private at a change to ``private`` stored elsewhere.
        policy = (
            await connection.execute(
                select(sessions.c.restricted_replies, sessions.c.restricted_replies_by).where(
                    sessions.c.id == self.room.session_id
                )
            )
        ).first()
        if policy is not None:
            self.room.restricted_replies = policy.restricted_replies
            self.room.restricted_replies_by = policy.restricted_replies_by
        # So are the custom roles' definitions (``count_role_change``): a member's role
        # edited elsewhere, what it lets them read or use is judged by it as stored.
        self.node.registry.hold_roles(await read_roles(connection))
        self._members_read = (lease, version)
        if appended:
            raise MembersMoved("the members changed as this text was judged; nothing was stored")

    def published(self, tx: SessionTx) -> None:
        # Sent with the transaction's other notifications, in its last statement or one
        # just before its commit: a group-commit round of many sessions' updates makes one
        # round trip, and a write's carries it with its counters (``append_change``).
        _store_tx(tx).notify(CHANNEL_DOC, self.room.session_id)

    def kept_private(self, tx: SessionTx, entry_id: str) -> None:
        _store_tx(tx).notify(CHANNEL_PRIVATE, f"{self.room.session_id} {entry_id}")

    def thread_changed(self, tx: SessionTx, thread_id: str, owner: str) -> None:
        _store_tx(tx).notify(CHANNEL_THREAD, f"{self.room.session_id} {thread_id} {owner}")

    async def readers_at_commit(self, tx: SessionTx) -> Callable[[str], Subject | None]:
        # Read after the fence locked the lease row, which every member change locks first
        # (``lock_session``): a change committed before this statement is in it (a
        # statement of its own, it sees what committed while the fence waited); one not
        # yet committed waits for this write's commit, and comes after it.
        stored = await read_members(_connection(tx), self.room.session_id)
        roles = self.room.membership.roles()
        return {row.user_id: Subject.of(row.as_member(), roles) for row in stored}.get

    def holds(self) -> bool:
        return self.room.session_id in self.node.leases


class ClusterNode:
    def __init__(self, settings: Settings, store: Store, registry: RoomRegistry) -> None:
        if not store.engine.dialect.name == "postgresql":
            raise ValueError("cluster mode needs PostgreSQL (PARLEY_DATABASE_URL)")
        self.settings = settings
        self.store = store
        self.registry = registry
        self.node_id = settings.node_id or default_node_id()
        self.leases_table = LeaseTable(store.engine, self.node_id, settings.lease_ttl_s)
        store.lease_locks = self.leases_table  # its transactions' lease rows (FX68)
        self.leases: dict[str, Lease] = {}
        # Of each lease held, until when it surely holds (``LeaseTable.known_until``).
        self.held_until: dict[str, float] = {}
        self.running: set[str] = set()  # held, loaded and its runner started
        self.applied: dict[str, int] = {}  # replica rooms: last update id applied
        self.live_elsewhere: set[str] = set()
        self.runners: dict[str, SessionRunner] = {}  # the sessions opened here
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._stale_docs: set[str] = set()
        self._stale_settings: set[str] = set()  # replica rooms to judge by the stored members
        # Of each replica room, the digest of the settings it put in force (``Tail.settings``).
        self._settings_seen: dict[str, str] = {}
        self.presence = PresenceRelay(store.engine, self.node_id, registry.loaded)
        self.access = AccessSync(
            store.engine, self.node_id, registry.load_access, self.leases_table
        )
        self._wake = asyncio.Event()
        self.relay = CommandRelay(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._letting_go: dict[str, asyncio.Task[None]] = {}  # rooms of leases lost (``lost``)
        self.listener = NotificationListener(
            asyncpg_dsn(settings.database_url),
            {
                CHANNEL_DOC: self._on_doc,
                CHANNEL_PRIVATE: self._on_private,
                CHANNEL_THREAD: self._on_thread,
                CHANNEL_DELETED: self._on_deleted,
                CHANNEL_SETTINGS: self._on_settings,
                CHANNEL_COMMAND: self._on_command,
                CHANNEL_RESULT: self.relay.on_result,
                CHANNEL_AWARENESS: self.presence.on_notification,
                CHANNEL_ACCESS: self.access.on_asked,
                CHANNEL_ACCESS_SEEN: self.access.on_seen,
            },
            self._on_listening,
            name=f"parley-listener {self.node_id}",
        )
        self.metrics = ClusterMetrics(registry.metrics.registry)
        self.metrics.watch(
            lambda: len(self.running), lambda: len(self.applied), lambda: self.listener.healthy
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.listener.start()
        await self.listener.wait_connected(10)
        for name, loop in (
            ("cluster-leases", LeaseRound(self).run),
            ("cluster-apply", self._apply_loop),
            ("cluster-presence", self.presence.run),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=name))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.access.stop()
        await self.listener.stop()

    def status(self) -> str:
        return "ok" if self.listener.healthy else "down"

    # -- rooms (called by the registry) ---------------------------------------------------

    async def open(
        self,
        room: SessionRoom,
        runner: SessionRunner,
        title: str,
        policy: Policy,
    ) -> None:
        """Load a room (its settings in force: ``use_settings``): run it here if nobody
        does, else as a read replica."""
        session_id = room.session_id
        room.writer.document.fence = HolderFence(self, room)
        self.runners[session_id] = runner
        async with self._lock(session_id):
            try:
                taken = await self._take(room, title, policy)
            except BaseException:
                self.runners.pop(session_id, None)
                raise
            if not taken:
                await room.reload_settings()
                self.applied[session_id] = 0
                self.live_elsewhere.add(session_id)
                await self._catch_up(room)
                # A replica's reads build context too (a preview): as a load does.
                await room.context.warm(room.doc)

    async def close(self, room: SessionRoom) -> None:
        """The registry unloaded the room: give its lease up so another node takes it."""
        session_id = room.session_id
        self.running.discard(session_id)
        self.applied.pop(session_id, None)
        self._settings_seen.pop(session_id, None)
        self.runners.pop(session_id, None)
        self._room_locks.pop(session_id, None)
        self.live_elsewhere.discard(session_id)
        self.held_until.pop(session_id, None)
        lease = self.leases.pop(session_id, None)
        if lease is not None:
            with contextlib.suppress(Exception):
                await self.leases_table.release(lease)

    def lost(self, session_id: str, lease: Lease) -> None:
        """Our lease was taken over: stop writing; the room is reloaded on next use."""
        if self.leases.get(session_id) != lease:
            return
        del self.leases[session_id]
        self.held_until.pop(session_id, None)
        self.running.discard(session_id)
        self.metrics.lost.inc()
        log.warning("lease lost", extra={"session_id": session_id, "epoch": lease.epoch})
        task = self.spawn(self._let_go(session_id))
        self._letting_go[session_id] = task
        task.add_done_callback(lambda _: self._letting_go.pop(session_id, None))

    async def reopened(self, room: SessionRoom) -> SessionRoom:
        """The session's room once ``room``, whose lease this node lost (``NotHolder``), is
        given up (``lost``): loaded again, as a read replica (or run here, if nobody runs the
        session now), so a REST call that found the loss as it caught the room up is judged,
        forwarded and answered as on any read replica (review RC-5: it was refused "this
        node lost the session to another node; try again", and nothing was stored).
        ``NotFound`` if the session was deleted meanwhile."""
        letting_go = self._letting_go.get(room.session_id)
        if letting_go is not None:
            with contextlib.suppress(Exception):  # not given up: the caller finds it lost
                await asyncio.shield(letting_go)
        return await self.registry.get(room.session_id)

    async def _let_go(self, session_id: str) -> None:
        """After a lost lease: a session deleted meanwhile (its lease row goes with it) is
        unloaded as deleted, 4404 and ``not_found``, as every node says (review: a reply
        streaming as another node deleted it lost its lease first, and its sockets were told
        1013 'moved'); else it moved, and its sockets are told to reconnect."""
        try:
            gone = await self.store.get_session(session_id) is None
        except Exception:
            gone = False  # unknown: what a move says lets them find out
        if gone:
            await self.registry.forget_session(session_id)
            return
        room = self.registry.loaded(session_id)
        if room is not None:
            room.fail("this session moved to another node; reconnect", ReasonCode.FAILOVER)
        await self.registry.unload(session_id, CloseCode.TRY_AGAIN, "session moved to another node")

    def renewed(self, leases: list[Lease], asked_at: float, left_s: float | None = None) -> None:
        """``leases`` were renewed by a statement sent at ``asked_at`` (``left_s``: found
        held by another transaction, so not renewed, but running so much longer:
        ``Renewal.locked``)."""
        if left_s is not None:
            self.metrics.renewals_skipped.inc(len(leases))
        until = self.leases_table.known_until(asked_at, left_s)
        for lease in leases:
            if self.leases.get(lease.session_id) == lease:
                held = self.held_until.get(lease.session_id, until)
                self.held_until[lease.session_id] = max(held, until)

    async def serves(self, room: SessionRoom) -> bool:
        """Whether this node may answer for the session from its own room as its runner:
        it runs it and its lease surely holds now (False for a read replica). Raises
        ``NotHolder`` when it ran it but stalled past its lease and lost it meanwhile."""
        if room.session_id not in self.running:
            return False
        if await self.lease_holds(room):
            return True
        raise NotHolder("this node lost the session to another node; try again")

    async def lease_holds(self, room: SessionRoom) -> bool:
        """True when this node runs the session and its lease surely holds now. Past the
        lease's local deadline (review: a node frozen past its lease answered, when it
        woke, what had waited meanwhile from its room as it was: a member removed
        elsewhere read the transcript, a deleted session was served) it is renewed first;
        renewed, the roles, settings and members are read again, as a replica's are: what
        other nodes changed meanwhile did not wait for this one. Not renewed, it is lost;
        its row held by another transaction, it holds as long as it runs as last committed
        (``Renewal.locked``: not waited for)."""
        session_id = room.session_id
        if time.monotonic() < self.held_until.get(session_id, 0.0):
            return session_id in self.running
        async with self._lock(session_id):
            lease = self.leases.get(session_id)
            if lease is None or session_id not in self.running:
                return False
            if time.monotonic() < self.held_until.get(session_id, 0.0):
                return True  # renewed while this waited
            asked_at = time.monotonic()
            found = await self.leases_table.renew([lease])
            if not found.holds(session_id):
                self.lost(session_id, lease)
                return False
            await self.registry.load_access()
            await room.reload_settings()
            self.renewed([lease], asked_at, found.locked.get(session_id))
        return session_id in self.running

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._room_locks.setdefault(session_id, asyncio.Lock())

    async def _take(self, room: SessionRoom, title: str, policy: Policy) -> bool:
        """Try to become the session's runner (under the room's cluster lock).
        ``ShuttingDown`` if this node drains: it would hold the lease, running nothing,
        until it exits (FX72), where a healthy node runs the session."""
        session_id = room.session_id
        if self.registry.draining:
            raise ShuttingDown()
        asked_at = time.monotonic()
        lease = await self.leases_table.try_acquire(session_id)
        if lease is None:
            return False
        self.leases[session_id] = lease
        self.held_until[session_id] = self.leases_table.known_until(asked_at)
        applied = self.applied.pop(session_id, None)
        self._settings_seen.pop(session_id, None)
        try:
            # Roles and tools as stored now: a change confirmed before this node held the
            # lease did not wait for it (see ``AccessSync``).
            await self.registry.load_access()
            # The store is the truth: the queue resumes from it and a reply cut off by the
            # previous holder is marked interrupted (the same path as a restart).
            room.taken_over()
            await room.load(title, policy)
            runner = self.runners[session_id]
            runner.start()
            try:
                # Before this node serves any write (it is not ``running`` yet, and takes
                # it under the room's cluster lock, which ``promote`` waits on).
                await self.relay.settle(room)
                if session_id not in self.leases:  # fenced as it settled (``lost``)
                    raise NotHolder("another node runs this session; try again")
            except BaseException:
                await runner.stop()
                raise
        except BaseException:
            self.leases.pop(session_id, None)
            self.held_until.pop(session_id, None)
            if applied is not None:
                self.applied[session_id] = applied  # still a replica: keep following
            with contextlib.suppress(Exception):
                await self.leases_table.release(lease)
            raise
        self.running.add(session_id)
        self.metrics.taken.inc()
        self.relay.wanted(session_id)
        log.info("session taken", extra={"session_id": session_id, "epoch": lease.epoch})
        return True

    async def promote(self, room: SessionRoom) -> bool:
        """A replica here, nobody running it: run it here. True if this node runs it now;
        False too while this node drains (``_take``)."""
        session_id = room.session_id
        async with self._lock(session_id):
            if session_id in self.running:
                return True
            if room.closed or self.registry.loaded(session_id) is not room:
                return False
            if self.registry.draining:
                return False
            row = await self.store.get_session(session_id)
            if row is None:
                return False
            room.use_settings(row.model, row.restricted_replies, row.restricted_replies_by)
            return await self._take(room, row.title, Policy(row.policy))

    # -- commands -------------------------------------------------------------------------

    async def command(
        self, room: SessionRoom, user_id: str, frame: str, token: ClientClaims | None = None
    ) -> str:
        """Run a member's command (from a socket or an HTTP call, with the client token of
        claims ``token``) here if this node runs the session, else forward it with the
        token's claims: the node that runs it judges the command by the member and the
        token as of its commit, as it judges its own.

        A node that lost the session (it stalled past its lease and another node took it
        over) forwards the command as a read replica does, whether it learns so before it
        runs it (``NotHolder``) or at its commit (``Fenced``: its transaction stored
        nothing): the member's answer is the real one, from the node that runs the session
        now (review, rx-1's sibling: it was refused "this node lost the session to another
        node; nothing was stored" on a socket that stayed open, and no SDK resent it). The
        command goes there by its id, so one this node did store (its commit's outcome
        unknown) is answered with its first ack, never stored twice. Where this node
        cannot know yet (its lease's renewal failed: the database), the command waits until
        it does, up to ``forward_timeout_s``."""
        try:
            here = await self._runs_here_once_known(room)
        except Unavailable as exc:  # not known in time: nothing of it ran anywhere
            return error_reply(command_id_of(frame), exc)
        if here:
            reply = await handle_frame(room, user_id, frame, token)
            if room.session_id in self.running or not unavailable(reply):
                return reply
        return await self.relay.forward(room, user_id, frame, token)

    async def runs_here(self, room: SessionRoom) -> bool:
        """True when this node runs the session: it does (``serves``: ``NotHolder`` if it
        stalled and lost it), or nobody does and it takes it now (a failure to take it is
        logged: the caller forwards, or refuses). A node that drains takes none:
        ``ShuttingDown`` if nobody runs the session (what is sent to it would wait for a
        runner up to ``forward_timeout_s``, past this node's exit; refused, it is sent
        again to a healthy node, as the draining node's other refusals are)."""
        session_id = room.session_id
        if await self.serves(room):
            return True
        if self.registry.draining:
            if session_id not in await self.leases_table.live([session_id]):
                raise ShuttingDown()
            return False
        if session_id not in self.live_elsewhere:
            try:
                await self.promote(room)
            except Exception as exc:  # the database, say: forwarding reports it
                log.warning("could not take the session", extra={"error": repr(exc)})
        return session_id in self.running

    async def _still_runs_here(self, room: SessionRoom) -> bool:
        """``runs_here``, and False too where another node took the session over while
        this one stalled (``NotHolder``): nothing of the call ran here, so the caller
        forwards it, as a read replica does, to the node that runs the session now."""
        try:
            return await self.runs_here(room)
        except NotHolder:
            return False

    async def _runs_here_once_known(self, room: SessionRoom) -> bool:
        """``_still_runs_here``, asked again every ``FORWARD_POLL_S`` while this node
        cannot renew its lease (the database): a node that woke past its lease knows only
        then whether it still runs the session (review: a member's prompt was refused "the
        database is unavailable" meanwhile, and no SDK resends an error). ``Unavailable``
        when it still does not know after ``forward_timeout_s``; ``ShuttingDown`` at once
        (``runs_here``)."""
        deadline = time.monotonic() + self.settings.forward_timeout_s
        while True:
            try:
                return await self._still_runs_here(room)
            except ShuttingDown:
                raise
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(FORWARD_POLL_S)

    async def write_session(self, room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
        """A REST change of the session (``server.runtime.session_writes``): run here if this node
        runs the session, else forwarded to the node that does (as the admin: the REST call
        was authorised), then followed here, so both nodes answer with it (forwarded from a
        node that lost the session too, and from one whose write was fenced at its commit:
        that write stored nothing here, while the call may have stored its change already,
        which the node that runs the session now puts in force). On a node that drains,
        for a session nobody runs: ``ShuttingDown``, nothing stored; or, for settings or
        members the call stored already (``SETTINGS_WRITE``), forwarded all the same: the
        write left open is work, for which a healthy node's round takes the session."""
        try:
            here = await self._still_runs_here(room)
        except ShuttingDown:
            if write.get("op") != SETTINGS_WRITE:
                raise
            here = False
        if here:
            try:
                return await apply_session_write(room, write)
            except NotHolder:
                # Lost as it wrote (``Fenced``: ``lost`` gave the session up), or just
                # before (the lease round found it lost): nothing stored here; forwarded.
                pass
        reply = await self._forward_write(room, write)
        await self.follow(room)
        return dict(reply.get("result") or {})

    async def charge(self, room: SessionRoom, user_id: str, why: str) -> None:
        """Spend ``user_id``'s command budget on the node that runs the session, if that
        is another (``CHARGE_WRITE``)."""
        if await self._still_runs_here(room):
            return
        await self._forward_write(room, {"op": CHARGE_WRITE, "user_id": user_id, "why": why})

    async def _forward_write(self, room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
        """Forward ``write`` (a REST change: no id of a client's) to the node that runs the
        session, as the admin; its reply, or its error raised. It goes under an id made
        here (``FORWARDED_ID``), kept with what it stores: run again there (its runner
        stored it and died before it answered, and the next runner runs what was left
        unanswered), it is answered as stored, not carried out twice (FX66: a fact put
        back over a newer acknowledged one). The caller's answer never shows that id."""
        write = {**write, FORWARDED_ID: uuid.uuid4().hex}
        reply = json.loads(await self.relay.forward(room, ADMIN_SENDER, json.dumps(write)))
        if reply.get("type") == "error":
            raise reply_error(reply)
        return dict(reply)

    async def follow(self, room: SessionRoom, *, kept: bool = False) -> None:
        """Bring a read replica up to what is committed (the document's tail, the roles and
        tools, the settings and members; with ``kept`` also the restricted text and the
        summaries), so a REST call here is judged and answered as one there would be. On
        the node that runs it: nothing to catch up (``serves``: ``NotHolder`` if it stalled
        and lost it)."""
        if await self.serves(room):
            return
        await self._catch_up(room)
        await self.registry.current_access()
        await room.reload_settings()
        if kept:
            await room.context.load()

    async def confirm_access(self) -> None:
        """Roles or tools were changed here: wait until every node running a session has
        them in force (``Unavailable`` if one does not say so in ``forward_timeout_s``)."""
        await self.access.confirm(self.settings.forward_timeout_s)

    # -- notifications --------------------------------------------------------------------

    def _on_doc(self, session_id: str) -> None:
        if session_id in self.applied:
            self._stale_docs.add(session_id)
            self._wake.set()

    def _on_private(self, payload: str) -> None:
        session_id, _, entry_id = payload.partition(" ")
        room = self.registry.loaded(session_id)
        if room is not None and session_id in self.applied and room.sockets.connections:
            self.spawn(self._deliver_private(room, entry_id))

    async def _deliver_private(self, room: SessionRoom, entry_id: str) -> None:
        """Push restricted text the running node stored to this node's sockets of the
        members who may read it (the running node pushes it to its own), judged by the
        members and roles as the store holds them now. A notification missed here (the
        listener reconnecting) leaves it to ``GET …/entries/{id}/private``, as for a socket
        that was not connected when it was stored."""
        try:
            await self.follow(room)
            item = await self.store.access.private_item(room.session_id, entry_id)
        except Exception:
            log.warning("could not read restricted text", extra={"session_id": room.session_id})
            return
        if item is not None and room.session_id in self.applied:
            room.context.keep(item)
            room.sockets.deliver_private(item)

    def _on_thread(self, payload: str) -> None:
        session_id, thread_id, owner = [*payload.split(" ", 2), "", ""][:3]
        room = self.registry.loaded(session_id)
        if room is not None and session_id in self.applied and owner:
            self.spawn(self._tell_thread(room, thread_id, owner))

    async def _tell_thread(self, room: SessionRoom, thread_id: str, owner: str) -> None:
        """The running node changed ``owner``'s side-thread: their sockets here learn of
        it as the running node's do (its ``thread`` frame; the streamed text's deltas
        come only from the running node)."""
        try:
            await room.side_threads.tell_owner(thread_id, owner)
        except Exception:
            log.warning("could not tell a side-thread's change", extra={"thread_id": thread_id})

    def _on_deleted(self, session_id: str) -> None:
        """A node deleted a session (review: the node that ran it went on serving it, and
        later closed its sockets 1013 and ended its streams ``unavailable``, not 4404 and
        ``not_found`` as the deleting node did)."""
        if self.registry.loaded(session_id) is not None:
            self.spawn(self.registry.forget_session(session_id))

    def _on_settings(self, session_id: str) -> None:
        """A node changed a session's settings or members (``settings_changed``): a read
        replica here takes them up before the document's next updates reach its sockets
        (review: a member removed, revoked or denied there was still admitted here, and
        sent what was posted after, for up to the poll's interval)."""
        if session_id in self.applied:
            self._stale_settings.add(session_id)
            self._stale_docs.add(session_id)
            self._wake.set()

    async def settings_changed(self, session_id: str) -> None:
        """Tell every node that ``session_id``'s stored settings or members changed. Best
        effort, after the change committed: a notification that fails is logged, never
        raised (review: a member's change, stored, was answered 500 when it failed), and
        the other nodes put the change in force by their poll (``LeaseRound``: within
        ``cluster_poll_s`` and a round, ``lease_ttl_s / 4``)."""
        try:
            async with self.store.engine.begin() as connection:
                await connection.execute(select(func.pg_notify(CHANNEL_SETTINGS, session_id)))
        except Exception as exc:
            log.warning(
                "settings change not notified: other nodes take it up by their poll",
                extra={"session_id": session_id, "error": f"{type(exc).__name__}: {exc}"},
            )

    def _on_command(self, session_id: str) -> None:
        if session_id in self.running:
            self.relay.wanted(session_id)

    def _on_listening(self) -> None:
        """The listener (re)connected: notifications may have been missed meanwhile."""
        self.access.on_asked("")
        self.look_again()

    def look_again(self) -> None:
        """After a (re)connect notifications may have been missed: look at everything."""
        self._stale_docs.update(self.applied)
        for session_id in self.running:
            self.relay.wanted(session_id)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def spawn(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- background loops -----------------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            stale, self._stale_docs = self._stale_docs, set()
            for session_id in stale:
                room = self.registry.loaded(session_id)
                if room is not None and session_id in self.applied:
                    try:
                        await self._catch_up(room)
                    except Exception:
                        log.warning("catch-up failed", extra={"session_id": session_id})
                        self._stale_docs.add(session_id)
            for session_id in self.relay.take_wanted():
                self.spawn(self.relay.drain(session_id))

    async def _catch_up(self, room: SessionRoom) -> None:
        session_id = room.session_id
        if session_id in self.applied:
            await catch_up_threads(self.store.engine, room)
        for _ in range(MAX_TAIL_PAGES):
            after = self.applied.get(session_id)
            if after is None:
                return  # run here now: the room has the state
            tail = await read_tail(self.store.engine, session_id, after, TAIL_PAGE)
            changed = self._settings_seen.get(session_id) != tail.settings
            if changed or session_id in self._stale_settings:  # in force before it is sent
                await room.reload_settings()
                self._stale_settings.discard(session_id)
                self._settings_seen[session_id] = tail.settings
            if tail.snapshot is not None or tail.updates:
                await room.writer.document.apply_replicated(tail.snapshot, tail.updates)
            if session_id in self.applied:
                # A REST read catches up too (``follow``): the later of two never goes back.
                self.applied[session_id] = max(self.applied[session_id], tail.last_id)
            if tail.complete:
                return
        self._stale_docs.add(session_id)  # a very long tail: go on next round
