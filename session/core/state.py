"""What the session core decides on: one command event and the session as committed now."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from parley.authz.policy import Restriction, Subject, everyone_may_read, may_read
from parley.authz.tokens import ClientClaims
from parley.session.attribution import Fact
from parley.session.commands import Command
from parley.session.context import fixed_tokens, pin_tokens
from parley.session.core.effects import NewEntry, ReplyState
from parley.session.core.thread_state import SideThread, ThreadLimits
from parley.session.entries import Entry, EntryKind
from parley.session.errors import SessionFull, TooLarge
from parley.session.history import in_history
from parley.session.queue import OrderingQueue, Run
from parley.session.schema import SessionDocument

# What is shown in place of text a reader may not read (a tool step's details in the shared
# document; a side-thread turn its owner may no longer read).
RESTRICTED_DETAILS = "[details restricted]"


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """``actor`` sent ``command`` at ``now_ms``; ``new_id`` names an entry it may create.

    ``admin``: the door already decided (a REST route authorised its caller, or the admin
    key) and audits the change itself; the core then judges the change, not the actor.
    ``resendable``: the command's id is its sender's, who may send it again (a REST
    route's change has a made-up one: its ack is not kept for resends, unless another node
    forwarded it under an id of its own, ``server.runtime.session_writes.FORWARDED_ID``).
    ``token``: the claims of the client token it was sent with (None: none is known
    here), judged again where the command is stored (``SessionView.token_refusal``).
    """

    actor: str
    command: Command
    now_ms: int
    new_id: str
    admin: bool = False
    resendable: bool = True
    token: ClientClaims | None = None


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """``max_session_bytes``: the shared document's encoded size that members' changes
    keep it under (None: no limit), so that a new client's first sync stays within what
    the server may send at once. ``max_fixed_tokens``: what the system text with the facts
    and pins may take of the session model's input (``session.context.fixed_tokens``;
    None: no limit), so that every model input leaves room for the prompts;
    ``max_fixed_cause``: why it is what it is, as a refusal says it
    (``ContextSettings.fixed_limit_cause``)."""

    max_pins: int
    max_facts: int
    max_session_bytes: int | None = None
    max_fixed_tokens: int | None = None
    max_fixed_cause: str = "a share of its window, so that prompts still fit"


@dataclass(frozen=True, slots=True)
class Standing:
    """What a member's membership says of the prompts they sent before now (ms since the
    epoch; 0: nothing): ``joined_at``, when it began (one sent earlier was sent under a
    membership since ended: they were removed and added back), and ``revoked_at``, when a
    token of theirs was last revoked (one sent earlier was waiting then)."""

    joined_at: int = 0
    revoked_at: int = 0


def no_standing(user_id: str) -> Standing:
    """A standing that ends no prompt (a view built without the membership's)."""
    return Standing()


@dataclass(frozen=True, slots=True)
class SessionView:
    """The session as committed, read (never changed) by the core.

    ``subject``: a member as of now (None: not a member). ``running``: the run in flight
    whose reply streams now (None before its runner took it, or when none is).
    ``last_seq``: the highest sequence number handed out. ``accepting_prompts``: False
    while the server shuts down. ``subjects``: every member as of now (who must all be
    able to read what enters the shared document); ``restricted_replies``: the session's
    policy for replies that draw on restricted material (``private`` or ``shared``), and
    ``restricted_replies_by`` the member who chose ``shared`` (None: the admin key).
    ``threads``: the side-threads as committed, by id, with their ``thread_limits``.
    ``readable_by_all``: ``everyone_may_read`` over ``subjects``, as the shell keeps it
    (asked at every batch of a restricted reply's text); None: worked out each time.
    ``running_reply``: the reply of the run in flight as decided so far (what it drew on);
    ``thread_drew_on``: what the side-thread run in flight in a thread drew on so far
    (``()`` when none runs there): a grant change stops the runs whose issuers may no
    longer read it.
    ``document_bytes``: the committed document's encoded size as of now (what a first sync
    sends): asked, not held, so that a view stays true across the commits of a streamed
    reply (the shell keeps one until what it holds changes).
    ``standing``: a member's ``Standing`` as of now (``no_standing`` for one who is not).
    ``token_refusal``: why a client token (its claims) may not be used as of now, or None
    (``authz.tokens.token_refusal``: revoked, or its invite link's maker may no longer
    make it).
    ``server_text``: the full text kept server-side behind an entry's placeholder (None:
    its shared copy is all there is); ``restriction_of``: the readers of that text.
    ``read_wait_s``: seconds until a member's read budget, which their side-thread runs'
    folds are paid from, has room again (0: it has now).
    """

    doc: SessionDocument
    queue: OrderingQueue
    subject: Callable[[str], Subject | None]
    running: Run | None
    last_seq: int
    limits: DocumentLimits
    accepting_prompts: bool = True
    subjects: Callable[[], Iterable[Subject]] = tuple
    restricted_replies: str = "private"
    restricted_replies_by: str | None = None
    threads: Mapping[str, SideThread] = field(default_factory=dict)
    thread_limits: ThreadLimits = field(default_factory=ThreadLimits)
    readable_by_all: Callable[[Restriction], bool] | None = None
    running_reply: ReplyState | None = None
    thread_drew_on: Callable[[str], Restriction] = lambda thread_id: ()
    document_bytes: Callable[[], int] = lambda: 0
    standing: Callable[[str], Standing] = no_standing
    token_refusal: Callable[[ClientClaims], str | None] = lambda claims: None
    server_text: Callable[[str], str | None] = lambda entry_id: None
    restriction_of: Callable[[str], Restriction] = lambda entry_id: ()
    read_wait_s: Callable[[str], float] = lambda user_id: 0.0

    def everyone_may_read(self, restriction: Restriction) -> bool:
        """True when every member may read ``restriction`` (``authz.policy.everyone_may_read``)."""
        if self.readable_by_all is not None:
            return self.readable_by_all(restriction)
        return everyone_may_read(self.subjects(), restriction)

    def shares(self, restriction: Restriction) -> bool:
        """True when the policy lets text drawn from ``restriction`` into the shared
        document although not every member may read it: ``shared``, chosen by the admin
        key (the operator's decision) or by a member who may read all of it now. A member
        may choose ``shared`` only if they may read every reader list in the session, and
        lists added later (a document attached, a tool result's readers) are judged here
        as text draws on them: else it stays private, as under ``private``."""
        if self.restricted_replies != "shared":
            return False
        chooser = self.restricted_replies_by
        return chooser is None or may_read(self.subject(chooser), restriction)

    def unshared_reason(self, restriction: Restriction) -> str:
        """Why text drawn from ``restriction`` stays private (``shares`` is False)."""
        if self.restricted_replies != "shared":
            return "the session keeps such text private (restricted_replies: private)"
        return (
            f"restricted_replies: shared was chosen by {self.restricted_replies_by}, who may "
            "not read all it draws on, so such text stays private"
        )


def require_room(view: SessionView, text: str = "") -> None:
    """Raise ``SessionFull`` unless the document stays under its size limit with ``text``
    added (its UTF-8 bytes; a change without text: unless it is under the limit now).
    Members' changes stop at the limit; a run's reply to a prompt accepted before it may
    still take the document past it (``docs/configuration.md``)."""
    limit = view.limits.max_session_bytes
    if limit is None:
        return
    size = view.document_bytes()
    if size + len(text.encode("utf-8", "surrogatepass")) >= limit:
        raise SessionFull(
            f"this session is full ({size} of {limit} bytes); start a new session to go on"
        )


def require_context_room(
    view: SessionView,
    event: CommandEvent,
    what: str,
    facts: Mapping[str, Fact],
    pins: Sequence[str],
) -> None:
    """Raise ``TooLarge`` if the system text with ``facts`` and ``pins`` (the session's after
    the change ``what`` names) would take more of every model input than the limit, and
    more than it takes now: a change that does not grow it stays possible past the limit
    (the window shrank since), as unpins and removals do. It is judged by what
    ``event``'s actor may read (``_fixed_tokens``)."""
    limit = view.limits.max_fixed_tokens
    if limit is None:
        return
    after = _fixed_tokens(view, event, facts, pins)
    if after <= limit:
        return
    before = _fixed_tokens(view, event, view.doc.facts_with_authors(), view.doc.pinned())
    if after <= before:
        return
    raise TooLarge(
        f"{what} would make the pinned messages and facts, which every model input carries, "
        f"take {after} tokens; the session's model leaves them {limit} "
        f"({view.limits.max_fixed_cause}): unpin a message or remove a fact first"
    )


def _fixed_tokens(
    view: SessionView, event: CommandEvent, facts: Mapping[str, Fact], pins: Sequence[str]
) -> int:
    """``fixed_tokens`` with each pin as the actor may read it: its text kept server-side
    (which a run whose issuers may read it is given) when it is larger and they may read
    it (the admin key reads all), else its shared copy. A refusal's yes or no and its count
    then depend on nothing the actor may not read (review R3-1: a member set facts until one
    was refused, and learnt the size of a restricted reply pinned, to the token); a build
    whose issuers may read more gives the pins that fit, in the order they were pinned, and
    lists the others as left out (``session.context``). A pinned reply counts with the
    prompts it answers, which a build gives with it."""
    admin = event.admin and not event.actor
    reader = None if admin else view.subject(event.actor)
    costs = []
    for entry in _given_pinned(view, pins):
        cost = pin_tokens(entry)
        full = view.server_text(entry.id)
        if full is not None and (admin or may_read(reader, view.restriction_of(entry.id))):
            cost = max(cost, pin_tokens(replace(entry, content=full)))
        costs.append(cost)
    return fixed_tokens(facts, costs)


def _given_pinned(view: SessionView, pins: Sequence[str]) -> list[Entry]:
    """The entries a build may give for ``pins``: each pinned entry, and with a pinned reply
    the prompts it answers that are history (not pinned themselves: those count once)."""
    pinned = set(pins)
    given: list[Entry] = []
    for pin_id in pins:
        if not view.doc.has_entry(pin_id):
            continue  # nothing a build could give
        entry = view.doc.entry(pin_id)
        given.append(entry)
        if entry.kind is not EntryKind.REPLY:
            continue
        prompts = entry.answers or ((entry.reply_to,) if entry.reply_to else ())
        asked = [view.doc.entry(p) for p in prompts if p not in pinned and view.doc.has_entry(p)]
        given += [said for said in asked if in_history(said)]
    return given


def new_entry(
    view: SessionView,
    event: CommandEvent,
    kind: EntryKind,
    text: str,
    status: str,
    source: str | None = None,
) -> NewEntry:
    """The transcript entry ``event`` makes: its actor's, with the session's next seq."""
    return NewEntry(
        id=event.new_id,
        kind=kind,
        author=event.actor,
        command_id=event.command.id,
        text=text,
        seq=view.last_seq + 1,
        status=status,
        created_at=event.now_ms,
        source=source,
    )
