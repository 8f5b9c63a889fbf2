"""session/context.py at the window's edge: a run's prompts, tool steps and reply are
kept or left out together (review RZ-3), and a provider's opening turn is counted
(review RZ-4)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parley.server.providers.anthropic import render
from parley.session.context import (
    EARLIER_LINE,
    PIN_LEFT_OUT,
    PINNED_REPLY_LEFT_OUT,
    BuiltContext,
    ContextBuilder,
    ContextSettings,
    build_context,
    not_given_tokens,
)
from parley.session.entries import Entry, EntryKind
from parley.session.history import PROMPT_LEFT_OUT, RUN_LEFT_OUT
from parley.session.model import OPENING
from parley.session.summary import Summary, extended, plan_extension
from parley.session.tokens import (
    MESSAGE_TOKENS,
    count_tokens,
    input_tokens,
    opening_tokens,
    system_text_tokens,
)
from tests.session.factories import entry

QUESTION = "alice's long question: " + " ".join(f"detail{i}" for i in range(100))
ANSWER = "The rollout plan: " + " ".join(f"step{i}" for i in range(40))


def done(n: int, author: str, text: str, reply: int | None = None) -> Entry:
    """Prompt ``e{n}``, answered (by reply ``e{reply}``, when given)."""
    made = entry(n, author, text, EntryKind.PROMPT, "done")
    return made if reply is None else replace(made, reply_id=f"e{reply}")


def answer(n: int, text: str, *prompts: int) -> Entry:
    """Reply ``e{n}`` answering ``prompts`` (its number: the last one's)."""
    made = entry(n, "fake", text, EntryKind.REPLY)
    ids = tuple(f"e{p}" for p in prompts)
    return replace(made, seq=prompts[-1], reply_to=ids[-1], answers=ids)


def tool(n: int, reply: int, text: str) -> Entry:
    made = entry(n, "fake", text, EntryKind.TOOL, "done")
    return replace(made, role="tool", tool="search_documents", reply_to=f"e{reply}")


def chatter(first: int, count: int) -> list[Entry]:
    return [entry(n, "bob", f"chatter {n} " + "blah " * 5) for n in range(first, first + count)]


def assert_runs_whole(built: BuiltContext, entries: list[Entry]) -> None:
    """Every reply in the input has each prompt it answers and each of its tool steps in
    the input too (as a message or in the system text); the budget holds."""
    by_id = {e.id: e for e in entries}
    given = set(built.included)
    for entry_id in given:
        said = by_id[entry_id]
        if said.kind is EntryKind.REPLY:
            run = {*said.answers, *(e.id for e in entries if e.reply_to == said.id)}
            assert run <= given, (entry_id, run - given)
    assert built.tokens <= built.budget
    out = {x.entry_id for x in built.excluded}
    assert out.isdisjoint(given) and out | given >= set(by_id)


def windows(
    entries: list[Entry],
    asked: str,
    sizes: range,
    summaries: tuple[Summary, ...] = (),
    pins: tuple[str, ...] = (),
) -> list[BuiltContext]:
    return [
        build_context(
            session_id="s",
            entries=entries,
            prompt_ids=[asked],
            settings=ContextSettings(window_tokens=size, reserve_output_tokens=100),
            summaries=summaries,
            pins=pins,
        )
        for size in sizes
    ]


def test_a_reply_is_never_kept_without_the_question_it_answers() -> None:
    """Review RZ-3: the input opened with the model's reply, its question over budget."""
    entries = [
        done(1, "alice", QUESTION),
        answer(2, ANSWER, 1),
        *chatter(3, 37),
        entry(40, "alice", "final?", EntryKind.PROMPT),
    ]
    cut_between = 0
    for built in windows(entries, "e40", range(300, 1_200, 7)):
        assert_runs_whole(built, entries)
        assert built.request.messages[0].role == "user"
        # the budget's edge fell inside the run: the reply went out with its question
        out = {x.entry_id for x in built.excluded}
        if "e1" in out and "e3" in built.included:
            cut_between += 1
            assert "e2" in out
            assert {x.reason for x in built.excluded if x.entry_id in ("e1", "e2")} == {
                "over budget"
            }
    assert cut_between  # the edge did fall there


def test_a_coalesced_reply_is_not_read_as_the_answer_to_the_prompt_kept() -> None:
    """Review RZ-3 (coalesce): with alice's question cut, ``[bob wrote] and the date?``
    then the reply written for both read as the answer to bob."""
    entries = [
        done(1, "alice", QUESTION),
        entry(2, "carol", "carol holds"),
        done(3, "bob", "and the date?"),
        answer(4, "Answer to alice: " + ANSWER, 1, 3),
        *chatter(5, 40),
        entry(45, "carol", "final?", EntryKind.PROMPT),
    ]
    seen = 0
    for built in windows(entries, "e45", range(300, 1_200, 5)):
        assert_runs_whole(built, entries)
        if "e3" not in built.included and "e5" in built.included:
            seen += 1
            # nothing of the run, nor what was said inside it, opens the input
            assert built.sources[0] == ("e5",)
    assert seen


def test_a_run_with_tool_steps_is_kept_or_left_out_whole() -> None:
    entries = [
        done(1, "alice", QUESTION),
        tool(2, 4, "[search_documents] found: " + "doc line " * 30),
        tool(3, 4, "[search_documents] found: " + "more line " * 30),
        answer(4, ANSWER, 1),
        *chatter(5, 30),
        entry(35, "alice", "final?", EntryKind.PROMPT),
    ]
    for built in windows(entries, "e35", range(300, 1_200, 5)):
        assert_runs_whole(built, entries)


def test_references_to_a_run_taken_out_again_are_sent_in_full() -> None:
    """A later copy of the reply refers to the first: the first's run is left out at the
    edge, so the copy is given in full, counted so (the budget stays exact)."""
    entries = [
        done(1, "alice", QUESTION),
        answer(2, ANSWER, 1),
        *chatter(3, 10),
        done(13, "bob", "repeat the plan please"),
        answer(14, ANSWER, 13),
        *chatter(15, 10),
        entry(25, "alice", "final?", EntryKind.PROMPT),
    ]
    for built in windows(entries, "e25", range(300, 1_200, 3)):
        assert_runs_whole(built, entries)
        sent = dict(zip((s[-1] for s in built.sources), built.request.messages, strict=True))
        if "e14" in sent and "e2" not in sent:
            assert sent["e14"].content == ANSWER
        assert built.tokens == input_tokens(built.request)


def test_a_run_answered_now_is_always_in() -> None:
    entries = [*chatter(1, 30), entry(31, "alice", QUESTION, EntryKind.PROMPT)]
    for built in windows(entries, "e31", range(150, 600, 25)):
        assert built.sources[-1] == ("e31",)


def pinned_question() -> list[Entry]:
    """The prompt pinned (in the system text), its reply the oldest message."""
    return [
        done(1, "alice", "which plan?"),
        answer(2, ANSWER, 1),
        *chatter(3, 4),
        entry(7, "alice", "final?", EntryKind.PROMPT),
    ]


def pinned_first(entries: list[Entry], asked: str, settings: ContextSettings) -> BuiltContext:
    """The input for ``asked`` with the first entry pinned."""
    return build_context(
        session_id="s", entries=entries, prompt_ids=[asked], pins=["e1"], settings=settings
    )


def test_an_opening_turn_the_provider_adds_is_counted() -> None:
    """Review RZ-4: Anthropic's API gets a user turn before an input that opens with the
    model's; the budget never counted it (1,501 tokens sent against a 1,500 window)."""
    entries = pinned_question()
    plain = ContextSettings(window_tokens=4_000, reserve_output_tokens=100)
    anthropic = replace(plain, user_turn_first=True)
    base = build_context(
        session_id="s", entries=entries, prompt_ids=["e7"], pins=["e1"], settings=plain
    )
    built = build_context(
        session_id="s", entries=entries, prompt_ids=["e7"], pins=["e1"], settings=anthropic
    )
    assert built.request.messages[0].role == "assistant"  # still possible: a pinned prompt
    assert base.opening_tokens == 0
    assert opening_tokens() == count_tokens(OPENING) + MESSAGE_TOKENS
    assert built.opening_tokens == opening_tokens()
    assert built.tokens == base.tokens + opening_tokens()
    assert render(built.request, "m")["messages"][0]["content"][0]["text"] == OPENING
    # At a window where the opening does not fit beside the reply, the reply is left out.
    tight = replace(anthropic, window_tokens=base.tokens + 100)
    edge = build_context(
        session_id="s", entries=entries, prompt_ids=["e7"], pins=["e1"], settings=tight
    )
    assert edge.tokens <= edge.budget
    assert "e2" not in edge.included and edge.opening_tokens == 0


def test_the_opening_is_counted_only_when_the_input_opens_with_the_model() -> None:
    entries = pinned_question()
    for size in range(300, 900, 5):
        config = ContextSettings(window_tokens=size, reserve_output_tokens=100)
        built = pinned_first(entries, "e7", replace(config, user_turn_first=True))
        opens = built.request.messages[0].role == "assistant"
        assert built.opening_tokens == (opening_tokens() if opens else 0)
        assert built.tokens == input_tokens(built.request) + built.opening_tokens
        assert built.tokens <= built.budget or len(built.request.messages) == 1


def coalesced_before_the_summary() -> tuple[list[Entry], Summary]:
    """A coalesced run (alice's long question, carol, bob's ``and the date?``, the reply
    for both) said before the summary's end that the summary does not cover: it is quoted
    in the block before the summary, which the edge of the budget may cut."""
    entries = [
        *chatter(1, 5),
        done(6, "alice", QUESTION, 9),
        entry(7, "carol", "carol holds"),
        done(8, "bob", "and the date?", 9),
        answer(9, "Answer to alice: " + ANSWER, 6, 8),
        *chatter(10, 15),
        entry(25, "carol", "final?", EntryKind.PROMPT),
    ]
    covers = frozenset(f"e{n}" for n in [*range(1, 6), *range(10, 15)])
    return entries, Summary("sum-1", 1, 14, covers, "Older chatter.")


def assert_block_runs_whole(*, exact: bool = True) -> None:
    """At every window the coalesced run before the summary is quoted whole or left out
    whole (carol's words inside it too), and the edge falls on both sides of it; the
    budget holds (``exact``: counted as the call sends it)."""
    entries, summary = coalesced_before_the_summary()
    run = {"e6", "e7", "e8", "e9"}
    quoted = out = 0
    for built in windows(entries, "e25", range(330, 1_400, 3), (summary,)):
        assert built.summary == summary
        assert_runs_whole(built, entries)
        given = run & set(built.included)
        assert given in (set(), run), (built.budget, sorted(given))
        assert not exact or built.tokens == input_tokens(built.request)
        if given:
            quoted += 1
            assert "[End of messages said before the summary's end]" in built.request.system
        elif "e15" in built.included:
            out += 1
    assert quoted and out


def test_the_block_before_the_summary_keeps_or_leaves_out_runs_whole() -> None:
    """The budget loop kept a reply quoted in the block of turns said before the summary's
    end whose question did not fit there: the run check looked at the messages only."""
    assert_block_runs_whole()


def coalesced_with_a_tool_step(question: str = QUESTION, said_after: int = 3) -> list[Entry]:
    """alice's ``question`` and bob's ``and the date?`` answered together after a search,
    then ``said_after`` lines of chatter and carol's prompt."""
    return [
        done(1, "alice", question, 5),
        entry(2, "carol", "carol holds"),
        done(3, "bob", "and the date?", 5),
        tool(4, 5, "[search_documents] found: " + "doc line " * 10),
        answer(5, "Answer to alice: " + ANSWER, 1, 3),
        *chatter(6, said_after),
        entry(6 + said_after, "carol", "final?", EntryKind.PROMPT),
    ]


def test_a_reply_whose_question_is_withheld_is_left_out_with_its_tool_steps() -> None:
    """The input holds nothing of a prompt its issuers may not read (docs/permissions.md:
    left out and listed, never marked): the reply written for it, given with bob's
    question alone, read as the answer to bob. bob's words stay, as what he wrote."""
    entries = coalesced_with_a_tool_step()

    def scope(said: Entry) -> str | None:
        return "carol may not read it" if said.id == "e1" else None

    built = build_context(session_id="s", entries=entries, prompt_ids=["e9"], withheld=scope)
    reasons = {x.entry_id: x.reason for x in built.excluded}
    assert reasons == {
        "e1": "withheld: carol may not read it",
        "e4": PROMPT_LEFT_OUT,
        "e5": PROMPT_LEFT_OUT,
    }
    assert [m.role for m in built.request.messages] == ["user"] * 6
    assert built.request.messages[1].content == "[bob wrote]\nand the date?"
    assert_runs_whole(built, entries)
    # Every prompt of it withheld: left out as before, with the reason it had.
    both = build_context(
        session_id="s",
        entries=entries,
        prompt_ids=["e9"],
        withheld=lambda said: "withheld here" if said.id in ("e1", "e3") else None,
    )
    assert {x.entry_id: x.reason for x in both.excluded if x.entry_id in ("e4", "e5")} == {
        "e4": RUN_LEFT_OUT,
        "e5": RUN_LEFT_OUT,
    }


def test_a_reply_whose_pinned_question_is_over_the_pins_share_is_left_out() -> None:
    """A pinned prompt over the pins' share is in neither the system text nor the story:
    its reply and tool steps go out with it (listed), and a later copy of the reply that
    named it is given in full, counted so."""
    entries = [
        *coalesced_with_a_tool_step()[:-1],
        done(9, "bob", "repeat it please", 10),
        answer(10, "Answer to alice: " + ANSWER, 9),
        entry(11, "carol", "final?", EntryKind.PROMPT),
    ]
    roomy = ContextSettings(window_tokens=4_000, reserve_output_tokens=100)
    for share, given in ((0.5, True), (0.05, False)):
        built = pinned_first(entries, "e11", replace(roomy, fixed_share=share))
        assert_runs_whole(built, entries)
        assert built.tokens == input_tokens(built.request) <= built.budget
        sent = dict(zip((s[-1] for s in built.sources), built.request.messages, strict=True))
        reasons = {x.entry_id: x.reason for x in built.excluded}
        if given:
            assert "message #1" in built.request.system and {"e4", "e5"} <= sent.keys()
            assert sent["e10"].content == "[the same reply as to message #3]"
            continue
        assert reasons == {
            "e1": "pinned, over the pins' share of the window",
            "e4": PROMPT_LEFT_OUT,
            "e5": PROMPT_LEFT_OUT,
        }
        assert "e3" in sent and sent["e10"].content == "Answer to alice: " + ANSWER


def test_the_block_fitted_as_a_whole_keeps_or_leaves_out_runs_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step that fits the block as a whole ran after the run check, and took out its
    oldest turns: alice's question, the reply kept. cl100k_base counts the block at most
    as its parts (the budget loop's count): a counter that counts it higher makes the step
    take turns out."""

    def higher(system: str) -> int:
        return system_text_tokens(system) + (40 if EARLIER_LINE in system else 0)

    monkeypatch.setattr("parley.session.context.system_text_tokens", higher)
    assert_block_runs_whole(exact=False)


def pinned_answer() -> list[Entry]:
    """The coalesced run, its reply to be pinned, then chatter that pushes it out of the
    window; carol asks (``e36``)."""
    return coalesced_with_a_tool_step("which rollout plan do we follow?", 30)


def test_a_pinned_reply_is_given_with_the_prompts_it_answers() -> None:
    """A pinned reply was given among the pins whatever became of its question: once the
    window left the prompts out, the model read an answer to nothing it was shown. The
    prompts it answers go with it, quoted before it in the pins (given once: not in the
    story too), at every window; its search stays in the story."""
    entries = pinned_answer()
    for built in windows(entries, "e36", range(750, 2_000, 7), pins=("e5",)):
        assert {"e1", "e3", "e5"} <= set(built.included)
        assert built.tokens == input_tokens(built.request) <= built.budget
        system = built.request.system
        alice = system.index("[alice wrote, message #1]")
        bob = system.index("[bob wrote, message #3]")
        assert alice < bob < system.index("[the assistant's reply, message #3]")
        assert not {"e1", "e3", "e5"} & {i for s in built.sources for i in s}
        assert not {"e1", "e3", "e5"} & {x.entry_id for x in built.excluded}


def test_a_pinned_replys_prompts_over_the_pins_share_are_listed_as_its_companions() -> None:
    """A prompt given with a pinned reply was listed as ``pinned, over the pins' share``
    when the share left the reply out: it was not pinned. Listed as what it is, the reply
    as the pin; a prompt pinned itself too is listed as a pin."""
    for pins, pinned in ((("e5",), {"e5"}), (("e5", "e3"), {"e3", "e5"})):
        built = build_context(
            session_id="s",
            entries=pinned_answer(),
            prompt_ids=["e36"],
            pins=pins,
            settings=ContextSettings(reserve_output_tokens=100, fixed_share=0.001),
        )
        reasons = {x.entry_id: x.reason for x in built.excluded if x.entry_id in PROMPTS_AND_REPLY}
        assert reasons == {
            entry_id: PIN_LEFT_OUT if entry_id in pinned else PINNED_REPLY_LEFT_OUT
            for entry_id in PROMPTS_AND_REPLY
        }
        assert "[Pinned messages" not in built.request.system


PROMPTS_AND_REPLY = ("e1", "e3", "e5")


@pytest.mark.parametrize(
    ("hidden", "reply_out"),
    [(("e1",), PROMPT_LEFT_OUT), (("e4", "e5"), "withheld: withheld here")],
)
def test_a_pinned_reply_not_given_leaves_its_prompts_in_the_story(
    hidden: tuple[str, ...], reply_out: str
) -> None:
    """Withheld from the issuers, a prompt takes its run's reply out, pinned or not
    (unmarked, listed), and a pinned reply withheld is not given either: the prompts left
    are what their members wrote, in the story as before."""
    built = build_context(
        session_id="s",
        entries=pinned_answer(),
        prompt_ids=["e36"],
        pins=["e5"],
        withheld=lambda said: "withheld here" if said.id in hidden else None,
    )
    reasons = {x.entry_id: x.reason for x in built.excluded}
    assert reasons["e5"] == reply_out and "[Pinned messages" not in built.request.system
    sent = [m.content for m in built.request.messages]
    assert "[bob wrote]\nand the date?" in sent
    assert ("[alice wrote]\nwhich rollout plan do we follow?" in sent) is ("e1" not in hidden)


def test_pinning_a_reply_and_unpinning_it_builds_what_a_build_from_nothing_builds() -> None:
    """The builder keeps its fold between builds: a reply pinned and unpinned moves its
    prompts into the pins and back into the story, as a build from nothing has them."""
    entries = pinned_answer()
    builder = ContextBuilder()
    for pins in ([], ["e5"], [], ["e3", "e5"], ["e5"], ["e1"], []):
        kept = builder.build(session_id="s", entries=entries, prompt_ids=["e36"], pins=pins)
        fresh = build_context(session_id="s", entries=entries, prompt_ids=["e36"], pins=pins)
        assert kept.request == fresh.request and kept.excluded == fresh.excluded, pins


def test_the_summary_covers_past_a_run_left_out_with_its_pinned_prompt() -> None:
    """A reply left out with its pinned prompt (over the pins' share) is never summarised:
    the summariser would read an answer with no question. The turns summarised after it
    counted as not known to be covered, so every build walked them all again and listed
    them as set aside by the budget loop. The build knows them summarised; the reply is
    listed apart once, and no summary reads it."""
    entries = [done(1, "alice", "which plan?", 2), answer(2, ANSWER, 1), *chatter(3, 120)]
    builder = ContextBuilder(ContextSettings(window_tokens=1_000, fixed_share=0.01))
    summaries: list[Summary] = []
    for n in range(20):
        built = builder.build(
            session_id="s", entries=entries, prompt_ids=[], pins=["e1"], summaries=summaries
        )
        assert built.runs_left == ("e2",)
        plan = plan_extension(
            built.dropped, built.summary, min_tokens=50, window_tokens=4_000, max_output_tokens=50
        )
        if plan is None:
            break
        assert "e2" not in plan.new_ids
        summaries.append(extended(plan, f"sum-{n}", f"summary {n}"))
    assert summaries and built.summary == summaries[-1] and not built.dropped
    covered = {i for item in built.summarised for i in item.entry_ids} - {"e2"}
    assert covered == set(built.summary.covers) and not built.left
    reasons = [x.reason for x in built.excluded if x.entry_id == "e2"]
    assert reasons == [PROMPT_LEFT_OUT]


def test_what_a_call_is_not_given_yet_adds_once_its_runs_end() -> None:
    """FX70: a preview's ``pending_tokens``: the run in flight and a prompt answered first,
    as they stand, add to the input what a build gives of them once their runs end (with
    the reply's text so far): a tool step still out and a blank reply add nothing."""
    before = [entry(1, "bob", "an earlier note"), done(2, "bob", "an earlier question")]
    in_flight = [
        replace(entry(3, "carol", "carol asks", EntryKind.PROMPT, "running"), reply_id="e6"),
        tool(4, 6, "search_documents\nresult: the passage"),
        replace(tool(5, 6, "arguments: {}"), status="running"),
        replace(answer(6, "the answer so far", 3), status="streaming"),
        entry(7, "dave", "dave asks", EntryKind.PROMPT),
    ]
    settings = ContextSettings()
    pending = not_given_tokens(in_flight, settings.min_block_lines)
    ended = [
        replace(in_flight[0], status="done"),
        in_flight[1],
        replace(in_flight[2], status="interrupted"),
        replace(in_flight[3], status="done"),
        replace(in_flight[4], status="done"),
    ]
    given = build_context(session_id="s", entries=before, prompt_ids=(), settings=settings)
    grown = build_context(
        session_id="s", entries=[*before, *ended], prompt_ids=(), settings=settings
    )
    assert pending > 0 and grown.tokens == given.tokens + pending
    blank = replace(in_flight[3], content=" ")
    assert not_given_tokens([blank, in_flight[2]], settings.min_block_lines) == 0
