"""Counting a fold's work per turn of the event loop, for the tests that it is done in
steps: the entries each fold folds and the steps it undoes in each turn, and every build
beside one from nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

import parley.server.runtime.context as context_module
from parley.server.runtime.context import SessionContext
from parley.session.context import BuiltContext, ContextBuilder
from parley.session.fold import HistoryFold

T = TypeVar("T")


class FoldSteps:
    """The entries each fold folds, and the steps it undoes, in each turn of the loop
    (``HistoryFold._step``, ``_undo_to``; a roll back in steps undoes ``step`` a turn), and
    every build of a run's scope beside one from nothing (a new builder, as after a
    restart), while a ticker task takes the turns it gets (``during``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: int) -> None:
        self.turn = 0
        self.steps: Counter[tuple[int, int]] = Counter()  # (id of the fold, turn) -> entries
        self.undone: Counter[tuple[int, int]] = Counter()  # (id of the fold, turn) -> steps
        self.builds: list[tuple[BuiltContext, BuiltContext]] = []
        fold_step, build = HistoryFold._step, SessionContext.build
        undo_to, rewind = HistoryFold._undo_to, HistoryFold.rewind

        def counted(fold: HistoryFold, *args: Any) -> Any:
            self.steps[(id(fold), self.turn)] += 1
            return fold_step(fold, *args)

        def counted_undo(fold: HistoryFold, end: int) -> None:
            self.undone[(id(fold), self.turn)] += max(len(fold.keys) - end, 0)
            undo_to(fold, end)

        def rewound(fold: HistoryFold, common: int, steps: int) -> int:
            return rewind(fold, common, min(steps, step))

        def beside_cold(context: SessionContext, *args: Any, **named: Any) -> BuiltContext:
            built = build(context, *args, **named)
            kept = context._builder
            context._builder = ContextBuilder(kept.settings)
            try:
                self.builds.append((built, build(context, *args, **named)))
            finally:
                context._builder = kept
            return built

        monkeypatch.setattr(context_module, "FOLD_STEP", step)
        monkeypatch.setattr(HistoryFold, "_step", counted)
        monkeypatch.setattr(HistoryFold, "_undo_to", counted_undo)
        monkeypatch.setattr(HistoryFold, "rewind", rewound)
        monkeypatch.setattr(SessionContext, "build", beside_cold)

    def of(self, fold: HistoryFold) -> list[int]:
        """The entries ``fold`` folded in each turn it folded in."""
        return [n for (folded, _), n in self.steps.items() if folded == id(fold)]

    def undone_of(self, fold: HistoryFold) -> list[int]:
        """The steps ``fold`` undid in each turn it undid some in."""
        return [n for (undid, _), n in self.undone.items() if undid == id(fold) and n]

    async def during(self, work: Awaitable[T]) -> T:
        running = True

        async def tick() -> None:
            while running:
                self.turn += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(tick())
        try:
            return await work
        finally:
            running = False
            await ticking
