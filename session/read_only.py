"""Judging a client's update to a document only the server writes (sans I/O).

Clients may send an update that changes nothing (a provider re-sending what it was sent);
anything else is a write, refused. The server's delete set, which that judgement reads, is
kept current with the server's own updates (``committed``), so judging a client frame
never re-reads the whole document but once after a load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pycrdt import Doc

from parley.session.yprotocol import (
    DeleteSet,
    ProtocolError,
    add_deletes,
    delete_set_of,
    is_noop_update,
    normalise_delete_set,
)


class ServerWrites:
    """The writes of the server to one document, as far as judging clients needs them;
    ``max_delete_ranges``: the most ranges a client update may delete and still be read."""

    def __init__(self, max_delete_ranges: int | None) -> None:
        self.max_delete_ranges = max_delete_ranges
        self._deletes: DeleteSet | None = None

    def forget(self) -> None:
        """The document was replaced (loaded again): read its delete set anew."""
        self._deletes = None

    def committed(self, update: bytes, state: Callable[[], bytes]) -> None:
        """The server applied ``update``; ``state`` gives the document's state vector after
        it, asked only while the delete set is kept (a transaction of the document each
        time: once per streamed token, for nothing until a client's update is judged)."""
        if self._deletes is not None:
            try:
                add_deletes(self._deletes, delete_set_of(update, state()))
            except ProtocolError:  # structs still pending (a replica): read it all again
                self._deletes = None

    def is_noop(self, doc: Doc[Any], update: bytes) -> bool:
        """True when a client's ``update`` would change nothing in ``doc``; one deleting
        too many ranges is refused (``TooLarge``) unread."""
        state = doc.get_state()
        if self._deletes is None:
            self._deletes = normalise_delete_set(delete_set_of(doc.get_update(), state))
        return is_noop_update(update, state, self._deletes, self.max_delete_ranges)
