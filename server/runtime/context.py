"""What a loaded session's model calls are given: its context, built from the document and
the text kept server-side, within a run's scope; and the summaries that stand in for the
turns that no longer fit.

``SessionContext`` keeps the server-side text behind the shared document's placeholders
(``private``, with its readers) and the summaries, and one ``ContextBuilder`` whose folds
are reused build after build.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

from parley.authz.policy import Restriction
from parley.authz.scope import ContextSeen, RunScope, seen_in_context
from parley.server.metrics import Metrics
from parley.server.runtime.fold_turns import FoldTurn
from parley.server.runtime.tools import tool_defs
from parley.server.settings import Settings
from parley.server.store.access_rows import PrivateItem, ToolRow
from parley.server.store.port import SessionStore
from parley.session.context import (
    BuiltContext,
    ContextBuilder,
    ContextSettings,
    not_given_tokens,
)
from parley.session.core import SideThread
from parley.session.entries import SERVER_REQUEST, Entry, EntryKind
from parley.session.fold import prepare, prepare_entry
from parley.session.history import ReadFilter
from parley.session.model import Usage
from parley.session.schema import SessionDocument
from parley.session.summary import Summary, SummaryPlan, plan_extension
from parley.session.tokens import tools_tokens

NOT_SHARED = "not every member may read it"
FOLD_STEP = 64  # history entries folded ahead per pass of the event loop
MAX_KEPT_PREVIEWS = 16  # previews kept of one state of the session (one a scope asked)
MAX_KEPT_ANSWERS = 16  # encoded answers kept of one preview (one a member asked)


@dataclass(slots=True)
class KeptPreview:
    """A preview's build of one state of the session, with its answers already encoded,
    by the user it was asked for (the only field of an answer not of the build)."""

    build: BuiltContext
    answers: dict[str, bytes] = field(default_factory=dict)

    def keep(self, user_id: str, body: bytes) -> None:
        """Keep ``body``, the answer for ``user_id``; past ``MAX_KEPT_ANSWERS`` the oldest
        goes: the members of one scope each have their own copy of a large answer, and a
        session of hundreds of them would hold hundreds until its next change."""
        self.answers[user_id] = body
        while len(self.answers) > MAX_KEPT_ANSWERS:
            del self.answers[next(iter(self.answers))]


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a build reads (``SessionContext._reading``)."""

    builder: ContextBuilder
    entries: Sequence[Entry]
    withheld: ReadFilter
    readable: dict[str, str]
    scope_key: str


