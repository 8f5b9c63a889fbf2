"""A reference is sent only beside what it refers to.

The fold gives a pasted block, a reply or a tool result given before as a reference to
its first posting (``FoldedItem.refers_to``). A build keeps the newest turns that fit, so
that first posting may not be in its input (over budget, summarised, merged into other
wording): the reference would then stand for nothing, and the newest copy's content
would reach the model nowhere (review). Such an item is sent in full
(``FoldedItem.in_full``), for blocks, replies and tool results alike.

The budget loop walks the turns newest first, and what an item refers to is mostly
older: an item is costed in full until the last item it refers to is kept, then at its
reference's cost. So the input never passes the budget for a reference it cannot keep,
and a first posting that is kept is never given twice.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from parley.session.fold import FoldedItem, HistoryFold


class GivenReferences:
    """For one build: which kept items may send their references, as items are kept.

    ``given``: the items in the input whatever the budget (those a run answers)."""

    def __init__(
        self,
        fold: HistoryFold,
        given: Collection[int],
        copies: Mapping[str, int] | None = None,
    ) -> None:
        """``copies``: by a first posting's entry id, the index of a later copy of its text
        that the copies after it name instead (``HistoryFold.referring_to``)."""
        self._fold = fold
        self._given = set(given)
        self.copies = dict(copies or {})
        self.named = frozenset(self.copies.values())  # the copies named: numbered
        self._named: dict[int, FoldedItem] = {}  # an item as a reference to a copy
        # A kept item -> the items it refers to not given yet (None: one never will be).
        self._missing: dict[int, set[int | None]] = {}
        self._waiting: dict[int, list[int]] = {}  # an item not given yet -> who waits on it

    def add(self, index: int, item: FoldedItem) -> None:
        """Item ``index`` goes into the input: note what it refers to that is not."""
        if not item.refers_to:
            return
        copy = self._copy_for(index, item)
        missing: set[int | None] = {copy}
        if copy is None:
            missing = {self._fold.showing(entry_id) for entry_id in item.refers_to}
        missing -= self._given
        if missing:
            self._missing[index] = missing
            for target in missing:
                if target is not None:
                    self._waiting.setdefault(target, []).append(index)

    def give(self, index: int) -> list[int]:
        """Item ``index`` is now in the input: the items that may send their references
        since (all they refer to is in)."""
        self._given.add(index)
        ready = []
        for waiting in self._waiting.pop(index, ()):
            missing = self._missing[waiting]
            missing.discard(index)
            if not missing:
                del self._missing[waiting]
                ready.append(waiting)
        return ready

    def form(self, index: int, item: FoldedItem) -> FoldedItem:
        """``item`` (at ``index``) as it is to be sent now: in full while something it
        refers to is not in the input."""
        if index in self._missing and item.in_full is not None:
            return item.in_full
        copy = self._copy_for(index, item)
        if copy is None:
            return item
        named = self._named.get(index)
        if named is None:
            named = self._fold.referring_to(item, self._fold.items[copy])
            self._named[index] = named
        return named

    def _copy_for(self, index: int, item: FoldedItem) -> int | None:
        """The copy item ``index`` names in place of its text's first posting, if any."""
        copy = self.copies.get(item.same_text) if item.same_text else None
        return copy if copy is not None and copy < index else None

    def in_full(self, index: int) -> bool:
        """Whether item ``index``, kept, is sent in full for want of what it refers to."""
        return index in self._missing
