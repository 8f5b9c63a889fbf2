"""A run's scope: computed once, when the run starts, from its issuers' grants at that moment.

A run acts with the rights every one of its issuers has (one issuer usually; several when a
coalesced run answers them together): the tools offered are those all of them may use, and
it may draw only on what all of them may read. Nothing the model says widens it. Each
later step is judged on the issuers as they are then: the run goes no further once one of
them may no longer read what it drew on (``drawn_refusal``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from parley.authz.policy import Do, Read, Restriction, Subject, UseTool, decide, restrict
from parley.authz.roles import Capability
from parley.session.context import BuiltContext
from parley.session.errors import Forbidden
from parley.session.history import ReadFilter
from parley.session.model import ToolSpec


@dataclass(frozen=True, slots=True)
class ToolDef:
    """A tool Parley can run, and the capability a member needs to use it."""

    spec: ToolSpec
    capability: str


@dataclass(frozen=True, slots=True)
class RunScope:
    issuers: tuple[Subject, ...]
    tools: tuple[ToolDef, ...]

    @property
    def capabilities(self) -> frozenset[str]:
        """What every issuer may do."""
        return frozenset.intersection(*(s.capabilities for s in self.issuers))

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self.tools)

    def tool(self, name: str) -> ToolDef | None:
        """The tool ``name`` if this run offers it, else None (the call must be refused)."""
        return next((t for t in self.tools if t.spec.name == name), None)

    def with_tools(self, tools: Sequence[ToolDef]) -> RunScope:
        """This scope offering those of ``tools`` every issuer may use."""
        offered = tuple(
            tool
            for tool in tools
            if all(
                decide(s, UseTool(tool.spec.name, tool.capability)).allowed for s in self.issuers
            )
        )
        return RunScope(self.issuers, offered)

    def withheld(self, restriction: Restriction) -> str | None:
        """None if every issuer may read something with ``restriction``, else why not."""
        for subject in self.issuers:
            decision = decide(subject, Read(restriction))
            if not decision.allowed:
                return f"{subject.user_id} may not read it ({decision.reason})"
        return None

    def read_filter(
        self, restrictions: Mapping[str, Restriction], private_text: Mapping[str, str]
    ) -> tuple[ReadFilter, dict[str, str]]:
        """What ``session.context.build_context`` takes as ``withheld`` and ``private_text``:
        entries (by id) this scope may not read are withheld; of the server-side texts
        behind placeholders, only those it may read are given. Each restriction is judged
        once here, not once per entry of the transcript."""
        read = ReadFilter(self.withheld(()), {i: self.withheld(r) for i, r in restrictions.items()})
        readable = {
            entry_id: text
            for entry_id, text in private_text.items()
            if read.restricted.get(entry_id, read.unrestricted) is None
        }
        return read, readable


def prompt_refusal(subject: Subject | None) -> str | None:
    """Why ``subject`` (a member now, or None) may not have a prompt of theirs run; None
    when they may (they read the session and prompt)."""
    for needed in (Capability.READ_SESSION, Capability.PROMPT):
        decision = decide(subject, Do(needed))
        if not decision.allowed:
            return decision.reason
    return None


def drawn_refusal(
    issuers: Iterable[tuple[str, Subject | None]], restriction: Restriction
) -> str | None:
    """Why a run that drew on ``restriction`` may take no further step for its issuers as
    they are now (user id, member now or None): the first of them who may not read it.
    None when every one still may. A coalesced run draws only on what all its issuers may
    read, so one who loses it stops the run for all of them."""
    for user_id, subject in issuers:
        if subject is None:
            return f"{user_id} is no longer a member of this session"
        decision = decide(subject, Read(restriction))
        if not decision.allowed:
            return f"{user_id} may no longer read what this run drew on ({decision.reason})"
    return None


def scope_for_run(
    issuers: Sequence[tuple[str, Subject | None]], tools: Sequence[ToolDef]
) -> RunScope:
    """The scope of a run answering prompts by ``issuers`` (user id, member now or None).

    Raises ``Forbidden`` naming the first issuer who may no longer prompt."""
    subjects: list[Subject] = []
    for user_id, subject in issuers:
        refusal = prompt_refusal(subject)
        if refusal is not None:
            raise Forbidden(f"{user_id}: {refusal}")
        assert subject is not None
        if subject not in subjects:
            subjects.append(subject)
    if not subjects:
        raise ValueError("a run has at least one issuer")
    return RunScope(tuple(subjects), ()).with_tools(tools)


@dataclass(frozen=True, slots=True)
class ContextSeen:
    """What a run's model input drew on (entry ids, and the summary given with it), what
    was withheld from it and why, and the restriction its reply inherits."""

    included: list[str]
    withheld: list[dict[str, str]]
    restriction: Restriction
    summary: str | None = None


def seen_in_context(built: BuiltContext, restrictions: Mapping[str, Restriction]) -> ContextSeen:
    """For the audit and the reply's readers: what the built model input drew on, what was
    withheld from it and why, and the restriction of what it drew on (a reply inherits it).

    A summary given in the input counts for everything it covers: its text carries what
    those entries said, so a reply drawn from it inherits their readers too (a summary is
    made from what every member may read when it is made, not from what is unrestricted).

    So does every pin the issuers may read that the pins' share left out (``pins_left``):
    whether it fits depends on facts and pins that members who may not read it set,
    counting it at its placeholder (review R3-1), so a reply that went shared when it
    did not fit told them its size (review R6-1)."""
    included = list(built.included)
    withheld = [{"entry_id": x.entry_id, "reason": x.reason} for x in built.withheld]
    drawn = [restrictions.get(i, ()) for i in (*included, *built.pins_left)]
    summary = built.summary
    if summary is not None:
        drawn += [r for i, r in restrictions.items() if i in summary.covers]
    return ContextSeen(
        included, withheld, restrict(*drawn), None if summary is None else summary.id
    )
