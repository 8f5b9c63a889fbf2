"""The room-reload benchmark runs (tiny sizes), so it cannot rot; and what it counts
exactly, the documents left alive, is none."""

from __future__ import annotations

from bench.room_reloads import main


def test_rooms_loaded_and_unloaded_leave_no_document_alive() -> None:
    rows = main(["--entries", "12", "--loads", "3", "--rounds", "2"])
    assert [row["loads"] for row in rows] == [3, 6]
    assert [row["documents_alive"] for row in rows] == [0, 0]
