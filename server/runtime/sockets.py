"""The open sockets of one loaded session, and what is sent to all or some of them.

A committed update is framed once and sent to every socket of the session; text kept
server-side goes only to the sockets of members who may read it (those that speak JSON:
stock Yjs clients read it over REST), and a member's row as it now stands (``member``) to
every socket that speaks JSON. A side-thread's sockets (its owner's, syncing its
document) are kept apart and sent that document's updates alone. Closing them all is how a
room that is given up, drained or unloaded tells its clients to reconnect.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator

from parley.authz.policy import Subject, may_read
from parley.server.store.access_rows import PrivateItem
from parley.server.ws.connection import Connection, broadcast
from parley.server.ws.direct_send import binary_frame
from parley.session.closes import CloseCode


class SessionSockets:
    """``subject`` answers who a socket's user is as of now (None: no member)."""

    def __init__(self, subject: Callable[[str], Subject | None]) -> None:
        self.subject = subject
        self.connections: set[Connection] = set()
        self.thread_connections: dict[str, set[Connection]] = {}  # by side-thread
        # Open sockets (the session's and its side-threads') in all and by user, kept as
        # they come and go: admission checks the caps without listing every socket.
        self.count = 0
        self.count_of: Counter[str] = Counter()

    def _counted(self, connection: Connection, into: set[Connection], step: int) -> None:
        if (connection in into) == (step > 0):
            return  # already in (or already gone): counted once
        if step > 0:
            into.add(connection)
        else:
            into.discard(connection)
        self.count += step
        self.count_of[connection.user_id] += step
        if not self.count_of[connection.user_id]:
            del self.count_of[connection.user_id]

    def attach(self, connection: Connection) -> None:
        self._counted(connection, self.connections, 1)

    def detach(self, connection: Connection) -> None:
        self._counted(connection, self.connections, -1)

    def attach_thread(self, thread_id: str, connection: Connection) -> None:
        self._counted(connection, self.thread_connections.setdefault(thread_id, set()), 1)

    def detach_thread(self, thread_id: str, connection: Connection) -> None:
        connections = self.thread_connections.get(thread_id)
        if connections is not None:
            self._counted(connection, connections, -1)
            if not connections:
                del self.thread_connections[thread_id]

    def everyone(self) -> Iterator[Connection]:
        """Every open socket: the session's and its side-threads'."""
        yield from self.connections
        for connections in self.thread_connections.values():
            yield from connections

    def broadcast(self, message: bytes) -> None:
        # A copy: a socket dropped on the way may leave the set.
        broadcast(list(self.connections), message, binary_frame(message))

    def deliver_private(
        self, item: PrivateItem, subject: Callable[[str], Subject | None] | None = None
    ) -> None:
        """Send a stored private item to the sockets of members who may read it, as
        ``subject`` says who they are (by default: as of now)."""
        frame = private_frame(item)
        judged = self.subject if subject is None else subject
        for connection in list(self.connections):
            if may_read(judged(connection.user_id), item.restriction):
                connection.send_json(frame)

    def tell(self, frame: str, user_id: str | None = None) -> None:
        """Send a JSON frame to every socket of the session that speaks JSON, or to
        ``user_id``'s alone (a stock Yjs client is sent none: it would misread it)."""
        for connection in list(self.connections):
            if user_id is None or connection.user_id == user_id:
                connection.send_json(frame)

    def send_thread(self, thread_id: str, message: bytes) -> None:
        """Send an update of a side-thread's document to that thread's sockets."""
        connections = self.thread_connections.get(thread_id)
        if connections:
            broadcast(list(connections), message, binary_frame(message))

    def close_thread(self, thread_id: str, code: CloseCode, reason: str) -> None:
        for connection in list(self.thread_connections.get(thread_id, ())):
            connection.close(code, reason)

    def close_all(self, code: CloseCode, reason: str) -> None:
        for connection in list(self.everyone()):
            connection.close(code, reason)


def private_frame(item: PrivateItem) -> str:
    """The ``restricted`` frame of a private item, for who may read it."""
    return json.dumps(
        {"type": "restricted", "entry_id": item.entry_id, "kind": item.kind, "text": item.text}
    )


def member_frame(user_id: str, subject: Subject | None, display_name: str) -> str:
    """The ``member`` frame of a member as they now stand (``subject`` None: no longer a
    member): what ``GET …/members`` shows of them, grants and denials aside."""
    return json.dumps(
        {
            "type": "member",
            "user_id": user_id,
            "role": None if subject is None else subject.role,
            "display_name": display_name,
            "capabilities": [] if subject is None else sorted(subject.capabilities),
        }
    )
