"""Which of the prompts planned for a coalesced run fit the context window together.

A coalesced run answers the waiting prompts in one call, so their texts share one window
(minus its output reserve). ``fit_run`` takes them in queue order as long as they fit
together: a prompt too large alone fails alone (``too_large``, as it would running alone);
a prompt that fits alone but not beside those before it ends the run's share there, and
it and the rest wait for the next run, in the same order. So one member's long prompt
never fails another's, and nothing that waits is skipped. When what every call carries
(the system text with the facts and pins, the tools' definitions) overflows the window
alone, no prompt fits, alone or beside others: they all fail on the first measure, with no
measure per prompt (review: up to 21 builds of a 1.5 MB system text at each run start).

The measure is the shell's (``judge``: a context build for those prompts, in their
issuers' scope); the rule is here, and the core applies it (``RunStart.fit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parley.session.queue import PendingPrompt
from parley.session.reasons import Ending


@dataclass(frozen=True, slots=True)
class Overflow:
    """Why a call answering some prompts would not fit the window: ``ending``. ``fixed``:
    what every call carries (the system text, the tools' definitions) overflows it alone,
    in those prompts' scope. A scope of fewer of their issuers reads and offers no less, so
    none of them would fit in a run of its own either (near enough: its pins are chosen
    within the same share, its summary may be another)."""

    ending: Ending
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class RunFit:
    """How the run planned for ``planned`` (its prompt ids) fits: the prompts that fail
    alone, each with its ending, and how many of the others it answers (the first
    ``taken`` of them, in order; the rest wait)."""

    planned: tuple[str, ...]
    too_large: tuple[tuple[PendingPrompt, Ending], ...] = ()
    taken: int = 0


def fit_run(
    prompts: Sequence[PendingPrompt],
    judge: Callable[[Sequence[PendingPrompt]], Overflow | None],
) -> RunFit:
    """The fit of the run planned for ``prompts``; ``judge(prompts)`` says why a call
    answering them would not fit the window (None: it would). Judges them all together
    first, so a run that fits costs one measure, and so does one whose fixed part
    overflows alone."""
    planned = tuple(p.id for p in prompts)
    whole = judge(prompts)
    if whole is None:
        return RunFit(planned, taken=len(prompts))
    if whole.fixed:
        return RunFit(planned, tuple((p, whole.ending) for p in prompts))
    taken: list[PendingPrompt] = []
    failed: list[tuple[PendingPrompt, Ending]] = []
    for prompt in prompts:
        together = judge([*taken, prompt])
        if together is None:
            taken.append(prompt)
            continue
        alone = together if not taken else judge([prompt])
        if alone is not None:
            failed.append((prompt, alone.ending))
        else:
            break  # fits alone, not beside those before it: it waits, and so do the rest
    return RunFit(planned, tuple(failed), len(taken))
