"""A client's update to a document only the server writes: dropped, and no abuse.

Every member's client may send document updates (sync step 2 and update), and none is
applied or relayed: the server is the only writer. A stock client whose app types into the
shared document (an editor bound to an entry's text, which the app cannot know is
read-only) sends one per keystroke; each counted toward the abuse limit, and the 51st
closed it 4429, which y-websocket 3.x takes as final: it never came back (review RE F1).
So they count toward nothing. What bounds a client that sends them is what every binary
frame is charged before it is judged (``server.ws.admission.charged``): the socket's frame
rate (``PARLEY_UPDATES_PER_SECOND``) and its member's document bytes
(``PARLEY_DOCUMENT_WRITE_*``), whose overruns still count, and the socket's frame budget.

An update is judged (a diff against the server's state vector, ``session.read_only``) until
the socket's first write, and after that only where a refusal can still be told: once on a
socket that speaks JSON. The first write of each socket is counted and logged
(``RefusedWrites``): a stock client, which is told nothing, is seen by the operator
instead. Past that a write and a no-op end alike, dropped unread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

from parley.server.logs import LogThrottle
from parley.server.ws.connection import Connection
from parley.session.errors import Forbidden, ParleyError

log = logging.getLogger("parley.ws")

# Is a client's update a no-op? ``TooLarge`` or ``ProtocolError`` where it cannot be read.
IsNoop = Callable[[bytes], bool]
# Told each socket's first write: its connection, and whether the client is told.
WriteDropped = Callable[[Connection, bool], None]


class RefusedWrites:
    """The document writes clients sent and the server dropped, as an operator sees them:
    each socket's first counted (``counter``, by ``client``) and logged, one line per
    ``log_every_s`` for all sockets with the number left out (a client that reconnects and
    types again, in a loop, writes no line per socket)."""

    def __init__(
        self,
        counter: Counter,
        log_every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counter = counter
        self.throttle = LogThrottle(log_every_s, clock)

    def dropped(
        self, session_id: str, thread_id: str | None, connection: Connection, told: bool
    ) -> None:
        """``connection`` sent its first write to the session's document (``thread_id``:
        a side-thread's); ``told``: its client is told ``forbidden``."""
        client = "json" if told else "stock"
        self.counter.labels(client=client).inc()
        suppressed = self.throttle.admit("client write")
        if suppressed is None:
            return
        log.info(
            "client write dropped",
            extra={
                "session_id": session_id,
                "thread_id": thread_id,
                "user_id": connection.user_id,
                "client": client,
                "suppressed": suppressed,
            },
        )


def drop_update(
    connection: Connection,
    update: bytes,
    is_noop: IsNoop,
    refusal: str,
    dropped: WriteDropped,
) -> None:
    """Drop a client's document ``update``. The socket's first write (one ``is_noop``
    judges a change) is told to ``dropped``; on a socket that speaks JSON the first one
    after it spoke raises ``Forbidden(refusal)``, and ``TooLarge`` or ``ProtocolError``
    where ``is_noop`` refuses it unread (each counts toward the abuse limit). A socket
    that never spoke is told nothing: an update it sends that cannot be read is a write."""
    told = connection.channel is not None
    if connection.told_read_only or (connection.wrote and not told):
        return
    try:
        if is_noop(update):
            return
    except ParleyError:
        if told:
            raise
    if not connection.wrote:
        connection.wrote = True
        dropped(connection, told)
    if told:
        connection.told_read_only = True
        raise Forbidden(refusal)
