"""Awareness (presence) bookkeeping for one session, sans I/O.

Clients announce awareness states (who is here, who is typing) under their Yjs client ids.
The server relays them to everyone, the sender included (stock clients close a socket that
stays silent for 30 s; the echo keeps it alive), stamps each state with the authenticated
user id under ``parley``, and announces a client's departure when its socket closes.
What is relayed is coalesced: each client's latest state waits until ``flush()``, so
however many updates a client sends, listeners get one state per client per flush.
A socket may only speak for client ids it introduced; states it sends for other sockets'
clients (stock y-websocket clients echo what they receive) are ignored. It introduces its
clients in the first update that shows any: once it speaks for one, a state it sends for a
new client id is a relay (of another tab's, over y-websocket's BroadcastChannel) and is
ignored too, so it is shown by its own socket, stamped as its own member.

In cluster mode the states another node relays are recorded too (``apply_remote``), owned
by that node: a socket here may not speak for a client of a socket there, nor the other way
round, so the rule holds on every node. A remote client not renewed for
``REMOTE_STALE_S`` (its node gone, say) may be taken by a socket here: Yjs clients renew
every 15 s and keep their client id when they reconnect to another node.

A client whose socket closed stays its member's for ``KEEP_LEFT_S`` (stock clients come
back with the same client id): until then no other member may introduce it, which would
leave the member unable to show themselves when they reconnect, and have the server send
them another's state under their own id (which Yjs takes as its local state). At most
``MAX_LEFT_PER_MEMBER`` of each member's are kept, so no member's churn pushes out the
others'. The server stores them (``take_left``: what left since it last took them) and
gives a room it loads those it stored (``restore``), so an unload, a restart or another
node loading the session keeps them too; presence itself is not stored.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from parley.session.errors import Forbidden, TooLarge
from parley.session.yprotocol import (
    MAX_CLOCK,
    MAX_SAFE_INTEGER,
    AwarenessState,
    ClockOutOfRange,
    awareness_state_json,
    decode_awareness_update,
    encode_awareness_state,
    encode_awareness_update,
    join_awareness_states,
)

MAX_CLIENTS_PER_SOCKET = 8
# y-protocols' outdated timeout: a state not renewed for this long is gone for its peers.
REMOTE_STALE_S = 30.0
# How long a client id whose socket closed stays its member's (across unloads and restarts:
# the server stores it, ``restore``): a stock client keeps its id for as long as its page
# is open, a laptop's night included (review: held 30 s, then ten minutes, another member
# took a stock client's id, and the server sent the client that member's state as its own
# when it came back). The counts below bound what is kept, not the time.
KEEP_LEFT_S = 24 * 3600.0
MAX_LEFT_KEPT = 10_000  # client ids kept for their members at once, the oldest go first
# Of one member's: their oldest go first (review: 10,100 fresh ids through short-lived
# sockets pushed every other member's kept id out).
MAX_LEFT_PER_MEMBER = 64


@dataclass(frozen=True, slots=True)
class RemoteNode:
    """The owner of the clients another node's sockets introduced."""

    node_id: str


@dataclass(frozen=True, slots=True)
class LeftClient:
    """A client id whose socket closed: whose it was (``user_id``), when it left (``at``,
    seconds) and the clock its leaving was told at."""

    client_id: int
    user_id: str
    at: float
    clock: int


@dataclass(slots=True)
class _Client:
    owner: Hashable
    clock: int
    state: dict[str, Any] | None
    user_id: str = ""  # whose it is: the socket's member, or the remote state's stamp
    seen: float = 0.0  # when a remote client was last renewed (local ones: unused)


