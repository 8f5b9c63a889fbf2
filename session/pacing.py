"""When a reply's text goes out: batched by backpressure, with the interval as a ceiling.

Each batch of reply text is stored, then broadcast, before the next is taken (durable
before visible). The rule, sans I/O (``server.runtime.runner`` does the waiting):

- text that finds the writer idle goes at once: a model slower than a commit is sent each
  token as it comes, with no added wait;
- text that arrives while a batch is being stored and sent waits for it, and goes as one
  batch right after: merged only while the one before is in flight;
- a writer that finds text waiting ``saturated_after`` batches in a row is saturated (the
  model is faster than a commit and a broadcast): a batch then also waits until
  ``interval_s`` after the one before, so that a fast model costs a few large updates per
  socket, not one per commit. The interval is the ceiling of that wait, never a grid that
  text arriving at an idle writer waits for;
- a full batch (``max_chars``) and the end of the reply go at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SATURATED_AFTER = 2


@dataclass(slots=True)
class ReplyPacer:
    """The batching rule of one streamed reply. Times are seconds on any one clock.

    Per batch: ``hold`` (how long to wait for more text before taking it), then ``sent``
    once it is taken."""

    interval_s: float
    saturated_after: int = SATURATED_AFTER
    # Batches in a row whose first text was already waiting when the writer came back for
    # it (it arrived while the batch before was in flight).
    backlog: int = field(default=0, init=False)
    last_sent: float | None = field(default=None, init=False)
    # When the batch held now was due (None: it was not held).
    _due: float | None = field(default=None, init=False)

    def hold(self, now: float, *, waiting: bool, full: bool, ended: bool) -> float:
        """Seconds to hold the batch in hand for more text (0: take it now).

        ``waiting``: its first text was there when the writer came back for it (it arrived
        while the previous batch was stored and sent); ``full``: it holds the most a batch
        may; ``ended``: it holds the end of the reply."""
        self.backlog = self.backlog + 1 if waiting else 0
        self._due = None
        if full or ended or self.last_sent is None or self.backlog < self.saturated_after:
            return 0.0
        due = self.last_sent + self.interval_s
        if due <= now:  # overdue (a long broadcast): the grid starts again from this one
            return 0.0
        self._due = due
        return due - now

    def sent(self, now: float) -> None:
        """The batch was taken at ``now`` (what arrives from here on joins the next). A
        held batch counts as taken when it was due, if that was earlier: a late wake-up
        does not push the batches after it back."""
        self.last_sent = now if self._due is None else min(now, self._due)
        self._due = None
