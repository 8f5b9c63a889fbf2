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

An update is judged (a diff against the server's state vector, ``session.read_only``) only
where a refusal can be told: once on a socket that speaks JSON. Anywhere else a write and a
no-op end alike, dropped unanswered, so neither is read past its envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from parley.server.ws.connection import Connection
from parley.session.errors import Forbidden

log = logging.getLogger("parley.ws")


def drop_update(
    connection: Connection, update: bytes, is_noop: Callable[[bytes], bool], refusal: str
) -> None:
    """Drop a client's document ``update``; raise ``Forbidden(refusal)`` the first time one
    would change the document (``is_noop``) on a socket that speaks JSON, and ``TooLarge``
    where ``is_noop`` refuses it unread (both count toward the abuse limit)."""
    if connection.channel is None or connection.told_read_only:
        return
    if is_noop(update):
        return
    connection.told_read_only = True
    log.info("refused a client write", extra={"user_id": connection.user_id})
    raise Forbidden(refusal)