class Presence:
    def __init__(self, max_state_bytes: int = 16 * 1024) -> None:
        self.max_state_bytes = max_state_bytes
        self._clients: dict[int, _Client] = {}
        self._pending: dict[int, AwarenessState] = {}  # to relay at the next flush
        # Client ids that left lately -> (their member, when, the clock their leaving was
        # told at), oldest first.
        self._left: dict[int, tuple[str, float, int]] = {}
        self._left_of: dict[str, dict[int, None]] = {}  # each member's, oldest first
        self._to_store: list[LeftClient] = []  # this node's sockets' leavings (``take_left``)
        # The bytes of each member's states in the last flush: a stock client echoes the
        # states of others only, so a member's own states earn none of their sockets echo
        # credit (``server.ws.admission``; review: a member's two sockets earned each other
        # credit, and showed 15 MB/s of new states past the presence budget).
        self.flushed_by: dict[str, int] = {}
        # Per socket: its clients come back behind the leaving told of them (``take_behind``).
        self._behind: dict[Hashable, list[AwarenessState]] = {}
        self._behind_elsewhere: list[AwarenessState] = []  # (``take_behind_elsewhere``)

    def apply(
        self,
        owner: Hashable,
        user_id: str,
        update: bytes,
        display_name: str | None = None,
        now: float = 0.0,
        echo_bytes: int = 0,
    ) -> bytes:
        """Record an awareness update from ``owner`` for the next flush; return what of it
        is relayed (an update of no states when nothing is). Each state is stamped with
        who sent it, ``user_id`` and the member's ``display_name`` (when they have one), so
        nobody can show themselves as someone else. ``now`` dates remote clients' staleness;
        ``echo_bytes`` is what of ``update`` its socket paid as echoes (``max_update_bytes``)."""
        relayed: list[AwarenessState] = []
        new_clients = 0
        for item, known in self._own(owner, user_id, update, now, echo_bytes):  # checked first
            if known is None:
                new_clients += 1
                if self.owned_by(owner) + new_clients > MAX_CLIENTS_PER_SOCKET:
                    raise Forbidden("too many awareness clients on one socket")
            state = item.state
            if state is not None:
                stamp = {"user_id": user_id}
                if display_name:
                    stamp["display_name"] = display_name
                state = {**state, "parley": stamp}
                # Measured as relayed, not as ``json.dumps`` spaces it out (review: a
                # 12,007-byte state was refused under a limit of 16,384).
                if len(awareness_state_json(state)) > self.max_state_bytes:
                    raise TooLarge(
                        f"awareness state exceeds {self.max_state_bytes} bytes as relayed"
                    )
            if known is not None and item.clock < known.clock:
                continue  # stale
            relayed.append(AwarenessState(item.client_id, item.clock, state))
        for item in relayed:
            self._clients[item.client_id] = _Client(owner, item.clock, item.state, user_id)
            self._pending[item.client_id] = item
            left = self._pop_left(item.client_id)
            if left is not None and item.state is not None and item.clock <= left[2]:
                # Its peers were told it left at this clock or a later one, and ignore it
                # until it passes that (30 s of renewals: review). Told it left, a Yjs client
                # raises its clock past it and shows itself again at once.
                told = AwarenessState(item.client_id, left[2], None)
                self._behind.setdefault(owner, []).append(told)
                # Its peers hold that clock for it: what it shows next comes from there
                # (review: told left at the top clock, its raise past it was refused).
                self._clients[item.client_id].clock = left[2]
        return encode_awareness_update(relayed)

    def take_behind(self, owner: Hashable) -> bytes | None:
        """For ``owner``'s socket alone: the update that has its clients, come back under
        a clock their leaving passed, raise it (None: no such client)."""
        behind = self._behind.pop(owner, None)
        return encode_awareness_update(behind) if behind else None

    def max_update_bytes(self, echo_bytes: int = 0) -> int:
        """The largest update a socket may send, judged before it is decoded: the states it
        may show of its own (``MAX_CLIENTS_PER_SOCKET`` of ``max_state_bytes``), and the
        ``echo_bytes`` of it paid as echoes of what it was sent. A stock client echoes the
        server's greeting, every state present, in one frame: ten legal states were past the
        bound of its own alone, refused ``too_large`` on every join (review)."""
        return self.max_state_bytes * MAX_CLIENTS_PER_SOCKET + max(0, echo_bytes)

    def _own(
        self, owner: Hashable, user_id: str, update: bytes, now: float, echo_bytes: int
    ) -> Iterator[tuple[AwarenessState, _Client | None]]:
        """The states of ``update`` that ``owner`` gives of its own, each with what is
        known of its client (None: a new one): not the echoes of other sockets' clients
        (stock y-websocket re-sends every state it receives, as often as the others'
        presence changes), nor a client another member left lately."""
        if len(update) > self.max_update_bytes(echo_bytes):
            raise TooLarge("awareness update too large")
        # Whether ``owner`` speaks for a client already: a scan of the session's clients,
        # made only for an update that names a client not known (nothing changes
        # ``_clients`` while this runs: ``apply`` records what it relays after it).
        speaks: bool | None = None
        for item in decode_awareness_update(update):
            known = self._clients.get(item.client_id)
            if known is not None and self._stale(known, now):
                known = None  # its node stopped renewing it: anyone may introduce it
            if known is not None and known.owner != owner:
                # An echo: a socket never speaks for a client another socket introduced.
                continue
            if known is None and speaks is None:
                speaks = self.owned_by(owner) > 0
            if known is None and speaks:
                # A relay: a stock provider shows its own client in the first state it
                # sends, and re-sends those of other tabs (y-websocket's BroadcastChannel),
                # another member's too, before their own socket is open (review RH-3).
                # One too large to be shown by anyone is refused, as the socket's own.
                if item.state is not None and (
                    len(awareness_state_json(item.state)) > self.max_state_bytes
                ):
                    raise TooLarge(f"awareness state exceeds {self.max_state_bytes} bytes")
                continue
            if known is None and self._kept_for_another(item.client_id, user_id, now):
                continue  # another member's client, away between two of their sockets
            if known is None and item.state is None:
                # Nobody here to take away: the echo of a leaving the server told (of a
                # client of this member's, or one no longer kept), or of a client never shown.
                continue
            if item.clock > MAX_CLOCK and not self._derived(item, known):
                # Its own: room is left above for every clock derived from it (``MAX_CLOCK``).
                raise ClockOutOfRange("awareness clock out of range")
            yield item, known

    def _derived(self, item: AwarenessState, known: _Client | None) -> bool:
        """True when ``item``'s clock may come from the last one known of its client (its
        state, or the clock its leaving was told at): at most its leaving (+1) and a Yjs
        client's raise past that (+1) further, and short of the top. (Review: a member's
        stock socket took their own client kept from a closed socket by echoing its state
        at ``MAX_CLOCK``; its echo of the leaving, one past, was refused.)"""
        left = self._left.get(item.client_id)
        last = known.clock if known is not None else None if left is None else left[2]
        return last is not None and item.clock <= min(last + 2, MAX_SAFE_INTEGER - 1)

    def would_show(
        self, owner: Hashable, user_id: str, update: bytes, now: float = 0.0, echo_bytes: int = 0
    ) -> bool:
        """True when ``update`` from ``owner`` shows a state of its own (``apply`` would
        relay a state that is not None); False for an update that only echoes others or
        takes its own clients away. (Whether it may show itself is the caller's question.)"""
        own = self._own(owner, user_id, update, now, echo_bytes)
        return any(item.state is not None for item, _ in own)

    def apply_remote(self, node_id: str, update: bytes, now: float) -> bytes | None:
        """Record the states another node relayed (stamped there); return what of them its
        sockets may speak for, to show here, or None when nothing is (``ProtocolError``
        for an update that is not one)."""
        owner = RemoteNode(node_id)
        accepted: list[AwarenessState] = []
        for item in decode_awareness_update(update):
            known = self._clients.get(item.client_id)
            if known is not None and self._stale(known, now):
                known = None
            if (
                known is not None
                and not isinstance(known.owner, RemoteNode)
                and item.state is None
                and item.clock >= known.clock
            ):
                # Told by the node it left that a socket's client here left at this clock:
                # the socket is told, to show itself past it (``take_behind_here``); its
                # peers hold that clock for it now.
                self._behind.setdefault(known.owner, []).append(item)
                known.clock = item.clock
                continue
            if known is not None and (known.owner != owner or item.clock < known.clock):
                continue  # another's client, here or on a third node; or stale
            stamp = (item.state or {}).get("parley")
            user_id = str(stamp.get("user_id", "")) if isinstance(stamp, dict) else ""
            if item.state is None:
                if known is not None:
                    del self._clients[item.client_id]
                    self._keep_left(item.client_id, known.user_id, now, item.clock)
            elif known is None and self._kept_for_another(item.client_id, user_id, now):
                continue
            else:
                client = _Client(owner, item.clock, item.state, user_id, now)
                self._clients[item.client_id] = client
                left = self._pop_left(item.client_id)
                if left is not None and item.clock <= left[2]:
                    # Back on another node below the clock its leaving was told at here:
                    # that node is told, and tells its socket (review: 30 s unseen).
                    self._behind_elsewhere.append(AwarenessState(item.client_id, left[2], None))
            accepted.append(item)
        return encode_awareness_update(accepted) if accepted else None

    def take_behind_elsewhere(self) -> bytes | None:
        """For the other nodes: clients of theirs back below the clock their leaving was
        told at here (None: none)."""
        behind, self._behind_elsewhere = self._behind_elsewhere, []
        return encode_awareness_update(behind) if behind else None

    def take_behind_here(self) -> list[tuple[Hashable, bytes]]:
        """Per socket of this node: the update that has its clients, come back under a
        clock another node told their leaving at, raise it."""
        taken = [(owner, encode_awareness_update(items)) for owner, items in self._behind.items()]
        self._behind.clear()
        return taken

    @staticmethod
    def _stale(client: _Client, now: float) -> bool:
        return isinstance(client.owner, RemoteNode) and now - client.seen > REMOTE_STALE_S

    def _keep_left(self, client_id: int, user_id: str, now: float, clock: int) -> None:
        self._pop_left(client_id)  # to the end: the newest
        self._left[client_id] = (user_id, now, clock)
        mine = self._left_of.setdefault(user_id, {})
        mine[client_id] = None
        if len(mine) > MAX_LEFT_PER_MEMBER:
            self._pop_left(next(iter(mine)))
        self._forget_left(now)

    def _pop_left(self, client_id: int) -> tuple[str, float, int] | None:
        left = self._left.pop(client_id, None)
        if left is not None:
            mine = self._left_of.get(left[0])
            if mine is not None:
                mine.pop(client_id, None)
                if not mine:
                    del self._left_of[left[0]]
        return left

    def _forget_left(self, now: float) -> None:
        while self._left:
            oldest, (_, at, _) = next(iter(self._left.items()))
            if now - at <= KEEP_LEFT_S and len(self._left) <= MAX_LEFT_KEPT:
                return
            self._pop_left(oldest)

    def _kept_for_another(self, client_id: int, user_id: str, now: float) -> bool:
        """True while ``client_id`` left lately and was another member's."""
        self._forget_left(now)
        left = self._left.get(client_id)
        return left is not None and left[0] != user_id

    def flush(self) -> bytes | None:
        """One update with the latest state of every client that changed (or left) since
        the last flush; None when none did."""
        if not self._pending:
            return None
        self.flushed_by = {}
        parts = []
        for item in self._pending.values():
            part = encode_awareness_state(item)
            parts.append(part)
            client = self._clients.get(item.client_id)
            if client is not None:
                user = client.user_id
                self.flushed_by[user] = self.flushed_by.get(user, 0) + len(part)
        self._pending.clear()
        return join_awareness_states(parts)

    def _local(self) -> list[tuple[int, _Client]]:
        return [(cid, c) for cid, c in self._clients.items() if not isinstance(c.owner, RemoteNode)]

    def owned_by(self, owner: Hashable) -> int:
        return sum(1 for c in self._clients.values() if c.owner == owner)

    def drop(self, owner: Hashable, now: float = 0.0) -> bytes | None:
        """Forget ``owner``'s clients (their ids kept for their member a while); return the
        "they left" update (relayed at the next flush), if any."""
        self._behind.pop(owner, None)
        gone = [cid for cid, c in self._clients.items() if c.owner == owner]
        if not gone:
            return None
        left = [AwarenessState(cid, self._clients[cid].clock + 1, None) for cid in gone]
        for item in left:
            gone_client = self._clients.pop(item.client_id)
            self._keep_left(item.client_id, gone_client.user_id, now, item.clock)
            self._to_store.append(LeftClient(item.client_id, gone_client.user_id, now, item.clock))
            self._pending[item.client_id] = item  # replaces a state not yet relayed
        return encode_awareness_update(left)

    def take_left(self) -> list[LeftClient]:
        """The clients of this node's sockets that left since the last call, for the store
        (another node's are stored by that node), in the order they left."""
        taken, self._to_store = self._to_store, []
        return taken

    def restore(self, left: Iterable[LeftClient], now: float) -> None:
        """Keep for their members the client ids that left before this room was loaded (as
        stored: here, elsewhere, before a restart), in any order: those that left within
        ``KEEP_LEFT_S`` of ``now``, the newest ``MAX_LEFT_PER_MEMBER`` of each member's and
        ``MAX_LEFT_KEPT`` in all, as if they had left here. A client id present now, or
        kept already from a later leaving, stays as it is."""
        kept = {cid: LeftClient(cid, *held) for cid, held in self._left.items()}
        for item in left:
            if item.client_id in self._clients or now - item.at > KEEP_LEFT_S:
                continue
            known = kept.get(item.client_id)
            if known is None or known.at < item.at:
                kept[item.client_id] = item
        self._left.clear()
        self._left_of.clear()
        for item in sorted(kept.values(), key=lambda i: i.at):  # oldest first, as kept
            self._keep_left(item.client_id, item.user_id, item.at, item.clock)
        self._forget_left(now)

    def snapshot(self) -> bytes | None:
        """Every live state of this node's sockets, for a socket that just joined (None when
        nobody is present); the other nodes answer for theirs."""
        live = [
            AwarenessState(cid, c.clock, c.state) for cid, c in self._local() if c.state is not None
        ]
        return encode_awareness_update(live) if live else None

    def users(self) -> list[str]:
        found = []
        for _, c in self._local():
            if c.state is not None:
                found.append(str(c.state["parley"]["user_id"]))
        return sorted(set(found))
