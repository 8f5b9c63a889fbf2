"""Which command ids a session's entries and kept acks were stored with, known before a
write.

On PostgreSQL a command's entry goes into the write's last statement (one round trip for
the whole acknowledged write), which stores nothing if the author sent that command id
before; but by then the document holds the entry, and a write that stores nothing reloads
the document from the store. A resend must not cost that (a member resending old command
ids would make the server reload a large document at the rate it may send commands), so
the writer asks here first: an id possibly sent before is inserted on its own, first, as
on SQLite, and found there before the document changes.

The same ids tell the one door (``server.runtime.commands.dispatch``) when a command may
be a resend of one the store holds (an entry, or the ack kept of a pin, a fact, ...): only
then does it ask the store.

The ids are kept as hashes (a few dozen bytes each), read once from the store when the
session's first command comes (``read(for_resends=True)``), and added to as entries and
acks are stored. A hash shared by two ids only sends the new one the old way; the store
decides either way.
"""

from __future__ import annotations

import asyncio

from parley.server.store.port import SessionStore


class SentCommands:
    def __init__(self, store: SessionStore, session_id: str) -> None:
        self.store = store
        self.session_id = session_id
        self._hashes: set[int] | None = None
        self._reading = asyncio.Lock()  # commands arriving together share the one read

    async def read(self, last_seq: int, *, for_resends: bool = False) -> None:
        """Read the stored ids, once (before the first write that may store an entry);
        none to read while the session has no entry (``last_seq`` 0). ``for_resends``:
        on any store (``stored_before``), not only one that inserts entries last."""
        if self._hashes is not None or not (self.store.leaves_entries or for_resends):
            return
        async with self._reading:
            if self._hashes is None:
                # (A session with no entry may hold acks: a policy changed, say.)
                wanted = last_seq or for_resends
                stored = await self.store.command_ids(self.session_id) if wanted else []
                self._hashes = {hash(key) for key in stored}

    def forget(self) -> None:
        """Read the ids again before the next command: others were stored meanwhile by
        another node (a read replica's ids take only what it stored itself, and it now runs
        the session; review: after a failover, a resend got ``conflict`` and another
        command under a used id was carried out)."""
        self._hashes = None

    def new(self, author: str, command_id: str) -> bool:
        """Whether ``author`` surely never stored ``command_id`` (False until ``read``, and
        on a store that inserts entries at once)."""
        if self._hashes is None or not self.store.leaves_entries:
            return False
        return hash((author, command_id)) not in self._hashes

    def stored_before(self, author: str, command_id: str) -> bool:
        """Whether ``author`` may have stored an entry with ``command_id`` (after ``read``):
        a resend after a restart, or one the recent acks no longer hold, is answered as
        the first time whatever the rate (review: an SDK's resends of stored prompts were
        refused ``rate_limited``, and a large burst closed the socket 4429)."""
        return self._hashes is not None and hash((author, command_id)) in self._hashes

    def stored(self, author: str, command_id: str) -> None:
        """An entry with this command id was committed."""
        if self._hashes is not None:
            self._hashes.add(hash((author, command_id)))
