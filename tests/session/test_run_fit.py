"""Which prompts of a coalesced run fit the window together (``session.run_fit``), judged
by a stand-in measure: each prompt's size against a budget."""

from __future__ import annotations

from collections.abc import Sequence

from parley.session.queue import PendingPrompt
from parley.session.reasons import Ending, ReasonCode
from parley.session.run_fit import Overflow, RunFit, fit_run

BUDGET = 100


def prompts(*sizes: int) -> list[PendingPrompt]:
    return [PendingPrompt(f"p{size}-{n}", n + 1, f"u{n}") for n, size in enumerate(sizes)]


def size(prompt: PendingPrompt) -> int:
    return int(prompt.id[1:].split("-")[0])


class Judge:
    """Too large past ``BUDGET`` in all; counts its measures."""

    def __init__(self) -> None:
        self.measured: list[tuple[str, ...]] = []

    def __call__(self, those: Sequence[PendingPrompt]) -> Overflow | None:
        self.measured.append(tuple(p.id for p in those))
        total = sum(size(p) for p in those)
        return None if total <= BUDGET else Overflow(Ending(ReasonCode.TOO_LARGE, f"needs {total}"))


def test_prompts_that_fit_together_are_all_taken_at_the_cost_of_one_measure() -> None:
    planned, judge = prompts(30, 30, 30), Judge()
    assert fit_run(planned, judge) == RunFit(tuple(p.id for p in planned), taken=3)
    assert len(judge.measured) == 1


def test_a_prompt_too_large_alone_fails_alone_and_the_others_are_taken() -> None:
    """Review J7: one member's oversized prompt failed every prompt of the run."""
    planned = prompts(20, 500, 30)
    fit = fit_run(planned, Judge())
    assert fit.too_large == ((planned[1], Ending(ReasonCode.TOO_LARGE, "needs 500")),)
    assert fit.taken == 2  # the first and the third, in order (the core drops the second)


def test_prompts_that_fit_alone_but_not_together_wait_for_the_next_run_in_order() -> None:
    planned = prompts(60, 60, 10)
    fit = fit_run(planned, Judge())
    assert (fit.too_large, fit.taken) == ((), 1)  # the second waits, and the third behind it


def test_a_first_prompt_too_large_alone_fails_with_its_own_measure() -> None:
    planned, judge = prompts(300, 10), Judge()
    fit = fit_run(planned, judge)
    assert [p for p, _ in fit.too_large] == [planned[0]] and fit.taken == 1
    assert judge.measured.count((planned[0].id,)) == 1  # alone is "with none before"


def test_a_fixed_part_too_large_alone_fails_every_prompt_at_the_cost_of_one_measure() -> None:
    """Review B3: pins past the window made a coalesced run's start judge each prompt with a
    build of its own (up to 21 builds of a 1.5 MB system text, one stall of the loop per
    run). When what every call carries (the system text, the tools) overflows alone, no
    prompt fits, alone or beside others: they all fail on the first measure."""
    planned, measured = prompts(10, 20, 30), []
    ending = Ending(ReasonCode.TOO_LARGE, "the pinned messages and facts alone overflow")

    def judge(those: Sequence[PendingPrompt]) -> Overflow | None:
        measured.append(those)
        return Overflow(ending, fixed=True)

    fit = fit_run(planned, judge)
    assert fit == RunFit(tuple(p.id for p in planned), tuple((p, ending) for p in planned), 0)
    assert len(measured) == 1
