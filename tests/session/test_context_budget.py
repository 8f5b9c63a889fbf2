"""One budget for what every call carries: the facts and pins the pin rule accepts, the
largest summary a window gives and the instructions leave a prompt its room (review
RV39-F1b: below a window of about 2,200 tokens, accepted facts and pins with a summary
failed every prompt ``too_large``; review RV42-F1: the tools' definitions, 89 tokens for
the built-in search, came on top)."""

from __future__ import annotations

from itertools import zip_longest

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from parley.session.attribution import Fact
from parley.session.context import (
    BuiltContext,
    ContextSettings,
    build_context,
    fixed_tokens,
    pin_tokens,
)
from parley.session.core.runs import too_large
from parley.session.documents import SEARCH_DOCUMENTS
from parley.session.entries import EntryKind
from parley.session.model import ToolSpec
from parley.session.summary import Summary
from parley.session.tokens import tools_tokens
from tests.session.factories import entry

CHATTER = 4  # messages e1..e4, all covered by the summary


# A tool registered beside the built-in one, its description of ``words`` words.
def _registered(words: int) -> ToolSpec:
    return ToolSpec("lookup", " ".join(["lookup"] * words), {"type": "object"})


def _largest_summary(words_per_line: list[int]) -> Summary:
    """A summary far longer than any window lets a call write (a model may ignore its
    ``max_tokens``): the build holds it to what the window gives a summary."""
    lines = [" ".join(["budget"] * n) for n in words_per_line]
    text = "\n".join(lines * (3_000 // max(sum(words_per_line), 1) + 1))
    covers = frozenset(f"e{n}" for n in range(1, CHATTER + 1))
    return Summary("sum-1", 1, CHATTER, covers, text)


def _accepted(
    config: ContextSettings, fact_words: list[int], pin_words: list[int]
) -> tuple[dict[str, Fact], list[int]]:
    """The facts and pins (their sizes in words) the pin rule accepts, one by one, in the
    order members set them: each that keeps ``fixed_tokens`` within ``max_fixed_tokens``."""
    facts: dict[str, Fact] = {}
    pins: list[int] = []
    costs: list[int] = []
    for n, (fact, pin) in enumerate(zip_longest(fact_words, pin_words)):
        more = {**facts, f"k{n}": Fact(" ".join(["value"] * fact), "alice")} if fact else facts
        if fixed_tokens(more, costs) <= config.max_fixed_tokens:
            facts = more
        if pin is None:
            continue
        said = entry(100 + n, "bob", " ".join(["pinned"] * pin))
        cost = pin_tokens(said)
        if fixed_tokens(facts, [*costs, cost]) <= config.max_fixed_tokens:
            pins.append(pin)
            costs.append(cost)
    return facts, pins


def _short_prompt_built(
    config: ContextSettings,
    facts: dict[str, Fact],
    pins: list[int],
    words_per_line: list[int],
    tools: list[ToolSpec],
) -> BuiltContext:
    """The input of a short prompt after the chatter a summary covers, with ``facts``, the
    pins (their sizes in words), the largest summary and ``tools``."""
    entries = [entry(n, "carol", f"older turn {n}") for n in range(1, CHATTER + 1)]
    entries += [entry(100 + n, "bob", " ".join(["pinned"] * w)) for n, w in enumerate(pins)]
    entries.append(entry(200, "dan", "and now?", EntryKind.PROMPT))
    return build_context(
        session_id="s",
        entries=entries,
        prompt_ids=["e200"],
        facts=facts,
        pins=[f"e{100 + n}" for n in range(len(pins))],
        settings=config,
        summaries=(_largest_summary(words_per_line),),
        tools=tools,
    )


@settings(max_examples=150, deadline=None)
@given(
    window=st.integers(600, 20_000),
    reserve=st.integers(16, 2_048),
    share=st.sampled_from([0.1, 0.5, 0.9, 1.0]),
    summary_max=st.sampled_from([16, 256, 768, 2_000]),
    fact_words=st.lists(st.integers(1, 400), max_size=6),
    pin_words=st.lists(st.integers(1, 600), max_size=6),
    words_per_line=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    tool_words=st.sampled_from([None, 0, 40, 300]),
)
def test_accepted_facts_and_pins_with_the_largest_summary_leave_a_prompt_room(
    window: int,
    reserve: int,
    share: float,
    summary_max: int,
    fact_words: list[int],
    pin_words: list[int],
    words_per_line: list[int],
    tool_words: int | None,
) -> None:
    """Whatever the window, the share, the summary's bound and the tools the server may
    offer (none, the built-in search, and a registered one of several sizes)."""
    tools = [] if tool_words is None else [SEARCH_DOCUMENTS]
    tools += [_registered(tool_words)] if tool_words else []
    config = ContextSettings(
        window_tokens=window,
        reserve_output_tokens=min(reserve, window - 1),
        fixed_share=share,
        summary_max_output_tokens=summary_max,
        tools_room=tools_tokens(tools),
    )
    assume(config.window_problem() is None)  # refused where the window is configured
    facts, pins = _accepted(config, fact_words, pin_words)
    built = _short_prompt_built(config, facts, pins, words_per_line, tools)
    assert built.summary is not None and built.pins_left == ()
    ending = too_large(built.tokens, built.budget, built.fixed_parts)
    assert ending is None, (config, ending)


def test_facts_up_to_the_share_with_a_summary_leave_a_small_window_a_prompt() -> None:
    """The repros of RV39-F1b and RV42-F1: a 2,200-token window with the default output
    reserve and the built-in tool; facts set up to what the pin rule accepts, a summary as
    long as the window lets a call write: a short prompt is still answered."""
    tools = [SEARCH_DOCUMENTS]
    config = ContextSettings(
        window_tokens=2_200, reserve_output_tokens=1_024, tools_room=tools_tokens(tools)
    )
    facts, _ = _accepted(config, [20] * 40, [])
    assert len(facts) > 1
    built = _short_prompt_built(config, facts, [], [12, 12, 3], tools)
    assert built.summary is not None
    assert too_large(built.tokens, built.budget, built.fixed_parts) is None


def test_a_refusal_names_what_bounds_the_facts_and_pins() -> None:
    """The pin rule's limit is the share of the budget, or what the largest summary and a
    prompt leave when that is less: the refusal says which (``fixed_limit_cause``)."""
    small = ContextSettings(window_tokens=2_000, reserve_output_tokens=1_024)
    assert small.max_fixed_tokens == small.max_carried_tokens < int(small.budget * 0.5)
    assert "beside the largest summary, the tools and a prompt" in small.fixed_limit_cause
    usual = ContextSettings()
    assert usual.max_fixed_tokens == int(usual.budget * 0.5) < usual.max_carried_tokens
    assert "a share of its window" in usual.fixed_limit_cause
    tiny = ContextSettings(window_tokens=1_500, reserve_output_tokens=1_024)
    problem = tiny.window_problem()
    assert problem is not None and problem.startswith("a window of 1500 tokens less 1024")
    assert small.window_problem() is None and usual.window_problem() is None
