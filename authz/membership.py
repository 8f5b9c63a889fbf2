"""The one judge of membership changes: may ``actor`` turn ``before`` into ``after``?

Nobody hands out access they do not hold. A member's access is what they may do (their
capabilities) and what they may read: the reader lists of the session's documents and
restricted items name users and *roles*, and ``read:<resource>`` grants and denials widen
or narrow them. So a role is judged by what it reads, not only by the capabilities it
carries, and lifting a denial is judged like a grant. The rules, in the order checked:

1. the admin key may make any change; someone who is not a member may make none;
2. a member needs ``manage_members``;
3. a member changing themselves may only narrow: nothing gained to do or to read, no
   denial lifted;
4. the capabilities of the target's role and grants, before and after, must be within the
   actor's own (nobody hands out, or takes from others, more than they hold);
5. whatever the target may read after the change and could not before, the actor must be
   able to read (among the reader lists there are now: a list naming a role that comes
   later is read by whoever holds the role then, as its author chose);
6. a denial is lifted only by someone who holds what it denies.

Pure: the caller passes the members as stored, the live role table and the reader lists
(and, for an invite link, what the server holds of the user it names: ``Traces``);
every REST path that adds, changes or removes a member asks here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from parley.authz.policy import Decision, Read, Readers, Subject, decide
from parley.authz.roles import Capability, Member, RoleTable, capabilities_of


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin key: trusted with every change."""


ADMIN = Admin()

Actor = Member | Admin | None
"""Who asks: a member as stored, the admin key, or None (someone who is not a member)."""


def readable(
    member: Member | None, roles: RoleTable, documents: Iterable[Readers]
) -> frozenset[Readers]:
    """The reader lists among ``documents`` that ``member`` may read (none when not a
    member). Lists, not resources: the results of one webhook tool share a resource
    (``tool:<name>``) but each names its own readers (review: reading one result let an
    owner hand out, or give herself, read access to every other)."""
    if member is None:
        return frozenset()
    subject = Subject.of(member, roles)
    return frozenset(r for r in documents if decide(subject, Read((r,))).allowed)


def holds(
    subject: Subject, granted: str, reads: frozenset[Readers], lists: Iterable[Readers]
) -> bool:
    """Whether ``subject`` holds ``granted``: as a capability, or (``read:<resource>``) by
    being able to read every one of ``lists`` of the resource, and there being one
    (``reads``: those they may read)."""
    if granted in subject.capabilities:
        return True
    kind, _, resource = granted.partition(":")
    of_resource = [r for r in lists if r.resource == resource]
    return kind == "read" and bool(of_resource) and all(r in reads for r in of_resource)


def _resources(lists: Iterable[Readers]) -> list[str]:
    return sorted({r.resource for r in lists})


def _named(names: Iterable[str]) -> str:
    """Capability or document names as a reader sees them: ``be_present, read_session``,
    not a list of ``Capability`` members' reprs (review)."""
    return ", ".join(sorted(str(name) for name in names))


def _raw(member: Member | None, roles: RoleTable) -> frozenset[str]:
    """What a member's role and grants name, denials aside."""
    return frozenset() if member is None else roles.capabilities(member.role) | member.grants


def _effective(member: Member | None, roles: RoleTable) -> frozenset[str]:
    return frozenset() if member is None else capabilities_of(member, roles)


