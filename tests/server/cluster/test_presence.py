"""Splitting presence snapshots into notifications under PostgreSQL's payload limit."""

from __future__ import annotations

import base64

from parley.server.cluster.presence import awareness_chunks
from parley.session.yprotocol import (
    AwarenessState,
    decode_awareness_update,
    encode_awareness_update,
)


def test_a_large_snapshot_is_split_and_an_oversized_state_left_out() -> None:
    states = [AwarenessState(i, 1, {"name": f"user {i}", "pad": "x" * 900}) for i in range(20)]
    huge = AwarenessState(99, 1, {"pad": "y" * 9000})
    update = encode_awareness_update([*states[:10], huge, *states[10:]])
    chunks = awareness_chunks(update, 4000)
    assert all(len(chunk) <= 4000 for chunk in chunks) and len(chunks) > 1
    relayed = [s for c in chunks for s in decode_awareness_update(base64.b64decode(c))]
    assert relayed == states


def test_a_small_update_travels_whole() -> None:
    update = encode_awareness_update([AwarenessState(1, 3, None)])
    assert awareness_chunks(update, 4000) == [base64.b64encode(update).decode()]
