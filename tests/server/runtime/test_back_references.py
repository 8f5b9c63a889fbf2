"""A part's reference back to its room holds the room weakly, and says so when it is gone."""

from __future__ import annotations

import gc
import weakref

import pytest

from parley.server.runtime.back_references import BackReference, weak_method


class Room:
    def __init__(self) -> None:
        self.part = Part(self)
        self.calls: list[str] = []
        self.callback = weak_method(self.called)

    def called(self, what: str) -> str:
        self.calls.append(what)
        return what.upper()


class Part:
    room: BackReference[Room] = BackReference()

    def __init__(self, room: Room) -> None:
        self.room = room


def test_a_room_and_its_parts_are_freed_by_reference_counting() -> None:
    gc.disable()
    try:
        room = Room()
        assert room.part.room is room
        assert room.callback("hi") == "HI" and room.calls == ["hi"]
        gone = weakref.ref(room)
        del room
        assert gone() is None
    finally:
        gc.enable()


def test_a_back_reference_used_once_its_object_is_gone_raises() -> None:
    room = Room()
    part, callback = room.part, room.callback
    del room
    gc.collect()
    with pytest.raises(ReferenceError, match=r"Part\.room"):
        part.room  # noqa: B018
    with pytest.raises(ReferenceError, match=r"Room\.called"):
        callback("late")
