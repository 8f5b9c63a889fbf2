"""judge_membership_change: nobody hands out access they do not hold."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.authz.membership import (
    ADMIN,
    NO_TRACES,
    Traces,
    judge_invite,
    judge_membership_change,
    reader_refusal,
)
from parley.authz.policy import Readers, Subject, may_read
from parley.authz.roles import Capability, Member, RoleTable, capabilities_of

OWNER_CAPS = frozenset(Capability)
EDITORS_ONLY = Readers("plans", roles=frozenset({"editor"}))
OWNERS = Readers("board", roles=frozenset({"owner"}))
TABLE = RoleTable(
    {
        "manager": frozenset({Capability.READ_SESSION, Capability.MANAGE_MEMBERS}),
        "support": frozenset({Capability.READ_SESSION, Capability.PROMPT}),
    }
)


def judge(
    actor: Member | None,
    before: Member | None,
    after: Member | None,
    documents: tuple[Readers, ...] = (EDITORS_ONLY, OWNERS),
) -> tuple[bool, str]:
    decision = judge_membership_change(actor, before, after, TABLE, documents)
    return decision.allowed, decision.reason


def test_an_owner_may_not_make_herself_an_editor_to_read_what_editors_read() -> None:
    carol = Member("carol", "owner")
    allowed, reason = judge(carol, carol, Member("carol", "editor", grants=OWNER_CAPS))
    assert not allowed and "narrow your own" in reason and "read:plans" in reason


def test_an_owner_may_not_lift_her_own_denial() -> None:
    dave = Member("dave", "owner", denials=frozenset({"read:board"}))
    allowed, reason = judge(dave, dave, Member("dave", "owner"))
    assert not allowed and "read:board" in reason
    # Lifting a denial of something no document uses yet is widening too.
    dana = Member("dana", "owner", denials=frozenset({"tool:deploy"}))
    assert not judge(dana, dana, Member("dana", "owner"))[0]


def test_a_member_may_narrow_their_own_membership() -> None:
    carol = Member("carol", "owner")
    assert judge(carol, carol, Member("carol", "owner", denials=frozenset({"read_audit"})))[0]
    assert judge(carol, carol, None)[0]  # leaving
    assert judge(carol, carol, carol)[0]  # no change


def test_an_owner_may_not_grant_a_role_that_reads_what_she_cannot() -> None:
    olga = Member("olga", "owner")
    allowed, reason = judge(olga, None, Member("eve", "editor"))
    assert not allowed and "read access you do not have: plans" in reason
    # Unless the new editor is denied that document, or no document is editors-only.
    assert judge(olga, None, Member("eve", "editor", denials=frozenset({"read:plans"})))[0]
    assert judge(olga, None, Member("eve", "editor"), documents=(OWNERS,))[0]
    # And she may not lift that denial later, but someone who reads the document may.
    denied = Member("eve", "editor", denials=frozenset({"read:plans"}))
    assert not judge(olga, denied, Member("eve", "editor"))[0]
    ed = Member("ed", "editor", grants=frozenset({Capability.MANAGE_MEMBERS}))
    assert judge(ed, denied, Member("eve", "editor"), documents=(EDITORS_ONLY,))[0]


def test_read_grants_are_capabilities_the_granter_must_hold() -> None:
    olga = Member("olga", "owner")
    assert not judge(olga, None, Member("v", "viewer", grants=frozenset({"read:plans"})))[0]
    holder = Member("h", "owner", grants=frozenset({"read:plans"}))
    assert judge(holder, None, Member("v", "viewer", grants=frozenset({"read:plans"})))[0]


def test_a_manager_may_hand_out_only_what_they_hold() -> None:
    m = Member("m", "manager")
    assert judge(m, None, Member("s", "manager"))[0]
    allowed, reason = judge(m, None, Member("v", "viewer"))
    assert not allowed and "be_present" in reason  # viewers are present; m is not
    # A grant named is handed out even when it is denied at once.
    denied = Member("v", "viewer", denials=frozenset({"be_present"}))
    assert not judge(m, None, denied)[0]
    assert not judge(m, Member("o", "owner"), Member("o", "viewer"))[0]  # o holds more
    assert not judge(m, Member("o", "owner"), None)[0]


def test_the_admin_may_do_anything_and_strangers_nothing() -> None:
    assert judge_membership_change(ADMIN, None, Member("x", "owner"), TABLE, ()).allowed
    assert not judge(None, None, Member("x", "viewer"))[0]
    assert not judge(Member("e", "editor"), None, Member("x", "viewer"))[0]


# -- property: no change judged allowed gives the target access the actor lacks ---------------

USERS = ["a", "b", "c"]
ROLES = ["owner", "editor", "viewer", "manager", "support", "ghost"]  # ghost: undefined
RESOURCES = ["r0", "r1", "r2"]
CAPS = [*Capability, "tool:deploy", *(f"read:{r}" for r in RESOURCES)]

caps = st.frozensets(st.sampled_from(CAPS), max_size=4)


@cache  # one strategy per user: Hypothesis validates each new strategy on its first draw
def members(user: str) -> st.SearchStrategy[Member]:
    return st.builds(
        lambda role, grants, denials: Member(user, role, grants, denials),
        st.sampled_from(ROLES),
        caps,
        caps,
    )


@cache
def member_or_none(user: str) -> st.SearchStrategy[Member | None]:
    return st.none() | members(user)


def with_manage(member: Member) -> Member:
    grants = member.grants | {Capability.MANAGE_MEMBERS}
    return Member(member.user_id, member.role, grants, member.denials - grants)


documents = st.lists(
    st.builds(
        Readers,
        st.sampled_from(RESOURCES),
        st.frozensets(st.sampled_from(USERS)),
        st.frozensets(st.sampled_from(ROLES)),
    ),
    max_size=4,
)


def access(member: Member | None, docs: list[Readers]) -> tuple[frozenset[str], frozenset[str]]:
    """What a member may do, and which resources they may read, by the policy itself."""
    if member is None:
        return frozenset(), frozenset()
    subject = Subject.of(member, TABLE)
    reads = frozenset(r.resource for r in docs if may_read(subject, (r,)))
    return capabilities_of(member, TABLE), reads


@st.composite
def changes(draw: st.DrawFn) -> tuple[Member, Member | None, Member | None, list[Readers]]:
    actor = draw(members("a"))
    if draw(st.booleans()):
        actor = with_manage(actor)
    target = draw(st.sampled_from(["a", "b"]))
    before = actor if target == "a" else draw(member_or_none("b"))
    after = draw(member_or_none(target))
    if before is not None and draw(st.booleans()):  # often: the same, some denials lifted
        kept = (
            draw(st.frozensets(st.sampled_from(sorted(before.denials))))
            if before.denials
            else before.denials
        )
        after = Member(target, before.role, before.grants, kept)
    return actor, before, after, draw(documents)


@settings(max_examples=1000, deadline=None)
@given(changes())
def test_no_change_judged_allowed_gives_access_the_actor_lacks(
    change: tuple[Member, Member | None, Member | None, list[Readers]],
) -> None:
    actor, before, after, docs = change
    if not judge_membership_change(actor, before, after, TABLE, docs).allowed:
        return
    actor_caps, actor_reads = access(actor, docs)
    before_caps, before_reads = access(before, docs)
    after_caps, after_reads = access(after, docs)
    assert after_caps - before_caps <= actor_caps
    assert after_reads - before_reads <= actor_reads
    if before is not None and after is not None:
        for lifted in before.denials - after.denials:
            kind, _, resource = lifted.partition(":")
            assert lifted in actor_caps or (kind == "read" and resource in actor_reads)
    if actor.user_id == (after or before or actor).user_id:  # themselves: only narrower
        assert after_caps <= before_caps and after_reads <= before_reads
        if after is not None:
            assert actor.denials <= after.denials


@settings(max_examples=300, deadline=None)
@given(members("a"), member_or_none("b"), documents)
def test_removing_or_leaving_alone_is_allowed_to_whoever_holds_the_target(
    actor: Member, target: Member | None, docs: list[Readers]
) -> None:
    """Changes that give nothing are refused only for rights the actor lacks."""
    actor = with_manage(actor)
    held = capabilities_of(actor, TABLE)
    raw = frozenset() if target is None else TABLE.capabilities(target.role) | target.grants
    for after in (None, target):
        allowed = judge_membership_change(actor, target, after, TABLE, docs).allowed
        assert allowed == (raw <= held)


def test_an_invite_hands_out_only_what_its_minter_holds() -> None:
    def invite(actor: Member | None, target: Member) -> bool:
        return judge_invite(actor, target, TABLE, (EDITORS_ONLY, OWNERS), NO_TRACES).allowed

    manager = Member("m", "manager")
    assert invite(manager, Member("s", "manager"))
    assert not invite(manager, Member("o", "owner"))  # a link to the owner's access
    assert not invite(manager, Member("e", "editor"))  # editors read what m cannot
    assert invite(manager, manager)  # a link for oneself: one's own access
    assert not invite(Member("e", "editor"), Member("e", "editor"))  # manages no members
    assert invite(Member("o", "owner"), Member("v", "viewer"))
    assert not invite(None, Member("v", "viewer"))
    assert judge_invite(ADMIN, Member("o", "owner"), TABLE, (), NO_TRACES).allowed


# One webhook tool's results share a resource, each with readers of its own.
CRM_OLGA = Readers("tool:crm", users=frozenset({"olga"}))
CRM_EDITORS = Readers("tool:crm", roles=frozenset({"editor"}))


def test_reading_one_list_of_a_resource_hands_out_none_of_its_others() -> None:
    """Review: lists were judged by their resource alone, so olga, who may read her own
    crm result, could add an editor (who reads the editors' crm result, which she may
    not) or make herself an editor."""
    olga = Member("olga", "owner")
    lists = (CRM_OLGA, CRM_EDITORS)
    allowed, reason = judge(olga, None, Member("newbie", "editor"), lists)
    assert not allowed and "read access you do not have: tool:crm" in reason
    allowed, reason = judge(olga, olga, Member("olga", "editor", grants=OWNER_CAPS), lists)
    assert not allowed and "narrow your own" in reason and "read:tool:crm" in reason
    assert not judge_invite(olga, Member("newbie", "editor"), TABLE, lists, NO_TRACES).allowed
    # Where she reads every list of it, she may.
    both = (CRM_OLGA, Readers("tool:crm", roles=frozenset({"editor", "owner"})))
    assert judge(olga, None, Member("newbie", "editor"), both)[0]


def test_a_denial_is_lifted_only_by_one_who_reads_every_list_it_denies() -> None:
    olga = Member("olga", "owner")
    denied = Member("ed", "editor", denials=frozenset({"read:tool:crm"}))
    lifted = Member("ed", "editor")
    assert not judge(olga, denied, lifted, (CRM_OLGA, CRM_EDITORS))[0]
    readable_by_olga = (CRM_OLGA, Readers("tool:crm", roles=frozenset({"editor", "owner"})))
    assert judge(olga, denied, lifted, readable_by_olga)[0]


def test_a_refusal_names_capabilities_as_people_write_them() -> None:
    """Review: "…you do not hold: [<Capability.BE_PRESENT: 'be_present'>, …]"."""
    mm = Member("mm", "manager")
    reasons = [
        judge(mm, None, Member("x3", "editor"))[1],
        judge(mm, mm, Member("mm", "manager", grants=frozenset({Capability.PROMPT})))[1],
    ]
    assert reasons[0].endswith(
        "do not hold: be_present, cancel_own, pin, post_message, prompt, tool:search_documents"
    )
    assert reasons[1].endswith("not add prompt")


def test_a_members_link_may_not_name_a_user_the_server_already_knows() -> None:
    """Review RI-2: an owner minted a link for bob, an editor who had signed in, and
    exchanging it herself read his private side-threads, listed his other sessions and
    prompted as him. A link a member mints for someone else names only a user the server
    knows nothing of but this membership; the user's own links and the admin key's are
    not limited."""
    owner, bob = Member("olga", "owner"), Member("bob", "editor")
    lists = (OWNERS,)
    assert judge_invite(owner, bob, TABLE, lists, NO_TRACES).allowed
    reasons = set()
    for traces in (
        Traces(signed_in=True),
        Traces(authored=True),
        Traces(side_threads=True),
        Traces(other_sessions=True),
    ):
        decision = judge_invite(owner, bob, TABLE, lists, traces)
        assert not decision.allowed and "only they or the admin key" in decision.reason
        reasons.add(decision.reason)
        assert judge_invite(ADMIN, bob, TABLE, lists, traces).allowed
        own = Member("mo", "manager")
        assert judge_invite(own, own, TABLE, lists, traces).allowed  # a second device
    assert len(reasons) == 1  # which trace it is (other sessions, say) is bob's business
    # What the maker may not hand out is refused first, as before.
    refused = judge_invite(Member("m", "manager"), Member("o", "owner"), TABLE, (), NO_TRACES)
    assert not refused.allowed and "hands out their access" in refused.reason


def test_a_link_token_is_refused_by_the_reader_lists_alone_once_its_member_reads_more() -> None:
    """Review RM-1: a token from alice's link for an editor, raised to owner, read the
    board alice is denied. ``reader_refusal`` judges the reader lists (at a membership
    change); what is judged at each use (no maker, no ``manage_members``, capabilities
    beyond the maker's) is left to ``authz.tokens.maker_refusal``."""
    alice = Member("alice", "owner", denials=frozenset({"read:board"}))
    carol = Member("carol", "editor")
    lists = (OWNERS,)
    assert reader_refusal(carol, alice, TABLE, lists) is None
    raised = reader_refusal(Member("carol", "owner"), alice, TABLE, lists)
    assert raised is not None and "board" in raised
    assert reader_refusal(Member("carol", "owner"), alice, TABLE, ()) is None
    assert reader_refusal(Member("carol", "owner"), None, TABLE, lists) is None
    lowered = Member("alice", "editor", denials=frozenset({"read:board"}))
    assert reader_refusal(Member("carol", "owner"), lowered, TABLE, lists) is None