class SessionContext:
    """The context of session ``session_id``: ``doc`` the document now, ``model`` its
    model (None: the server's default), ``subjects`` its members as of now."""

    def __init__(
        self,
        session_id: str,
        *,
        store: SessionStore,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float],
        doc: Callable[[], SessionDocument],
        model: Callable[[], str | None],
        readable_by_all: Callable[[Restriction], bool],
        tools: Callable[[], Sequence[ToolRow]] = tuple,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._doc = doc
        self._model = model
        self._tools = tools  # the tools registered on the server (``SessionRooms.webhooks``)
        self._readable_by_all = readable_by_all  # (``Membership.everyone_may_read``)
        # Full text behind the placeholders of the shared document, with its readers.
        self.private: dict[str, PrivateItem] = {}
        self.summaries: list[Summary] = []
        self._revision = 0  # counts the changes of ``private`` and ``summaries``
        # The previews built of one state of what a build reads (``preview``).
        self._kept_state: tuple[object, ...] = ()
        self._kept: list[tuple[tuple[str, ...], RunScope, KeptPreview]] = []
        # The settings kept, with the model and the tools they were made for.
        self._settings_of: tuple[str | None, Sequence[ToolRow], ContextSettings] | None = None
        self._builder = ContextBuilder(self.settings_now())
        # The fold aheads under way or waiting, by scope key: one at a time folds a fold.
        self._fold_turns: dict[str, FoldTurn] = {}
        # Side-threads fold apart, so they never push the session's own folds out.
        self._thread_builder = self._new_threads_builder(self.settings_now())

    async def load(self) -> None:
        """Read the restricted text and the summaries kept beside the document."""
        items = await self.store.access.private_items(self.session_id)
        self.private = {i.entry_id: i for i in items}
        self.summaries = await self.store.load_summaries(self.session_id)
        self._revision += 1

    def keep(self, item: PrivateItem) -> None:
        """Remember a private item the writer stored."""
        self.private[item.entry_id] = item
        self._revision += 1

    def prepare(self, text: str) -> None:
        """Fold-ready now a member's text just stored (``fold.prepare``)."""
        prepare(text, self.settings.min_block_lines)

    async def warm(self, doc: SessionDocument) -> None:
        """Fold-ready every entry of a history just loaded, one entry per pass of the loop:
        what is kept of texts is in memory only, so after a restart the first build (a
        prompt's, a preview's) read a long history at once (review: 1.2 s of a stalled loop
        for every session, after 150 messages of 32 kB). Here the load waits, not the others.
        The entries are listed first in steps too (``SessionDocument.listing``)."""
        for _ in doc.listing():
            await asyncio.sleep(0)
        for entry in doc.entries():
            prepare_entry(entry, self.settings.min_block_lines)
            await asyncio.sleep(0)
        # Then the fold the history-alone builds share (the summary plan's, a run's whose
        # issuers may read what every member may), a few entries per pass of the loop.
        await self.fold_ahead(())

    async def fold_ahead(
        self,
        prompt_ids: Sequence[str],
        scope: RunScope | None = None,
        thread: SideThread | None = None,
        stopped: Callable[[], bool] = lambda: False,
        doc: SessionDocument | None = None,
        *,
        holds_writer: bool = False,
    ) -> int:
        """Fold what ``build`` with these arguments reads, ``FOLD_STEP`` entries per pass
        of the loop (fewer of long texts), so that build, made right after (no await
        between), folds nothing; a side-thread's first build read the whole history in
        one block (review: 1.5 s of a stalled loop at 3,000 messages, for every session,
        as often as an editor opened a side-thread and prompted in it). What changed
        meanwhile is folded again, in steps too (a restriction changed on an old entry:
        the fold is rolled back to it in steps, then folded from it), until a pass finds
        nothing left to do in more than one step; none once ``stopped()``. Returns the
        entries folded (what the fold kept is not folded again: a side-thread's run pays
        for these, ``SessionRoom.charge_build``).

        One fold ahead of a fold at a time (by the scope key it has as it begins): the
        members' fold serves runs (the history up to their prompt, under the queue's round
        robin one far back) and the summary plan (the whole history); folded ahead at
        once, a step of each undid what the other had folded, round after round (1,000
        queued runs took over 10 min against 15 s). ``holds_writer``: the caller holds the
        session's writer, so it goes first and the one folding gives way to it between
        steps (``FoldTurn``), then goes on from where the fold is."""
        key = self._reading(self._doc() if doc is None else doc, scope, thread).scope_key
        turn = self._fold_turns.setdefault(key, FoldTurn())
        turn.users += 1
        holder = object()
        try:
            await turn.take(holder, first=holds_writer)
            gives_way = None if holds_writer else (turn, holder)
            return await self._fold_ahead(prompt_ids, scope, thread, stopped, doc, gives_way)
        finally:
            turn.give(holder)
            turn.users -= 1
            if not turn.users:
                del self._fold_turns[key]

    async def _fold_ahead(
        self,
        prompt_ids: Sequence[str],
        scope: RunScope | None,
        thread: SideThread | None,
        stopped: Callable[[], bool],
        doc: SessionDocument | None,
        gives_way: tuple[FoldTurn, object] | None,
    ) -> int:
        """``gives_way``: the turn held, and its holder, to give way between steps to a
        caller that goes first."""
        folded = 0
        while True:
            turns = 0
            folding = self._folding(prompt_ids, scope, thread, doc)
            try:
                for entries in folding:
                    folded += entries
                    turns += 1
                    await asyncio.sleep(0)
                    if stopped():
                        return folded
                    if gives_way is not None and gives_way[0].wanted_first:
                        break
            finally:
                folding.close()  # stopped: the scope is no longer held from eviction
            if gives_way is not None and gives_way[0].wanted_first:
                await gives_way[0].give_way(gives_way[1])  # then a pass from where it is
                continue
            if not turns:  # the pass did what was left in one step, with no await since
                return folded

    def ready(
        self,
        prompt_ids: Sequence[str],
        scope: RunScope | None = None,
        doc: SessionDocument | None = None,
    ) -> bool:
        """Whether ``build`` with these arguments, made now, folds next to nothing: what is
        left is done here if one step of ``fold_ahead`` does it (True); else one step is
        done and it is False (fold ahead, then ask again)."""
        folding = self._folding(prompt_ids, scope, None, doc)
        try:
            return next(folding, None) is None
        finally:
            folding.close()

    def _folding(
        self,
        prompt_ids: Sequence[str],
        scope: RunScope | None,
        thread: SideThread | None,
        doc: SessionDocument | None,
    ) -> Generator[int]:
        """One pass of ``fold_ahead`` (``ContextBuilder.folding``) of ``doc`` (None: the
        live document), in the read scope a build with these arguments has now."""
        doc = self._doc() if doc is None else doc
        reading = self._reading(doc, scope, thread)
        return reading.builder.folding(
            entries=reading.entries,
            prompt_ids=prompt_ids,
            withheld=reading.withheld,
            private_text=reading.readable,
            pins=doc.pinned(),
            scope_key=reading.scope_key,
            steps=FOLD_STEP,
        )

    def forget_thread(self, thread_id: str) -> None:
        """Drop a deleted side-thread's folds: they would push out those of the threads
        still asked."""
        self._thread_builder.forget(f"thread:{thread_id}:")

    def everyone_may_read(self, restriction: Restriction) -> bool:
        """True when every member (those who may not read the session now too) may read this."""
        return self._readable_by_all(restriction)

    def server_text(self, entry_id: str) -> str | None:
        """The full text behind ``entry_id``'s placeholder (None: it has none)."""
        item = self.private.get(entry_id)
        return None if item is None else item.text

    def restriction_of(self, entry_id: str) -> Restriction:
        item = self.private.get(entry_id)
        return () if item is None else item.restriction

    def audit_of(self, built: BuiltContext, thread: SideThread | None = None) -> ContextSeen:
        """What ``built`` drew on and withheld, and the restriction its reply inherits
        (of a side-thread's run: with what its earlier turns drew on)."""
        return seen_in_context(built, self._restrictions(thread))

    def _restrictions(self, thread: SideThread | None) -> dict[str, Restriction]:
        restrictions = {i: item.restriction for i, item in self.private.items()}
        if thread is not None:
            restrictions.update((t.id, t.restriction) for t in thread.turns if t.restriction)
        return restrictions

    def settings_now(self) -> ContextSettings:
        """The context's settings for the session's model and the server's tools now: kept
        per model name and list of tools, as the core judges each streamed token with them
        (made anew, 5 to 15 us a token). Every tool a run may be offered counts in the room
        what every call carries leaves the facts and pins (review RV42-F1)."""
        model, tools = self._model(), self._tools()
        kept = self._settings_of
        # The server replaces its list of tools when they change (``load_access``), never
        # changes it: the same list is the same tools, and another is compared by value.
        if kept is None or kept[0] != model or (kept[1] is not tools and kept[1] != tools):
            spec = self.settings.model_spec(model)
            room = tools_tokens([tool.spec for tool in tool_defs(tools)])
            settings = self.settings.context_settings(spec, tools_room=room)
            kept = self._settings_of = (model, tools, settings)
        return kept[2]

    def build(
        self,
        prompt_ids: Sequence[str],
        scope: RunScope | None = None,
        thread: SideThread | None = None,
        doc: SessionDocument | None = None,
    ) -> BuiltContext:
        """What a model call answering ``prompt_ids`` is given (none: the history alone),
        within ``scope``: what its issuers may not read is withheld, what they may read of
        the server-side text replaces its placeholder. No scope: what every member may read
        (the scope summaries are made in). With a side-``thread`` (and its owner's scope):
        the session up to the thread's anchor, then the thread's turns, as if they were
        the session's next. ``doc``: the document to read (None: the live one, as a run
        reads it under the writer; a REST preview reads it as committed).

        The builder keeps one fold per read scope, so each build folds only what changed
        since the last; a run whose issuers may read what every member may (the common
        case) shares the members' fold with the summary plan, so a run's new turns are
        folded once, not once per scope."""
        doc = self._doc() if doc is None else doc
        reading = self._reading(doc, scope, thread)
        model = self._model()
        spec = self.settings.model_spec(model)
        started = time.perf_counter()
        built = reading.builder.build(
            session_id=self.session_id,
            entries=reading.entries,
            prompt_ids=prompt_ids,
            facts=doc.facts_with_authors(),
            pins=doc.pinned(),
            max_output_tokens=spec.reserved_output_tokens,
            withheld=reading.withheld,
            private_text=reading.readable,
            scope_key=reading.scope_key,
            summaries=self.summaries,
            # A model taken out of the configuration fails the call (the registry says so)
            # rather than sending the session's text to another vendor.
            model=model or spec.name,
            tools=() if scope is None else scope.tool_specs,
        )
        self.metrics.context_build.observe(time.perf_counter() - started)
        return built

    def kept_preview(
        self, doc: SessionDocument, prompt_ids: Sequence[str], scope: RunScope, grants: object
    ) -> KeptPreview | None:
        """The preview kept of ``prompt_ids`` in ``scope`` while nothing it reads changes:
        the document (``doc``, as committed: ``RoomRegistry.committed``), the server-side
        text and summaries, the model, and the members' grants (``grants``, equal while
        they stay); None when there is none."""
        state: tuple[object, ...] = (doc, doc.revision, self._revision, self._model(), grants)
        if state != self._kept_state:
            self._kept_state, self._kept = state, []
        asked = tuple(prompt_ids)
        for ids, kept_scope, kept in self._kept:
            if ids == asked and kept_scope == scope:
                return kept
        return None

    def preview(
        self, doc: SessionDocument, prompt_ids: Sequence[str], scope: RunScope, grants: object
    ) -> KeptPreview:
        """``build`` of ``doc`` for a preview, kept (``kept_preview``). A page asks again at
        every change it sees, each member for their own scope: a preview asked again of the
        same state is not built again (review: each was built anew, 40-400 ms on a long
        session, as fast as members asked), and its answers are kept encoded with it."""
        kept = self.kept_preview(doc, prompt_ids, scope, grants)
        if kept is None:
            asked = tuple(prompt_ids)
            kept = KeptPreview(self.build(asked, scope, doc=doc))
            self._kept = [*self._kept[-(MAX_KEPT_PREVIEWS - 1) :], (asked, scope, kept)]
        return kept

    def not_given_tokens(
        self, doc: SessionDocument, entry_ids: Sequence[str], scope: RunScope
    ) -> int:
        """What the entries ``entry_ids`` of ``doc`` add to a call in ``scope`` once their
        runs end, as they stand now (``session.context.not_given_tokens``): those it may
        not read add nothing, those it may read of the server-side text count by it."""
        reading = self._reading(doc, scope, None)
        entries = []
        for entry_id in entry_ids:
            entry = doc.entry(entry_id)
            if reading.withheld(entry) is None:
                text = reading.readable.get(entry_id)
                entries.append(entry if text is None else replace(entry, content=text))
        return not_given_tokens(entries, self.settings.min_block_lines)

    def _reading(
        self, doc: SessionDocument, scope: RunScope | None, thread: SideThread | None
    ) -> _Reading:
        """What a build of ``doc`` in ``scope`` (of ``thread``) reads, and the builder and
        scope key whose fold serves it."""
        restrictions = self._restrictions(thread)
        withheld, readable = self._members_read(restrictions)
        scope_key = "members"
        if scope is not None:
            texts = {i: item.text for i, item in self.private.items()}
            judged = scope.read_filter(restrictions, texts)
            if judged != (withheld, readable):  # else a run sees what every member does:
                withheld, readable = judged  # one fold serves it and the summary plan
                scope_key = "readable:" + ",".join(sorted(readable))
        entries: Sequence[Entry] = doc.entries()
        if thread is None:
            return _Reading(self._session_builder(), entries, withheld, readable, scope_key)
        before = [e for e in entries if e.seq <= thread.anchor_seq]
        return _Reading(
            self._threads_builder(),
            [*before, *thread_entries(thread)],
            withheld,
            readable,
            f"thread:{thread.id}:{scope_key}",
        )

    def _members_read(
        self, restrictions: dict[str, Restriction]
    ) -> tuple[ReadFilter, dict[str, str]]:
        """What every member may read: (the filter withholding the rest, the server-side
        text they may read)."""
        shared = {
            i: item.text
            for i, item in self.private.items()
            if self.everyone_may_read(restrictions[i])
        }
        unshared = {i: None if i in shared else NOT_SHARED for i in restrictions}
        return ReadFilter(None, unshared), shared

    def _session_builder(self) -> ContextBuilder:
        """The session's builder, made anew when the model's window changed."""
        settings = self.settings_now()
        if self._builder.settings != settings:
            self._builder = ContextBuilder(settings)
        return self._builder

    def _threads_builder(self) -> ContextBuilder:
        """The side-threads' builder, made anew when the model's window changed."""
        settings = self.settings_now()
        if self._thread_builder.settings != settings:
            self._thread_builder = self._new_threads_builder(settings)
        return self._thread_builder

    def _new_threads_builder(self, settings: ContextSettings) -> ContextBuilder:
        # A fold per side-thread (its turns follow its own anchor), one for each run that
        # may be under way and as many for the threads asked next: past that, a thread's
        # next run folds its history again (in steps, ``fold_ahead``). Each holds about
        # what the session's fold holds, so the slots are bounded by the run limit.
        return ContextBuilder(settings, max_scopes=2 * self.settings.max_thread_runs_per_session)

    def summary_plan(self) -> SummaryPlan | None:
        """The turns to summarise next, from what every member may read; None: nothing yet.

        It extends the newest summary that is still made only of what every member may
        read (the one a history-alone build in that scope uses); when membership changed so
        that none is, a new chain starts."""
        if not self.settings.summaries:
            return None
        built = self.build(())
        return plan_extension(
            built.dropped,
            built.summary,
            min_tokens=self.settings.summary_min_tokens,
            window_tokens=self.settings_now().window_tokens,
            max_output_tokens=self.settings.summary_max_output_tokens,
        )

    async def add_summary(
        self, summary: Summary, added: frozenset[str], model: str, usage: Usage | None
    ) -> None:
        await self.store.add_summary(
            self.session_id,
            summary,
            added=added,
            model=model,
            input_tokens=0 if usage is None else usage.input_tokens,
            output_tokens=0 if usage is None else usage.output_tokens,
            now=int(self.clock() * 1000),
        )
        self.summaries.append(summary)
        self._revision += 1


_KINDS = {"prompt": EntryKind.PROMPT, "reply": EntryKind.REPLY, "tool": EntryKind.TOOL}
_ROLES = {"prompt": "user", "reply": "assistant", "tool": "tool"}


def thread_entries(thread: SideThread) -> list[Entry]:
    """A side-thread's turns as transcript entries after its anchor (so the one context
    builder renders them as it renders the session's own turns)."""
    entries: list[Entry] = []
    last_prompt: str | None = None
    for turn in thread.turns:
        if turn.kind == "prompt":
            last_prompt = turn.id
        entries.append(
            Entry(
                id=turn.id,
                seq=thread.anchor_seq,
                kind=_KINDS[turn.kind],
                author=thread.owner if turn.kind == "tool" else turn.author,
                role=_ROLES[turn.kind],
                status=turn.status,
                content=turn.text,
                created_at=turn.created_at,
                reply_to=last_prompt if turn.kind == "reply" else None,
                tool=turn.author if turn.kind == "tool" else None,
                reason_code=turn.reason_code,  # why a turn ended unanswered, if it did
                source=SERVER_REQUEST if turn.summarise and turn.kind == "prompt" else None,
            )
        )
    return entries
