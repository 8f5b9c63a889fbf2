"""A document's state vector as a mapping: its encoding lists the clients in no fixed
order, so two documents with the same state may encode it in two ways (a test comparing
the bytes failed now and then)."""

from __future__ import annotations

from typing import Any

from parley.session.yprotocol import decode_state_vector


def state_of(doc: Any) -> dict[int, int]:
    """Each client's clock in ``doc`` (a pycrdt ``Doc``)."""
    return decode_state_vector(doc.get_state())
