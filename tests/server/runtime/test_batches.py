"""How a reply's text reaches the document, in a room on the in-memory store: a model that
the writer keeps up with token by token, whatever the interval; one faster than the writer
in batches at most once per interval; a full batch and the end of a reply at once (the
rule itself: ``tests/session/test_pacing.py``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fake_model import FakeModel
from tests.server.runtime.harness import memory_session


@dataclass
class Paced:
    """A model's pace: ``tokens`` tokens ``gap_s`` apart, noting when it gave each."""

    tokens: int
    gap_s: float
    width: int = 1
    yielded: list[float] = field(default_factory=list)
    # Set: each token waits until the one before is in the document (a model the writer
    # always keeps up with, however loaded the machine).
    appended: asyncio.Semaphore | None = None

    async def _next(self) -> None:
        if self.appended is not None and self.yielded:
            await self.appended.acquire()
        if self.gap_s:
            await asyncio.sleep(self.gap_s)  # slower than the interval: real time is the point
        self.yielded.append(time.monotonic())

    def model(self) -> FakeModel:
        text = [f"{n:04d} " * self.width for n in range(self.tokens)]
        return FakeModel(lambda sent: [s for token in text for s in (self._next, token)])


async def reply_batches(
    provider: Paced, interval_ms: float, sizes: list[int] | None = None, commit_s: float = 0
) -> list[float]:
    """When each batch of reply text went out (one document update each); its size goes
    into ``sizes``; each batch takes ``commit_s`` to store (a busy database). The interval
    is set unvalidated: a test may hold batches longer than a server may (its 1 s cap), so
    that a batch held back for it outlasts the bounded wait."""
    sent: list[float] = []
    unvalidated = {"stream_interval_ms": interval_ms}
    async with memory_session({"alice": "editor"}, provider.model(), unvalidated=unvalidated) as s:
        appending = s.room.runs.append_reply

        async def noting(active: Any, text: str) -> None:
            sent.append(time.monotonic())
            if sizes is not None:
                sizes.append(len(text))
            if commit_s:
                await asyncio.sleep(commit_s)
            await appending(active, text)
            if provider.appended is not None:
                provider.appended.release()

        s.room.runs.append_reply = noting  # type: ignore[method-assign]
        asked = await s.prompt("alice", "go")
        await s.settled(asked["prompt_id"])
        reply_id = s.room.doc.entry(asked["prompt_id"]).reply_id
        assert reply_id is not None
        reply = s.room.doc.entry(reply_id).content
        assert reply == "".join(f"{n:04d} " * provider.width for n in range(provider.tokens))
    return sent


async def test_a_model_faster_than_the_writer_is_sent_in_batches_at_most_once_per_interval() -> (
    None
):
    provider = Paced(tokens=200, gap_s=0.001)
    sizes: list[int] = []
    sent = await reply_batches(provider, interval_ms=20, sizes=sizes, commit_s=0.005)
    assert 3 <= len(sent) < 100
    assert max(sizes) > 5  # text that came while a batch was stored went as one
    # Once the writer is busy batch after batch: at most one batch per 20 ms slot of the
    # grid the batches keep (a late wake-up does not push the later ones back), plus the
    # two before it and the last, which goes when the reply ends. A loaded machine
    # stretches the span and so only loosens the bound.
    assert len(sent) <= (sent[-1] - sent[0]) / 0.020 + 3


async def test_a_model_the_writer_keeps_up_with_is_sent_each_token_as_it_comes() -> None:
    provider = Paced(tokens=20, gap_s=0, appended=asyncio.Semaphore(0))
    # Ten minutes: a token held back for the interval would never arrive within the
    # reply's bounded wait. Each token finds the writer idle, so none is.
    sent = await reply_batches(provider, interval_ms=600_000)
    assert len(sent) == 20


async def test_a_slow_model_is_sent_each_token_as_it_comes() -> None:
    # Each token after the one before is in the document (a loaded machine that stalls the
    # writer past the model's gap would batch two), then 50 ms: slower than the interval.
    provider = Paced(tokens=20, gap_s=0.05, appended=asyncio.Semaphore(0))
    sent = await reply_batches(provider, interval_ms=20)
    assert len(sent) == 20
    # Not held back for a batch: each token went out before the model gave the next.
    assert all(s < y for s, y in zip(sent, provider.yielded[1:], strict=False))


async def test_a_full_batch_is_not_held_back_by_the_interval() -> None:
    provider = Paced(tokens=400, gap_s=0, width=10)  # 20,000 characters at once
    sizes: list[int] = []
    # An interval of ten minutes: a batch that waited it out would never arrive within the
    # reply's bounded wait.
    await reply_batches(provider, interval_ms=600_000, sizes=sizes)
    assert sum(sizes) == 20_000
    full = [n for n, size in enumerate(sizes) if size >= 4096]
    assert len(full) >= 4


async def test_the_end_of_a_reply_is_not_held_back_by_the_interval() -> None:
    provider = Paced(tokens=3, gap_s=0)
    # Ten minutes: a held-back end would never arrive within the reply's bounded wait.
    sent = await reply_batches(provider, interval_ms=600_000)
    assert sent[-1] >= provider.yielded[-1]
