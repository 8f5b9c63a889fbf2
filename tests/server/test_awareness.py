"""Presence fan-out: the first change goes out at once, later ones coalesced per interval."""

from __future__ import annotations

import asyncio

from parley.server.ws.awareness import AwarenessFanout
from parley.session.presence import Presence
from parley.session.yprotocol import (
    AwarenessMessage,
    AwarenessState,
    decode_awareness_update,
    decode_client_frame,
    encode_awareness_update,
)


def states_in(frame: bytes) -> list[AwarenessState]:
    message = decode_client_frame(frame)
    assert isinstance(message, AwarenessMessage)
    return decode_awareness_update(message.update)


async def test_a_burst_goes_out_as_the_first_change_then_the_latest_state() -> None:
    presence = Presence()
    sent: list[bytes] = []
    published: list[bytes] = []
    arrived = asyncio.Event()

    def broadcast(frame: bytes) -> None:
        sent.append(frame)
        arrived.set()

    fanout = AwarenessFanout(presence, broadcast, interval_s=0.05)
    fanout.publish = published.append
    for clock in range(1, 51):
        update = encode_awareness_update([AwarenessState(7, clock, {"n": clock})])
        presence.apply("socket", "vera", update)
        fanout.changed()
    assert len(sent) == 1 and states_in(sent[0])[0].clock == 1  # at once
    async with asyncio.timeout(10):
        while len(sent) < 2:
            arrived.clear()
            await arrived.wait()
    assert [s.clock for s in states_in(sent[1])] == [50]  # one frame, the latest state
    assert len(published) == 2  # and to the other nodes, the same updates
    assert presence.flush() is None  # nothing left to send
