"""Which sessions are loaded in this process: load on demand, recover at start, unload idle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from parley.authz.policy import Subject
from parley.authz.roles import RoleTable
from parley.authz.tokens import ClientClaims
from parley.server.cluster.lease import NotHolder
from parley.server.metrics import Metrics
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.commands import handle_frame
from parley.server.runtime.document_search import DocumentSearch
from parley.server.runtime.left_clients import LeftClientWriter
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.runtime.session_writes import SETTINGS_WRITE, apply_session_write
from parley.server.settings import Settings
from parley.server.store.access_rows import ToolRow, access_digest
from parley.server.store.port import SessionStore
from parley.server.ws.connection import CLOSE_WAIT_S
from parley.session.closes import CloseCode
from parley.session.errors import NotFound, ShuttingDown, Unavailable
from parley.session.lifecycle import PromptStatus
from parley.session.model import ModelProvider
from parley.session.queue import Policy
from parley.session.reasons import Ending, ReasonCode
from parley.session.schema import SessionDocument

if TYPE_CHECKING:
    from parley.server.cluster.node import ClusterNode

log = logging.getLogger("parley.rooms")

SHUT_DOWN = Ending(ReasonCode.SERVER_SHUTDOWN, "the server shut down while this prompt ran")


class RoomRegistry:
    def __init__(
        self,
        store: SessionStore,
        settings: Settings,
        provider: ModelProvider,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.settings = settings
        self.provider = provider
        self.clock = clock
        self.roles = RoleTable()
        # Reads of the roles begun (``load_access``), and which of them gave ``roles``.
        self._roles_reads = 0
        self._roles_read = 0
        # Cluster mode: the roles as a fence read them stored, not yet in force here, and
        # how many reads had begun then (``hold_roles``).
        self._stored_roles: tuple[RoleTable, int] | None = None
        self.webhooks: list[ToolRow] = []
        self._access_digest = access_digest(self.roles.custom, self.webhooks)
        self._rooms: dict[str, tuple[SessionRoom, SessionRunner]] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        # Rooms taken out of ``_rooms`` whose unload has not ended: set when it has.
        self._unloading: dict[str, asyncio.Event] = {}
        self._cut_off: dict[str, ReasonCode] = {}  # sessions given up and not loaded since
        self._reaper: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[None] | None = None  # sessions refused at start
        # Cluster mode: the node decides whether a room runs here or is a read replica.
        self.cluster: ClusterNode | None = None
        # Shutting down (``drain``): no session is loaded, nor taken over, from then on.
        self.draining = False
        # One for the node's rooms: a room loaded again finds its documents indexed.
        self.document_search = DocumentSearch(settings.max_search_index_bytes)
        self.left_clients = LeftClientWriter(
            store,
            clock,
            delay_s=settings.presence_write_ms / 1000,
            retry_s=settings.db_retry_after_s,
            max_waiting=settings.presence_write_max_waiting,
        )

    async def get(self, session_id: str) -> SessionRoom:
        """The loaded room of a session; raises ``NotFound`` for an unknown session."""
        loaded = self._rooms.get(session_id)
        if loaded is not None and not loaded[0].closed:
            return loaded[0]
        lock = self._loading.setdefault(session_id, asyncio.Lock())
        async with lock:
            loaded = self._rooms.get(session_id)
            if loaded is not None:
                if not loaded[0].closed:
                    return loaded[0]
                # Given up (after a store failure, say): reload it. Why it was given up is
                # what ended a run it had in flight, until a load succeeds and marks it.
                self._cut_off[session_id] = loaded[0].cut_off
                await self.unload(session_id)
            await self._after_unload(session_id)
            if self.draining:
                raise ShuttingDown("the server is shutting down")
            row = await self.store.get_session(session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            publish = None
            if self.cluster is not None:
                publish = functools.partial(self.cluster.presence.publish, session_id)
            room = SessionRoom(
                session_id,
                store=self.store,
                settings=self.settings,
                clock=self.clock,
                metrics=self.metrics,
                roles=self.judged_roles,
                webhooks=lambda: self.webhooks,
                model=row.model,
                cut_off=self._cut_off.get(session_id, ReasonCode.SERVER_RESTART),
                publish_presence=publish,
                left_clients=self.left_clients,
                document_search=self.document_search,
            )
            await room.restore_presence()  # before its runner starts, or a socket attaches
            runner = SessionRunner(room, self.provider, self.settings.run_timeout_s)
            room.use_settings(row.model, row.restricted_replies, row.restricted_replies_by)
            if self.cluster is not None:
                await self.cluster.open(room, runner, row.title, Policy(row.policy))
            else:
                await room.load(row.title, Policy(row.policy))
                runner.start()
            self._rooms[session_id] = (room, runner)
            self._cut_off.pop(session_id, None)
            return room

    async def current(self, session_id: str, *, kept: bool = False) -> SessionRoom:
        """The loaded room, with what a REST call judges and reads as committed whichever
        node runs the session (cluster mode: a read replica catches up first; ``kept``:
        also the restricted text and the summaries, for the routes that read them)."""
        room = await self.get(session_id)
        if self.cluster is not None:
            try:
                await self.cluster.follow(room, kept=kept)
            except NotHolder:  # this node ran it, stalled and lost it: a replica now
                room = await self.cluster.reopened(room)
                await self.cluster.follow(room, kept=kept)
        return room

    async def committed(
        self, session_id: str, *, kept: bool = False
    ) -> tuple[SessionRoom, SessionDocument]:
        """``current`` (``kept``: as there), and its document as committed
        (``DocumentWriter.committed_document``: the node that runs the session may be
        writing it): the one door of a REST read of the document, or of an answer built
        from it; read it before the next await. A read then never shows what a failed
        write takes back, and one made on any node after it never answers older."""
        room = await self.current(session_id, kept=kept)
        return room, await room.writer.document.committed_document()

    async def command(
        self, room: SessionRoom, user_id: str, frame: str, token: ClientClaims | None = None
    ) -> str:
        """The one door for a member's command frame, from a socket or an HTTP call (sent
        with the client token of claims ``token``): carried out where the session runs (cluster
        mode: forwarded there when another node runs it); returns its one reply, the ack
        or the error."""
        if self.cluster is not None:
            return await self.cluster.command(room, user_id, frame, token)
        return await handle_frame(room, user_id, frame, token)

    async def runs_here(self, room: SessionRoom) -> bool:
        """True when this node runs the session (always, out of cluster mode)."""
        return self.cluster is None or await self.cluster.runs_here(room)

    async def change(self, room: SessionRoom, write: dict[str, Any]) -> dict[str, Any]:
        """The one door for a REST change of a session (see ``server.runtime.session_writes``): in
        force on the node that runs the session when this returns."""
        write = {"id": "rest", **write}
        if self.cluster is not None:
            return await self.cluster.write_session(room, write)
        return await apply_session_write(room, write)

    async def charge(self, room: SessionRoom, user_id: str, why: str) -> None:
        """Cluster mode: spend ``user_id``'s command budget where the session runs, when
        that is another node (``RateLimited`` past it). One node: nothing more to do."""
        if self.cluster is not None:
            await self.cluster.charge(room, user_id, why)

    async def settings_changed(self, room: SessionRoom, member: str | None = None) -> None:
        """A REST call stored a session's settings or members (``member``: that member's
        change alone, read back alone): put them in force (cluster mode: where the session
        runs before this returns, and every other node told)."""
        await self.change(room, {"op": SETTINGS_WRITE, "member": member})
        if self.cluster is not None:
            await self.cluster.settings_changed(room.session_id)

    async def access_changed(self) -> None:
        """A REST call stored roles or tools: put them in force here and, in cluster mode,
        on every node that runs a session, before the call returns."""
        await self.load_access()
        if self.cluster is not None:
            await self.cluster.confirm_access()

    async def current_access(self) -> None:
        """Before a REST read of roles or tools: in cluster mode another node may have
        changed them a moment ago (it waited only for the nodes that run sessions)."""
        if self.cluster is not None:
            await self.load_access()

    async def reader(self, room: SessionRoom, user_id: str) -> Subject | None:
        """Who ``user_id`` is (None: no member), for a read of restricted text: in memory
        on one server; in cluster mode as stored, since the node that runs the session may
        not have a change stored on another node in force yet, and text stored after it
        is not theirs to read if it took their right (review RH-3)."""
        if self.cluster is None:
            return room.subject(user_id)
        row = await self.store.get_member(room.session_id, user_id)
        return None if row is None else Subject.of(row.as_member(), self.judged_roles())

    def judged_roles(self) -> RoleTable:
        """The role table what a room judges goes by: the one in force here, or in cluster
        mode the roles as stored that a fence read since, until a read begun after that
        puts them in force (``hold_roles``)."""
        held = self._stored_roles
        if held is not None and held[1] >= self._roles_read:
            return held[0]
        return self.roles

    def hold_roles(self, custom: Mapping[str, frozenset[str]]) -> None:
        """Cluster mode: a fence read the custom roles as stored (``custom``), changed on
        another node (counted on its lease row: ``count_role_change``) and maybe not in
        force here yet. What every room here judges goes by them from now (who may read
        what a reply drew on, what a run may use), until a read of the roles begun after
        this one puts what the store holds in force (``load_access``): a read begun before
        may not have seen the change."""
        table = RoleTable(dict(custom))
        if table == self.judged_roles():
            return
        self._stored_roles = (table, self._roles_reads)

    async def load_access(self) -> str:
        """Read the custom roles and tools again (at start, and after one is changed); if
        they changed, a member whose role no longer lets them read a session is
        disconnected, and one whose role no longer lets them prompt loses their runs.
        Returns the digest of what is now in force."""
        access = self.store.access
        before = self.roles.custom
        self._roles_reads += 1
        begun = self._roles_reads
        self.roles = RoleTable(await access.list_roles())
        self._roles_read = begun
        self.webhooks = await access.list_tools()
        digest = access_digest(self.roles.custom, self.webhooks)
        if digest != self._access_digest:
            self._access_digest = digest
            after = self.roles.custom
            # A tool changes nobody's rights; an edited role only its members'.
            changed = frozenset(
                n for n in before.keys() | after.keys() if before.get(n) != after.get(n)
            )
            if changed:
                for room, _ in list(self._rooms.values()):
                    await room.membership.roles_changed(changed)
        return digest

    def queue_depth(self) -> int:
        return sum(len(room.queue) for room, _ in self._rooms.values())

    async def drain(self, grace_s: float) -> None:
        """Shut down gently: take no new work, let running replies finish for ``grace_s``,
        then stop the rest (marked ``failed``, the reply ``interrupted``, its text kept):
        the session's runs and the side-threads' alike (review rv37 F2: a side-thread's
        was only cancelled, and failed ``server_restart`` at the next start, its text
        dropped). Waiting prompts stay queued in the database and run after the next
        start. No session is loaded from then on (``ShuttingDown``); in a cluster none is
        taken over either: a healthy node takes those nobody runs
        (``ClusterNode.runs_here``). The runs it waits for and stops include those of
        the writes under way as it began (a side-thread prompt judged before it, acked
        after). Returns once the sockets it closed have been sent their close frame (or
        ``CLOSE_WAIT_S`` passed)."""
        self.draining = True
        rooms = [room for room, _ in self._rooms.values()]
        closing = [connection for room in rooms for connection in room.sockets.everyone()]
        for room in rooms:
            room.drain()
        deadline = self.clock() + grace_s
        with contextlib.suppress(TimeoutError):  # a write stuck on the database
            async with asyncio.timeout(max(grace_s, 5.0)):
                for room in rooms:
                    await _writes_done(room)
        while running := [run for room in rooms for run in _in_flight(room)]:
            remaining = deadline - self.clock()
            if remaining <= 0:
                for run in running:
                    run.stop(SHUT_DOWN)
                remaining = 5.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await running[0].finished.wait()
        # Their close frames (1001) go out before the server stops: it would close the
        # sockets still open itself, with 1012 (found with a side-thread's socket).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await asyncio.gather(*(connection.wait_closed() for connection in closing))

    def loaded(self, session_id: str) -> SessionRoom | None:
        loaded = self._rooms.get(session_id)
        return None if loaded is None else loaded[0]

    def __len__(self) -> int:
        return len(self._rooms)

    async def recover(self) -> int:
        """Load every session that has prompts waiting or cut off, so their queues resume;
        the number loaded. One the database refuses now (another process holds its lock,
        say) is tried again in the background, and the server serves meanwhile (review: a
        lock held at start after a crash made SQLite's start fail and PostgreSQL's hang,
        every session down with it)."""
        try:
            pending = await self._with_prompts_pending()
        except Unavailable:
            pending = None
        left = await self._recover_these(pending or [])
        if pending is None or left:
            self._recovering = asyncio.create_task(
                self._recover_later(left if pending is not None else None), name="recovery"
            )
        return len(pending or []) - len(left)

    async def _with_prompts_pending(self) -> list[str]:
        """The sessions with prompts waiting or cut off (running when the server stopped)."""
        return await self.store.sessions_with_status(
            [PromptStatus.QUEUED.value, PromptStatus.RUNNING.value]
        )

    async def _recover_these(self, session_ids: list[str]) -> list[str]:
        """Load each of ``session_ids``; those the database refused now."""
        left = []
        for session_id in session_ids:
            try:
                await self.get(session_id)
            except NotFound:
                continue  # deleted meanwhile
            except Unavailable:
                left.append(session_id)
        return left

    async def _recover_later(self, left: list[str] | None) -> None:
        """Try ``left`` again (None: find them first) until every one is loaded."""
        while True:
            await asyncio.sleep(self.settings.db_retry_after_s)
            if left is None:
                try:
                    left = await self._with_prompts_pending()
                except Unavailable:
                    continue
            left = await self._recover_these(left)
            if not left:
                log.info("resumed the sessions the database had refused at start")
                return

    async def unload(
        self, session_id: str, close_code: CloseCode = CloseCode.GOING_AWAY, reason: str = ""
    ) -> None:
        loaded = self._rooms.pop(session_id, None)
        if loaded is None:
            return
        room, runner = loaded
        unloaded = self._unloading[session_id] = asyncio.Event()
        try:
            room.close(deleted=close_code is CloseCode.NOT_FOUND, reason=reason)
            await runner.stop()
            if self.cluster is not None:
                await self.cluster.close(room)
            for connection in list(room.connections):  # they leave: their client ids are stored
                room.drop_presence(connection, self.clock())
            room.sockets.close_all(close_code, reason)
        finally:
            unloaded.set()
            if self._unloading.get(session_id) is unloaded:
                del self._unloading[session_id]

    async def _after_unload(self, session_id: str) -> None:
        """Once the unload of the session's last room under way now (if any) has ended: a
        room loaded meanwhile had its cluster state (what it follows, its runner, its
        lease) cleared by the end of the unload, which is the session's, not the room's
        (a socket closed 1013 as its node lost the session came back at once, while the
        runner stopped, and its new read replica followed nothing; found chasing the
        rename case of ``test_lost_lease_commands``, which failed once under load)."""
        unloading = self._unloading.get(session_id)
        if unloading is not None:
            await unloading.wait()

    async def forget_session(self, session_id: str) -> None:
        self._cut_off.pop(session_id, None)
        await self.unload(session_id, CloseCode.NOT_FOUND, "session deleted")

    def start_reaper(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="room-reaper")

    async def _reap_forever(self) -> None:
        interval = max(self.settings.room_idle_unload_s / 2, 0.5)
        while True:
            await asyncio.sleep(interval)
            await self._reap_idle()

    async def _reap_idle(self) -> None:
        """Unload the rooms idle for longer than ``room_idle_unload_s``. A pass of its own,
        so the last room it looked at is not held, with its document, by a local of the
        reaper's loop until the next pass. A room unloaded is freed by reference counting
        as its last holder lets go (its parts hold it weakly: ``back_references``), with no
        full collection, which would walk every room still loaded (review RN-5)."""
        now = self.clock()
        for session_id, (room, _) in list(self._rooms.items()):
            if room.is_idle() and now - room.last_active > self.settings.room_idle_unload_s:
                await self.unload(session_id)

    async def close(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovering
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session_id in list(self._rooms):
            await self.unload(session_id, CloseCode.GOING_AWAY, "server shutting down")
        await self.left_clients.close(self.settings.shutdown_grace_s)


def _in_flight(room: SessionRoom) -> list[ActiveRun]:
    """The runs of ``room`` not finished yet: its session's and its side-threads'."""
    runs = [room.active_run, *room.side_threads.active.values()]
    return [run for run in runs if run is not None and not run.finished.is_set()]


async def _writes_done(room: SessionRoom) -> None:
    """Once the writes of ``room`` under way now are done: one judged before the drain
    (a side-thread prompt, say) is acked, its run in flight (``ThreadRuns.start``, called
    after the commit before the writer's task awaits anything), and those waiting for
    their turn are judged draining (``ShuttingDown``)."""
    with contextlib.suppress(Unavailable):  # SQLite: past the lock budget (none done)
        async with room.writer.document.holding():
            pass
