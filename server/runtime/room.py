"""A loaded session: the shell that wires its parts and forwards to them.

Every change to the session is carried out by its one writer (``SessionWriter``,
``server.runtime.session_writer``: judge under the lock, store, commit, broadcast,
notify). Beside it the room holds the members (``Membership``), the sockets
(``SessionSockets``), what the event streams read (``StreamFeed``), the context
(``SessionContext``), the run in flight (``RunSteps``) and the side-threads
(``SideThreads``), with what ties them together: its settings, and its life (loaded,
draining, closed, failed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from functools import partial
from typing import TypeVar

from parley.authz.policy import Do, Subject, decide, may_read
from parley.authz.roles import Capability, RoleTable
from parley.server.http.retry_hint import retry_reason
from parley.server.metrics import Metrics
from parley.server.runtime.active_run import ActiveRun
from parley.server.runtime.back_references import weak_method
from parley.server.runtime.context import SessionContext
from parley.server.runtime.document_search import DocumentSearch
from parley.server.runtime.left_clients import LeftClientWriter
from parley.server.runtime.membership import Membership, member_rates
from parley.server.runtime.room_view import KeptView
from parley.server.runtime.run_steps import RunSteps
from parley.server.runtime.session_writer import SessionWriter
from parley.server.runtime.side_threads import SideThreads
from parley.server.runtime.sockets import SessionSockets, private_frame
from parley.server.runtime.stream_feed import StreamFeed
from parley.server.runtime.stream_turns import StreamTurns
from parley.server.runtime.writer import DocumentWriter
from parley.server.settings import Settings
from parley.server.store.access_rows import Revocation, ToolRow
from parley.server.store.port import SessionStore
from parley.server.store.rows import SessionRow
from parley.server.store.sessions import MemberChange
from parley.server.ws.awareness import AwarenessFanout
from parley.server.ws.connection import Connection
from parley.server.ws.inbound import InboundMeter
from parley.session.closes import CloseCode
from parley.session.commands import Limits
from parley.session.core import MemberUpdated, SessionView, TokenRevoked
from parley.session.errors import NotFound, RateLimited, Unavailable
from parley.session.presence import Presence
from parley.session.queue import OrderingQueue, Policy, QueueLimits
from parley.session.quota import Quotas
from parley.session.ratelimit import Budgets, Cost, Rate, Spend, TokenBucket, answer_bytes
from parley.session.reasons import ReasonCode
from parley.session.recent_acks import RecentAcks
from parley.session.schema import SessionDocument

log = logging.getLogger("parley.room")

# What a change stored between the session's writes returns (``SessionRoom._between_writes``).
Stored = TypeVar("Stored")


# What reading a history entry into a model input's fold costs, charged to the reader's
# read budget as bytes: about 30 us of CPU an entry (3,000 entries: 40-400 ms), so the
# default budget (4 MB/s) lets one member take about a tenth of a core with the builds
# of their previews and side-thread runs (``SessionRoom.charge_build``).
BUILD_BYTES_PER_ENTRY = 1024


class Work(StrEnum):
    """What a session's members make together, each paid from a budget of the session's
    (bytes of work, on each node): many members, each within their own read budget, could
    take the event loop together."""

    PREVIEWS = "previews"  # context previews built and encoded (``GET …/context``)
    STREAMS = "streams"  # events an event stream read and encoded (``server.http.sse``)


def new_id() -> str:
    return uuid.uuid4().hex


class SessionRoom:
    def __init__(
        self,
        session_id: str,
        *,
        store: SessionStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        roles: Callable[[], RoleTable] = RoleTable,
        webhooks: Callable[[], list[ToolRow]] = list,
        model: str | None = None,
        cut_off: ReasonCode = ReasonCode.SERVER_RESTART,
        publish_presence: Callable[[bytes], None] | None = None,
        left_clients: LeftClientWriter | None = None,
        document_search: DocumentSearch | None = None,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.webhooks = webhooks
        self.access = store.access
        # The indexes ``search_documents`` reads: the registry's, shared by its rooms.
        self.document_search = document_search or DocumentSearch(settings.max_search_index_bytes)
        self.model = model  # the session's model; None: the server's default
        self.restricted_replies = "private"
        self.restricted_replies_by: str | None = None  # who chose ``shared``; None: admin
        self._views = KeptView()  # the core's view of the session, until it changes
        # The session's daily token quotas as in force here (``reload_quotas``: on load,
        # and where the session runs when the admin API changes them), so a run's start
        # judges by them without a read. None until loaded.
        self.quotas: Quotas | None = None
        self.limits = Limits(
            max_text_chars=settings.max_prompt_chars, max_frame_chars=settings.max_ws_message_bytes
        )
        # The parts call the room back through weak methods (``back_references``): an
        # unloaded room is freed by reference counting, with no full collection.
        self.sockets = SessionSockets(weak_method(self.subject))
        # What the event streams of this session read in memory (``server.http.sse``).
        self.feed = StreamFeed()
        self.membership = Membership(
            session_id,
            store,
            roles,
            clock,
            self.sockets.everyone,
            self.feed.changed,
            weak_method(self._grants_changed),
            self.sockets.tell,
        )
        lost = partial(weak_method(self.fail), retry_after_s=settings.db_retry_after_s)
        document = DocumentWriter(
            session_id,
            store,
            settings,
            clock,
            self.sockets.broadcast,
            lost,
            self.feed,
            revoked=self.membership.revoking.add,
            replaced=self._views.forget,
        )
        self.context = SessionContext(
            session_id,
            store=store,
            settings=settings,
            metrics=self.metrics,
            clock=clock,
            doc=lambda: document.doc,
            model=weak_method(self._session_model),
            readable_by_all=self.membership.everyone_may_read,
            tools=webhooks,
        )
        self.presence = Presence(settings.max_awareness_state_bytes)
        self.awareness = AwarenessFanout(
            self.presence, self.sockets.broadcast, settings.awareness_flush_ms / 1000
        )
        self.awareness.publish = publish_presence
        # Where the client ids that leave this room's sockets are stored (None: not stored).
        self.left_clients = left_clients
        self.budgets = Budgets(member_rates(settings))
        # What each member's sockets may make this node read (``server.ws.inbound``).
        self._inbound_rate = Rate(settings.inbound_bytes_per_s, settings.inbound_burst_bytes)
        self._inbound: dict[str, InboundMeter] = {}
        # What every member's context previews, and every event stream, make together
        # (``spend_work``).
        self.work = {
            Work.PREVIEWS: TokenBucket(
                Rate(settings.preview_work_bytes_per_s, settings.preview_work_burst_bytes), clock()
            ),
            Work.STREAMS: TokenBucket(
                Rate(settings.stream_work_bytes_per_s, settings.stream_work_burst_bytes), clock()
            ),
        }
        # Whose event streams' replays wait for the stream work, in turn (``server.http.sse``).
        self.stream_turns = StreamTurns()
        self.recent_acks = RecentAcks()
        self.runs = RunSteps(self)
        self.side_threads = SideThreads(self)
        limits = QueueLimits(
            settings.max_pending_per_user,
            settings.max_pending_per_session,
            settings.max_prompts_per_run,
        )
        self.writer = SessionWriter(
            session_id,
            store,
            document,
            OrderingQueue(limits),
            view=weak_method(self._session_view),
            subject=weak_method(self.subject),
            context=self.context,
            sockets=self.sockets,
            runs=self.runs,
            side_threads=self.side_threads,
            revoked=self.membership.put_revoked,
        )
        self.draining = False
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        # What a run found in flight on the next load was cut off by: a restart unless the
        # room was given up for another cause (``fail``) or taken over from another node.
        self.cut_off = cut_off

    def _session_model(self) -> str | None:
        return self.model

    def _session_view(self) -> SessionView:
        return self._views.view(self)

    @property
    def doc(self) -> SessionDocument:
        return self.writer.doc

    @property
    def queue(self) -> OrderingQueue:
        """The prompts waiting and the one running, as committed."""
        return self.writer.queue

    @property
    def last_seq(self) -> int:
        """The highest sequence number stored."""
        return self.writer.last_seq

    @property
    def active_run(self) -> ActiveRun | None:
        return self.runs.active

    @property
    def last_active(self) -> float:
        return self.writer.document.last_active

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- loading and settings -------------------------------------------------------------

    async def load(self, title: str, policy: Policy) -> None:
        """Restore the document from its update log and the queue from the entries table;
        a run that was in flight is cut off (``SessionWriter.recover``). The session's
        settings are put in force first (``use_settings``)."""
        await self.writer.load()
        await self.context.load()
        await self.side_threads.load()
        await self.membership.refresh()
        await self.reload_quotas()
        await self.writer.recover(title, policy, self.cut_off)
        await self.context.warm(self.doc)  # the first build does not read it all at once

    async def restore_presence(self) -> None:
        """Keep for their members the awareness client ids that left this session's sockets
        lately, on any node, before a restart too (``Presence.restore``): as stored, and
        as handed to the store here and not yet written. Before any socket attaches. The
        database refusing it is logged: presence never fails a load."""
        # What waits first: one written while the store is read is then in one or the other
        # (read after the store, it could commit between the two reads and be in neither).
        unwritten = (
            [] if self.left_clients is None else self.left_clients.unwritten(self.session_id)
        )
        try:
            stored = await self.store.left_clients(self.session_id, self.now_ms())
        except Unavailable as exc:
            log.warning(
                "presence: the client ids that left could not be read",
                extra={"session_id": self.session_id, "error": exc.message},
            )
            stored = []
        self.presence.restore([*stored, *unwritten], self.clock())

    def drop_presence(self, connection: Connection, now: float) -> None:
        """Take ``connection``'s awareness clients away (its socket closed, or its member
        may no longer be present): their leaving goes out at the next flush, and to the
        store (``left_clients``)."""
        if self.presence.drop(connection, now) is not None:
            self.awareness.changed()
        left = self.presence.take_left()
        if left and self.left_clients is not None:
            self.left_clients.add(self.session_id, left)

    async def reload_settings(self) -> SessionRow:
        """Put the session's stored settings in force here: its model, its restricted-reply
        policy, its members and revoked tokens. ``NotFound`` if the session was deleted.
        Returns the session's row as read."""
        row = await self.store.get_session(self.session_id)
        if row is None:
            raise NotFound(f"no session {self.session_id!r}")
        self.use_settings(row.model, row.restricted_replies, row.restricted_replies_by)
        await self.membership.refresh()
        self.feed.changed()
        return row

    async def reload_member(self, user_id: str) -> None:
        """Put one member's stored change in force here (``Membership.refresh_member``): a
        change of that member alone, when the rest of the settings are as they were."""
        await self.membership.refresh_member(user_id)
        self.feed.changed()

    async def store_change(
        self, user_id: str, store: Callable[[], Awaitable[MemberChange]]
    ) -> MemberChange:
        """Store a change of member ``user_id`` (``store``, the store's ``change_member``)
        between the session's writes, and hold them as stored from its commit until it is
        in force here (``Membership.pending``; ``reload_member``). A command of theirs
        judged before it commits before it; one judged after is judged by it: refused
        ``forbidden`` once removed, or by their new role (review RG-2: judged by the members
        in memory, a command committed after the change was stored after their
        ``member_left`` or ``member_changed``, shown to everyone). No cost to a command:
        what it is judged by is in memory, as before. (Cluster mode: a change on another
        node is met at the command's commit, ``HolderFence.check``.)"""

        def held(change: MemberChange) -> None:
            if change.decision.allowed and change.before is not None:
                after = None if change.after is None else change.after.as_member()
                self.membership.hold(user_id, after)

        return await self._between_writes(store, held)

    async def store_revocation(
        self, store: Callable[[], Awaitable[Revocation | None]]
    ) -> Revocation | None:
        """Store a client token's revocation (``store``, ``AccessStore.revoke_token``; None:
        no such token) between the session's writes, and hold it revoked from its commit
        until it is in force here (``Membership.revoking``; ``Membership.revoke_token``):
        a command sent with it that was judged before commits before it; one judged after
        is refused ``unauthenticated`` (review of RG-2: a command let in before the
        revocation was stored after its 204)."""

        def held(revocation: Revocation | None) -> None:
            if revocation is not None:
                self.membership.revoking.add(revocation.token.id)

        return await self._between_writes(store, held)

    async def _between_writes(
        self, store: Callable[[], Awaitable[Stored]], held: Callable[[Stored], None]
    ) -> Stored:
        """Run ``store`` (a change the store makes alone) holding the session writer's
        turn (``DocumentWriter.holding``), and ``held`` with what it stored before the
        session's writes go on."""
        async with self.writer.document.holding():
            stored = await store()
            held(stored)
        return stored

    async def reload_quotas(self) -> None:
        """Put the session's stored quotas in force for the runs that start here: where
        the session runs (a read replica starts none, and reads them as it takes over)."""
        self.quotas = await self.store.quotas(self.session_id)

    def use_settings(
        self, model: str | None, restricted_replies: str, restricted_replies_by: str | None = None
    ) -> None:
        self.model = model
        self.restricted_replies = restricted_replies
        self.restricted_replies_by = restricted_replies_by

    def taken_over(self) -> None:
        """Loaded after another node ran the session: a run found in flight was cut off by
        the failover (unless this room was given up for another cause)."""
        if self.cut_off is ReasonCode.SERVER_RESTART:
            self.cut_off = ReasonCode.FAILOVER
        self.writer.sent.forget()

    def subject(self, user_id: str) -> Subject | None:
        """The member as of now (role table and grants read live), or None."""
        return self.membership.subject(user_id)

    async def _grants_changed(self, event: MemberUpdated | TokenRevoked) -> None:
        """A member's grants changed (``Membership``, on every node that has the session
        loaded): what they may no longer show is taken down, and the core judges their
        prompts and side-threads again."""
        self.take_down_presence(event.user_id)
        await self.writer.stop_prompts(event)

    def take_down_presence(self, user_id: str) -> None:
        """Take down the awareness states of ``user_id``'s sockets here if they may no
        longer be present: their peers are told they left, as when a socket closes (the
        other nodes hear it as any leave). A member who went silent kept showing their
        state to every newcomer for as long as their socket lived (review)."""
        if not self.sockets.count_of.get(user_id):
            return  # no socket of theirs (a load puts every member in force)
        if decide(self.subject(user_id), Do(Capability.BE_PRESENT)).allowed:
            return
        now = self.clock()
        for connection in [c for c in self.sockets.connections if c.user_id == user_id]:
            self.drop_presence(connection, now)  # their client ids stay theirs, stored

    def greet_private(self, connection: Connection) -> None:
        """Send a socket that speaks commands the restricted text its member may read now
        (``restricted`` frames, as each is sent when it is stored), newest first, within
        the member's read budget and half the socket's backlog limit: one that was away
        when a restricted reply was stored, or opened since, had only the placeholder
        (review). Where the session runs (a read replica's restricted text may lag)."""
        fence = self.writer.document.fence
        if fence is not None and not fence.holds():
            return
        subject = self.subject(connection.user_id)
        doc = self.doc
        readable = []
        for item in self.context.private.values():
            # The reader judged first: an entry is read from the document once, and only
            # for what they may read.
            if not may_read(subject, item.restriction) or not doc.has_entry(item.entry_id):
                continue
            entry = doc.entry(item.entry_id)
            if entry.content != item.text:  # else shown as it is already
                readable.append((entry.seq, item))
        room_for = self.settings.send_buffer_max_bytes // 2
        greeted = 0
        for _, item in sorted(readable, key=lambda pair: pair[0], reverse=True):
            frame = private_frame(item)
            size = answer_bytes([frame])
            greeted += size
            if greeted > room_for or not self.spend_read(connection.user_id, size):
                return
            connection.send_json(frame)

    def syncs_spent(self, user_id: str, now: float) -> bool:
        """Whether ``user_id``'s sockets together have spent their sync budget (the bytes
        of the document sent in answer to their syncs)."""
        return self.budgets.spent(user_id, Spend.SYNC_BYTES, now)

    def upgrade_refusal(self, user_id: str, now: float) -> RateLimited | None:
        """Why a new socket of ``user_id`` (the session's or a side-thread's) is refused at
        its upgrade, with when to come back; else None, and one of the member's socket
        opens spent. Past their sync budget its first sync would be refused, and a stock
        client waits for it for good; past their opens, each open costs admission and may
        read a side-thread's document from the store (review: one member opened and
        closed 2,200 sockets in 12 s, and the others' writes waited out their budget)."""
        budgets = self.budgets
        if self.syncs_spent(user_id, now):
            why = "over the sync budget (bytes of the document); slow down"
            return RateLimited(why, budgets.wait_s(user_id, Spend.SYNC_BYTES, now))
        if not budgets.allow(user_id, Cost(Spend.SOCKET_OPENS, 1), now):
            why = "too many sockets opened; slow down"
            return RateLimited(why, budgets.wait_s(user_id, Spend.SOCKET_OPENS, now))
        return None

    def sync_refused(self, connection: Connection, now: float) -> bool:
        """Before a sync is answered: True when its member's sockets have spent their sync
        budget. A socket's first sync is refused by closing it to try again later (a stock
        client asks once a connection: refused with an error, it would wait for good); a
        synced socket's resync is dropped unanswered, as one past its socket's count is,
        and the socket stays: it is sent every change as it commits (review RE-2: a stock
        provider's ``resyncInterval``, synced and idle, was closed 1013 because its
        member's other tabs had spent the budget, and then refused at each reconnect)."""
        if not self.syncs_spent(connection.user_id, now):
            return False
        if not connection.answered_sync:
            connection.close(CloseCode.TRY_AGAIN, "over the sync budget; reconnect later")
        return True

    def charge_sync(
        self, user_id: str, state_vector: bytes, answer: list[bytes], now: float
    ) -> None:
        """A sync asked with ``state_vector`` was answered with ``answer``: the member's
        sockets pay the bytes of both (a 4 MB vector, read or not, is no count of 1;
        review)."""
        self.budgets.spend(
            user_id, Cost(Spend.SYNC_BYTES, len(state_vector) + sum(map(len, answer))), now
        )

    def spend_read(self, user_id: str | None, size: int) -> bool:
        """Spend ``size`` bytes of a member's read budget (one larger than the budget's
        burst takes all of it); False past it. The admin key's reads spend none."""
        if user_id is None:
            return True
        return self.budgets.allow(user_id, self._read_cost(size), self.clock())

    def charge_read(self, user_id: str | None, size: int) -> None:
        """A member's read was answered and cost ``size`` bytes: they pay them, whether or
        not they are there (``TokenBucket.spend``: their next reads wait until paid)."""
        if user_id is not None:
            self.budgets.spend(user_id, self._read_cost(size), self.clock())

    def settle_read(self, user_id: str | None, spent: int, answer: Sequence[str | bytes]) -> None:
        """A member's read, ``spent`` bytes of it paid before it was made (``spend_read``:
        what it was known or estimated to cost, so a refused read costs nothing), was
        answered with ``answer``: the rest of its bytes as sent (``answer_bytes``) is paid
        (``charge_read``), or what was paid past them given back (an upper estimate: a
        first list of documents). Every read of an answer made anew is paid so, over REST
        and on a socket alike."""
        if user_id is None:
            return
        size = answer_bytes(answer)
        taken = self._read_cost(spent)
        if size < taken.amount:
            over = Cost(Spend.READ_BYTES, taken.amount - size)
            self.budgets.give_back(user_id, over, self.clock())
        else:
            self.charge_read(user_id, max(size - spent, 0))

    def charge_build(self, user_id: str | None, entries: int, answer: int = 0) -> int:
        """A model input's build asked by ``user_id`` (a context preview, a side-thread
        run) read ``entries`` history entries anew and made an answer of ``answer`` bytes:
        they pay ``BUILD_BYTES_PER_ENTRY`` an entry and the answer's bytes from their read
        budget (``charge_read``: one in debt is refused until it is paid). Returns the
        bytes charged."""
        cost = BUILD_BYTES_PER_ENTRY * entries + answer
        self.charge_read(user_id, cost)
        return cost

    def owed_read_s(self, user_id: str) -> float:
        """Seconds until a member's read budget has room again (0: it has now)."""
        return self.read_wait_s(user_id, 1)

    def preview_work_refusal(self, user_id: str | None) -> RateLimited | None:
        """Why a preview of ``user_id`` to be made anew is refused now, else None: their
        share of the session's preview work owes (``spend_preview_work``: one member's loop
        of previews left the others none, review RG), or the session's does (many
        members' previews, each within their own read budget, took the event loop
        together: review B2-2, ten viewers held every client's requests at 0.5-0.8 s).
        The admin key's are paid, never refused."""
        if user_id is None:
            return None
        share_s = self.budgets.wait_s(user_id, Spend.PREVIEW_WORK, self.clock())
        if share_s > 0:
            why = "your context previews are over your share of this session's budget"
            return RateLimited(f"{why}; ask again later", share_s)
        wait_s = self.work_wait_s(Work.PREVIEWS)
        if wait_s <= 0:
            return None
        why = "this session's context previews are over their budget; ask again later"
        return RateLimited(why, wait_s)

    def spend_preview_work(self, user_id: str | None, size: int) -> None:
        """A preview for ``user_id`` built and encoded ``size`` bytes of work: their share
        pays it (into debt, at most its burst: ``TokenBucket.spend``), and the session
        what the share took, so one member's preview takes at most twice their share's
        burst of the session's and leaves the rest to the others. The admin key's: the
        session pays all of it."""
        now = self.clock()
        taken = float(size)
        if user_id is not None and Spend.PREVIEW_WORK in self.budgets.rates:
            share = self.budgets.bucket(user_id, Spend.PREVIEW_WORK, now)
            before = share.left(now)
            share.spend(now, size)
            taken = before - share.left(now)
        self.work[Work.PREVIEWS].spend(now, taken)

    def work_wait_s(self, work: Work) -> float:
        """Seconds until the session has paid back what its ``work`` owes (0: nothing)."""
        return self.work[work].wait_s(self.clock())

    def spend_work(self, work: Work, size: int) -> None:
        """``size`` bytes of ``work`` were done (built, encoded): the session pays them, whether
        or not its budget had them (``TokenBucket.spend``: the next wait until paid)."""
        self.work[work].spend(self.clock(), size)

    def read_wait_s(self, user_id: str, size: int) -> float:
        """Seconds until a member's read of ``size`` bytes would be allowed."""
        if Spend.READ_BYTES not in self.budgets.rates:
            return 0.0
        now = self.clock()
        bucket = self.budgets.bucket(user_id, Spend.READ_BYTES, now)
        return bucket.wait_s(now, self._read_cost(size).amount)

    def _read_cost(self, size: int) -> Cost:
        rate = self.budgets.rates.get(Spend.READ_BYTES)
        return Cost(Spend.READ_BYTES, size if rate is None else min(size, int(rate.burst)))

    def inbound(self, user_id: str) -> InboundMeter:
        """The budget of the bytes ``user_id``'s sockets to this session (its own and its
        side-threads', on this node) make the server read, shared by all of them."""
        meter = self._inbound.get(user_id)
        if meter is None:
            clock = asyncio.get_running_loop().time  # the protocols' (their pings' times)
            meter = InboundMeter(self._inbound_rate, clock, self.metrics.inbound_pauses.inc)
            self._inbound[user_id] = meter
        return meter

    def user_bucket(self, user_id: str) -> TokenBucket:
        """One command budget per user across all their sockets in this session."""
        return self.budgets.bucket(user_id, Spend.COMMANDS, self.clock())

    def spend_command(self, user_id: str, why: str) -> None:
        """Spend one of ``user_id``'s command budget; ``RateLimited`` (``why``) past it,
        with when one is there again (``Retry-After`` over REST; review RP-2)."""
        now, bucket = self.clock(), self.user_bucket(user_id)
        if not bucket.allow(now):
            raise RateLimited(why, bucket.wait_s(now))

    # -- sockets and the room's life -------------------------------------------------------

    @property
    def connections(self) -> set[Connection]:
        return self.sockets.connections

    def drain(self) -> None:
        """The server shuts down: no new run starts here; the event streams end and the
        sockets close (1001)."""
        self.draining = True
        self.feed.changed()
        self.sockets.close_all(CloseCode.GOING_AWAY, "server shutting down")

    def close(self, *, deleted: bool = False, reason: str = "") -> None:
        """Unloaded: the runner stops at its next turn; the event streams end (their
        readers resume with their last id on the room loaded next, unless ``deleted``)."""
        self.closed = True
        self._views.forget()
        self.writer.document.stop()
        if deleted:
            self.feed.end("not_found", "the session was deleted")
        else:
            self.feed.end("unavailable", f"{reason or 'session unloaded'}; resume with the last id")

    def fail(
        self,
        reason: str,
        cause: ReasonCode = ReasonCode.STORAGE_ERROR,
        retry_after_s: float | None = None,
    ) -> None:
        """Give the room up (its memory may hold an un-stored change): no write is made
        here any more, the next use reloads it from the store (a run it had in flight is
        marked with ``cause`` then), and its sockets are closed with 1013 so clients
        reconnect (``retry_after_s``: a hint, in the reason, to wait that long first) --
        once the writes waiting here now have answered their commands (``unavailable``),
        so those answers go out first."""
        self.closed = True
        self.writer.document.failed = reason
        self.cut_off = cause
        self.runs.wake()
        self.feed.end("unavailable", f"{reason}; resume with the last id")
        if retry_after_s is not None:
            reason = retry_reason(reason, retry_after_s)
        self._closing = asyncio.get_running_loop().create_task(self._close_after_writes(reason))

    async def _close_after_writes(self, reason: str) -> None:
        async with self.writer.document.lock:  # behind every write that waits for it now
            self.sockets.close_all(CloseCode.TRY_AGAIN, reason)

    def is_idle(self) -> bool:
        sockets = any(True for _ in self.sockets.everyone())
        return not (sockets or self.feed.readers or len(self.queue) or self.active_run)
