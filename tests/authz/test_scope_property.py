"""Property: for any roles, grants, denials, document readers and transcript, no model input
contains an item its issuers may not read (and every item they may read is offered)."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from parley.authz.policy import Readers, Restriction, Subject
from parley.authz.roles import Capability, Member, RoleTable
from parley.authz.scope import RunScope, drawn_refusal, scope_for_run
from parley.session.context import build_context
from parley.session.errors import Forbidden
from parley.session.schema import SessionDocument

USERS = ["u0", "u1", "u2", "u3"]
DOCS = ["d0", "d1", "d2"]
TABLE = RoleTable({"support": frozenset({Capability.READ_SESSION, Capability.PROMPT})})
ROLES = ["owner", "editor", "viewer", "support"]
READ_GRANTS = [f"read:{d}" for d in DOCS]

members = st.fixed_dictionaries(
    {
        user: st.builds(
            lambda role, grants, denials, u=user: Member(u, role, grants, denials),
            st.sampled_from(ROLES),
            st.frozensets(st.sampled_from(READ_GRANTS)),
            st.frozensets(st.sampled_from([*READ_GRANTS, Capability.READ_SESSION])),
        )
        for user in USERS
    }
)
readers = st.fixed_dictionaries(
    {
        doc: st.builds(
            lambda users, roles, d=doc: Readers(d, users, roles),
            st.frozensets(st.sampled_from(USERS)),
            st.frozensets(st.sampled_from(ROLES)),
        )
        for doc in DOCS
    }
)
story = st.lists(
    st.tuples(
        st.sampled_from(["message", "exchange"]),
        st.sampled_from(USERS),
        st.frozensets(st.sampled_from(DOCS), max_size=2),
        st.booleans(),  # pinned
    ),
    max_size=12,
)


def build(story: list[Any], docs: dict[str, Readers]) -> tuple[SessionDocument, dict, dict]:
    doc = SessionDocument(Doc())
    restrictions: dict[str, Restriction] = {}
    private: dict[str, str] = {}
    for index, (kind, author, drawn, pinned) in enumerate(story):
        seq = index + 1
        restriction = tuple(docs[d] for d in sorted(drawn))
        text = f"item{index}x secret" if restriction else f"item{index}x open"
        shown = "[restricted]" if restriction else text
        entry_id = f"e{index}"
        if kind == "message":
            doc.add_message(id=entry_id, seq=seq, author=author, text=shown, created_at=seq)
        else:
            # A prompt and a reply that drew on restricted documents.
            doc.add_prompt(id=f"p{index}", seq=seq, author=author, text="ask", created_at=seq)
            doc.start_reply(prompt_ids=[f"p{index}"], reply_id=entry_id, author="m", created_at=1)
            doc.append_reply_text(entry_id, shown)
            doc.finish_prompts([f"p{index}"])
        if restriction:
            restrictions[entry_id] = restriction
            private[entry_id] = text
        if pinned:
            doc.pin(entry_id)
    return doc, restrictions, private


@settings(max_examples=300, deadline=None)
@given(
    members=members,
    docs=readers,
    story=story,
    issuers=st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True),
)
def test_no_model_input_holds_what_its_issuers_may_not_read(
    members: dict[str, Member],
    docs: dict[str, Readers],
    story: list[Any],
    issuers: list[str],
) -> None:
    subjects = {u: Subject.of(m, TABLE) for u, m in members.items()}
    try:
        scope = scope_for_run([(u, subjects[u]) for u in issuers], [])
    except Forbidden:
        assume(False)
        return
    doc, restrictions, private = build(story, docs)
    prompt_ids = []
    for n, issuer in enumerate(issuers):
        doc.add_prompt(id=f"q{n}", seq=100 + n, author=issuer, text="and now?", created_at=0)
        prompt_ids.append(f"q{n}")
    withheld, readable = scope.read_filter(restrictions, private)
    built = build_context(
        session_id="s",
        entries=doc.entries(),
        prompt_ids=prompt_ids,
        pins=doc.pinned(),
        withheld=withheld,
        private_text=readable,
    )
    given_text = built.request.system + "\n".join(m.content for m in built.request.messages)
    for index, (_, _, drawn, _) in enumerate(story):
        restriction = tuple(docs[d] for d in sorted(drawn))
        may = all(
            all(
                f"read:{r.resource}" not in s.denials
                and (
                    s.user_id in r.users
                    or s.role in r.roles
                    or f"read:{r.resource}" in s.capabilities
                )
                for r in restriction
            )
            and Capability.READ_SESSION in s.capabilities
            for s in scope.issuers
        )
        if may:
            assert f"item{index}x" in given_text
        else:
            assert f"item{index}x" not in given_text
            assert any(x.entry_id == f"e{index}" for x in built.excluded)


@settings(max_examples=300, deadline=None)
@given(
    before=members,
    after=members,
    docs=readers,
    drawn=st.frozensets(st.sampled_from(DOCS), max_size=2),
    issuers=st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True),
)
def test_a_run_goes_on_exactly_while_its_issuers_may_read_what_it_drew_on(
    before: dict[str, Member],
    after: dict[str, Member],
    docs: dict[str, Readers],
    drawn: frozenset[str],
    issuers: list[str],
) -> None:
    """What a run drew on is within its scope as it started (all its issuers may read it);
    with their grants changed since, it goes on only if every one of them still may: the
    scope's own judgement of the same material, for a run starting now."""
    restriction = tuple(docs[d] for d in sorted(drawn))
    then = [(u, Subject.of(before[u], TABLE)) for u in issuers]
    try:
        started = scope_for_run(then, [])
    except Forbidden:
        assume(False)
        return
    assume(started.withheld(restriction) is None)
    assert drawn_refusal(then, restriction) is None
    now = [(u, Subject.of(after[u], TABLE)) for u in issuers]
    judged_now = RunScope(tuple(s for _, s in now), ())
    assert (drawn_refusal(now, restriction) is None) == (judged_now.withheld(restriction) is None)
