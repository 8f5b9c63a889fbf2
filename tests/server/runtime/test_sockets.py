"""A session's socket counts (what admission checks the caps against) follow every
attach and detach, the session's sockets and its side-threads' alike."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import cast

from parley.server.runtime.sockets import SessionSockets
from parley.server.ws.connection import Connection


@dataclass(eq=False)
class Socket:
    user_id: str


def test_counts_equal_the_open_sockets_after_any_sequence() -> None:
    rng = random.Random(7)
    sockets = SessionSockets(lambda _user: None)
    pool = [cast(Connection, Socket(f"u{i % 3}")) for i in range(12)]
    for _ in range(2000):
        connection = rng.choice(pool)
        thread = rng.choice([None, "t1", "t2"])
        if rng.random() < 0.5:  # attaching twice, or detaching what is not attached, is a no-op
            if thread is None:
                sockets.attach(connection)
            else:
                sockets.attach_thread(thread, connection)
        elif thread is None:
            sockets.detach(connection)
        else:
            sockets.detach_thread(thread, connection)
        listed = list(sockets.everyone())
        assert sockets.count == len(listed)
        assert sockets.count_of == Counter(c.user_id for c in listed)