def judge_membership_change(
    actor: Actor,
    before: Member | None,
    after: Member | None,
    roles: RoleTable,
    documents: Iterable[Readers],
) -> Decision:
    """May ``actor`` change one member from ``before`` to ``after`` (None: not a member,
    so None → member adds, member → None removes)? ``documents``: the reader lists of
    everything in the session that has one. The reason names what was refused."""
    if isinstance(actor, Admin):
        return Decision(True, "the admin key")
    if actor is None:
        return Decision(False, "you are not a member of this session")
    target = (after or before or actor).user_id
    if before is not None and after is not None and before.user_id != after.user_id:
        raise ValueError("a membership change is of one user")
    held = capabilities_of(actor, roles)
    if Capability.MANAGE_MEMBERS not in held:
        return Decision(False, f"a {actor.role} may not manage members here")
    lists = tuple(documents)
    subject = Subject.of(actor, roles)
    actor_reads = readable(actor, roles, lists)
    gained = _effective(after, roles) - _effective(before, roles)
    gained_reads = readable(after, roles, lists) - readable(before, roles, lists)
    lifted = (
        before.denials - after.denials if before is not None and after is not None else frozenset()
    )
    if target == actor.user_id and (gained or gained_reads or lifted):
        widened = _named(gained | {f"read:{r}" for r in _resources(gained_reads)} | lifted)
        return Decision(False, f"you may only narrow your own membership, not add {widened}")
    beyond = (_raw(before, roles) | _raw(after, roles)) - held
    if beyond:
        named = _named(beyond)
        return Decision(False, f"you may not give or take capabilities you do not hold: {named}")
    unread = _resources(gained_reads - actor_reads)
    if unread:
        return Decision(False, f"you may not give read access you do not have: {_named(unread)}")
    unheld = [d for d in lifted if not holds(subject, d, actor_reads, lists)]
    if unheld:
        named = _named(unheld)
        return Decision(False, f"you may not lift denials of what you do not hold: {named}")
    return Decision(True, "allowed")


@dataclass(frozen=True, slots=True)
class Traces:
    """What the server holds of a user besides one membership: each is theirs alone, not
    access a membership change hands out, and a link naming them would give it to whoever
    holds the link."""

    signed_in: bool = False  # a client token was issued to them here (they are someone)
    authored: bool = False  # prompts or messages here: what others are told they said
    side_threads: bool = False  # their private side-threads here
    other_sessions: bool = False  # memberships elsewhere (``GET /api/v1/me/sessions``)

    @property
    def known(self) -> bool:
        return self.signed_in or self.authored or self.side_threads or self.other_sessions


NO_TRACES = Traces()
"""A user the server knows only by the membership a link is minted for."""
KNOWN = (
    "they are known here already (signed in, or with messages, side-threads or other "
    "sessions): only they or the admin key may mint a link for them"
)


def judge_invite(
    actor: Actor, target: Member, roles: RoleTable, documents: Iterable[Readers], traces: Traces
) -> Decision:
    """May ``actor`` mint an invite link for ``target`` (whose ``traces`` are what the
    server holds of them besides this membership)? A link signs its holder in as the
    target, so it hands out all of the target's access and their name: allowed for oneself
    (a second device); for someone else only as far as ``actor`` could have added the
    target with that access, and only while nobody has been the target yet (review RI-2:
    an owner's link for a member who had signed in read his private side-threads, listed
    his other sessions and prompted as him). The admin key may mint any."""
    if not isinstance(actor, Admin) and actor is not None and actor.user_id == target.user_id:
        if Capability.MANAGE_MEMBERS not in capabilities_of(actor, roles):
            return Decision(False, f"a {actor.role} may not manage members here")
        return Decision(True, "your own access")
    decision = judge_membership_change(actor, None, target, roles, documents)
    if decision.allowed and traces.known and not isinstance(actor, Admin):
        # One reason for every trace: which one it is (side-threads, other sessions) is
        # the user's own business.
        decision = Decision(False, KNOWN)
    if decision.allowed:
        return decision
    return Decision(
        False, f"an invite for {target.user_id!r} hands out their access: {decision.reason}"
    )


def reader_refusal(
    member: Member, maker: Member | None, roles: RoleTable, documents: Iterable[Readers]
) -> str | None:
    """Why ``maker`` could no longer hand out ``member`` (both as they are now) by the
    session's reader lists ``documents`` alone, or None. A token from ``maker``'s link for
    ``member`` is judged by the rest at each use (``authz.tokens.maker_refusal``: the
    reader lists are not in memory); by this at each membership change of the session,
    which revokes it (review RM-1: the member raised to a role that reads what the maker
    is denied)."""
    if maker is None or not judge_membership_change(maker, None, member, roles, ()).allowed:
        return None  # judged at each use
    decision = judge_membership_change(maker, None, member, roles, documents)
    return None if decision.allowed else decision.reason
