"""One set of checks of the ``SessionStore`` port (``server.store.port``), run against every
adapter: in memory, SQLite and PostgreSQL keep the same promises."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text

from parley.authz.policy import Decision, Readers
from parley.authz.roles import Member
from parley.authz.tokens import ClientClaims
from parley.server.store.access_rows import PrivateItem
from parley.server.store.counters import SequenceMoved
from parley.server.store.db import create_engine
from parley.server.store.memory import MemoryStore
from parley.server.store.rows import EntryRow, StoredDoc, claims_column, claims_of
from parley.server.store.sessions import Store
from parley.server.store.usage import UsageLedger
from parley.session import presence as presence_module
from parley.session.core import SideThread, ThreadTurn
from parley.session.core.effects import ThreadTurnStatus
from parley.session.errors import Conflict, DuplicateCommand
from parley.session.events import MessagePosted, PromptAccepted, RunStarted
from parley.session.lifecycle import IllegalTransition, PromptStatus
from parley.session.presence import KEEP_LEFT_S, LeftClient
from parley.session.quota import Quotas
from parley.session.reasons import Ending, ReasonCode
from parley.session.summary import Summary
from parley.session.tokens import count_tokens
from tests.conftest import migrated_database, postgres_database, sqlite_url

ALLOW = Decision(True, "test")


def json_of(data: dict[str, Any]) -> Any:
    """``data`` as the database gives it back (tuples as lists)."""
    return json.loads(json.dumps(data))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        memory = MemoryStore()
        yield memory
        await memory.close()
        return
    async with contextlib_database(request.param, tmp_path) as url:
        await migrated_database(url)
        sql = Store(create_engine(url))
        try:
            yield sql
        finally:
            await sql.close()


def contextlib_database(kind: str, tmp_path: Path) -> Any:
    if kind == "postgres":
        return postgres_database(migrated=True)

    class _Sqlite:
        async def __aenter__(self) -> str:
            return sqlite_url(tmp_path)

        async def __aexit__(self, *_: object) -> None:
            return None

    return _Sqlite()


def entry(session_id: str, seq: int, command_id: str, author: str = "ann") -> EntryRow:
    return EntryRow(
        f"{session_id}-e{seq}", session_id, seq, "prompt", author, command_id, "hi",
        PromptStatus.QUEUED.value, None, None, seq,
    )  # fmt: skip


async def add_prompt(store: Any, session_id: str, command_id: str) -> EntryRow:
    seq = (await store.get_session(session_id)).last_seq + 1
    async with store.transaction() as tx:
        tx.claim_seq(session_id, seq)
        row = entry(session_id, seq, command_id)
        await tx.insert_entry(row)
        await tx.append_events(session_id, seq, [PromptAccepted(row.id, seq, row.author)])
    return row


async def test_sequence_and_event_numbers_are_per_session_in_commit_order(store: Any) -> None:
    for session_id in ("a", "b"):
        await store.create_session(session_id, "t", "queue", 0)
    assert [(await add_prompt(store, "a", f"c{i}")).seq for i in range(3)] == [1, 2, 3]
    assert (await add_prompt(store, "b", "c0")).seq == 1
    assert (await store.get_session("a")).last_seq == 3
    events = await store.events_after("a", 0, 10)
    assert [(e.seq, e.kind, e.data["seq"]) for e in events] == [
        (1, "prompt_accepted", 1), (2, "prompt_accepted", 2), (3, "prompt_accepted", 3),
    ]  # fmt: skip
    assert [e.seq for e in await store.events_after("a", 1, 1)] == [2]
    assert [e.seq for e in await store.events_after("b", 0, 10)] == [1]


async def test_a_transaction_that_raises_leaves_nothing(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            seq = 1
            tx.claim_seq("a", seq)
            await tx.insert_entry(entry("a", seq, "c1"))
            await tx.append_events("a", 1, [MessagePosted("a-e1", seq, "ann")])
            await tx.append_update("a", b"\x00\x00")
            await tx.insert_audit("a", 1, "refused", "ann", {})
            await tx.insert_private("a", PrivateItem("p", "tool", "x", ()), 1)
            await tx.set_policy("a", "batch")
            raise RuntimeError("the write fails after its statements")
    row = await store.get_session("a")
    assert (row.last_seq, row.policy) == (0, "queue")
    assert await store.entry_by_command("a", "ann", "c1") is None
    assert await store.events_after("a", 0, 10) == []
    assert (await store.load_doc("a")).updates == []
    assert await store.access.private_items("a") == []
    # The next transaction gets the number the failed one had.
    assert (await add_prompt(store, "a", "c1")).seq == 1


async def test_a_sequence_number_that_was_not_next_is_refused_and_nothing_is_kept(
    store: Any,
) -> None:
    await store.create_session("a", "t", "queue", 0)
    await add_prompt(store, "a", "c1")
    with pytest.raises(SequenceMoved) as moved:
        async with store.transaction() as tx:
            tx.claim_seq("a", 1)  # 1 is taken: the store says which number it has
            await tx.insert_entry(entry("a", 7, "c2"))
            await tx.append_events("a", 1, [MessagePosted("a-e7", 7, "ann")])
    assert moved.value.last_seq == 1
    assert (await store.get_session("a")).last_seq == 1
    assert await store.entry_by_command("a", "ann", "c2") is None
    assert [e.seq for e in await store.events_after("a", 0, 10)] == [1]
    with pytest.raises(RuntimeError, match="not counted"):  # a claim must be counted
        async with store.transaction() as tx:
            tx.claim_seq("a", 2)
            await tx.insert_entry(entry("a", 2, "c3"))
    assert await store.entry_by_command("a", "ann", "c3") is None


async def test_a_change_stores_its_update_and_numbers_its_events_with_the_counters(
    store: Any,
) -> None:
    """``append_change``: the document update, the claimed number and the events of one
    write (on PostgreSQL one statement), numbered as ``append_events`` numbers them."""
    await store.create_session("a", "t", "queue", 0)
    await add_prompt(store, "a", "c0")
    async with store.transaction() as tx:
        tx.claim_seq("a", 2)
        await tx.insert_entry(entry("a", 2, "c1"))
        events = [PromptAccepted("a-e2", 2, "ann"), RunStarted("r1", ("a-e2",), ("ann",))]
        first_id, numbers = await tx.append_change("a", b"\x01", 5, events)
    assert numbers == [2, 3]
    async with store.transaction() as tx:  # an update alone: no counter moves
        second_id, none = await tx.append_change("a", b"\x02", 6, [])
    async with store.transaction() as tx:  # events alone: no update stored
        no_update, more = await tx.append_change("a", b"", 7, [MessagePosted("x", 2, "bob")])
    assert (none, no_update, more) == ([], None, [4])
    assert first_id is not None and second_id is not None and first_id < second_id
    assert (await store.load_doc("a")).updates == [b"\x01", b"\x02"]
    assert (await store.get_session("a")).last_seq == 2
    stored = await store.events_after("a", 1, 10)
    assert [(e.seq, e.kind, e.actor, e.at_ms) for e in stored] == [
        (2, "prompt_accepted", "ann", 5), (3, "run_started", None, 5),
        (4, "message_posted", "bob", 7),
    ]  # fmt: skip
    assert [e.data for e in stored[:2]] == [json_of(e.data()) for e in events]


async def test_a_change_whose_sequence_number_was_not_next_keeps_nothing(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    await add_prompt(store, "a", "c1")
    with pytest.raises(SequenceMoved) as moved:
        async with store.transaction() as tx:
            tx.claim_seq("a", 1)  # taken: the store says which number it has
            await tx.insert_entry(entry("a", 7, "c2"))
            await tx.append_change("a", b"\x01", 1, [MessagePosted("a-e7", 7, "ann")])
    assert moved.value.last_seq == 1
    assert (await store.get_session("a")).last_seq == 1
    assert await store.entry_by_command("a", "ann", "c2") is None
    assert [e.seq for e in await store.events_after("a", 0, 10)] == [1]
    assert (await store.load_doc("a")).updates == []


async def test_an_entry_left_for_the_last_statement_is_stored_as_one_inserted_first(
    store: Any,
) -> None:
    """``insert_entry(last=True)``: on PostgreSQL the entry goes in the write's last
    statement (the whole write one round trip when nothing else runs), or just before
    another statement that comes first; a resent command id or a number not next stores
    nothing. Every store keeps the same."""
    await store.create_session("a", "t", "queue", 0)
    async with store.transaction() as tx:
        tx.claim_seq("a", 1)
        await tx.insert_entry(entry("a", 1, "c1"), last=True)
        accepted = [PromptAccepted("a-e1", 1, "ann")]
        _, numbers = await tx.append_change("a", b"\x01", 5, accepted, last=True)
    assert numbers == [1]
    stored = await store.entry_by_command("a", "ann", "c1")
    assert (stored.id, stored.seq, stored.status) == ("a-e1", 1, "queued")

    for command_id, seq, error in (("c1", 2, DuplicateCommand), ("c2", 5, SequenceMoved)):
        with pytest.raises(error):
            async with store.transaction() as tx:
                tx.claim_seq("a", seq)
                await tx.insert_entry(entry("a", seq, command_id), last=True)
                accepted = [PromptAccepted(f"a-e{seq}", seq, "ann")]
                await tx.append_change("a", b"\x02", 6, accepted, last=True)
        assert (await store.get_session("a")).last_seq == 1
        assert (await store.load_doc("a")).updates == [b"\x01"]
        assert [e.seq for e in await store.events_after("a", 0, 10)] == [1]
    assert await store.entry_by_command("a", "ann", "c2") is None

    async with store.transaction() as tx:  # another statement first: the entry goes before it
        tx.claim_seq("a", 2)
        await tx.insert_entry(entry("a", 2, "c2"), last=True)
        await tx.set_entry_status("a-e2", PromptStatus.RUNNING, reply_id="r2", started_at=9)
        accepted = [PromptAccepted("a-e2", 2, "ann")]
        _, numbers = await tx.append_change("a", b"\x03", 7, accepted, last=True)
    assert numbers == [2]
    running = await store.entry_by_command("a", "ann", "c2")
    assert (running.seq, running.status, running.reply_id) == (2, "running", "r2")
    assert (await store.load_doc("a")).updates == [b"\x01", b"\x03"]


async def test_a_transaction_claims_one_sequence_number_per_session(store: Any) -> None:
    """A write adds at most one entry: a second claim is a bug, refused before it is stored."""
    await store.create_session("a", "t", "queue", 0)
    await store.create_session("b", "t", "queue", 0)
    with pytest.raises(ValueError, match="claimed after 1"):
        async with store.transaction() as tx:
            tx.claim_seq("a", 1)
            tx.claim_seq("b", 1)  # another session's number: its own counter
            tx.claim_seq("a", 2)
    assert [(await store.get_session(s)).last_seq for s in ("a", "b")] == [0, 0]
    async with store.transaction() as tx:
        for session_id in ("a", "b"):
            tx.claim_seq(session_id, 1)
            await tx.insert_entry(entry(session_id, 1, "c1"))
            await tx.append_events(session_id, 1, [])
    assert [(await store.get_session(s)).last_seq for s in ("a", "b")] == [1, 1]


async def test_a_command_id_is_stored_once_and_the_transaction_goes_on(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    first = await add_prompt(store, "a", "c1")
    async with store.transaction() as tx:
        with pytest.raises(DuplicateCommand):
            await tx.insert_entry(entry("a", 9, "c1"))
        await tx.insert_entry(entry("a", 10, "c2"))
    assert (await store.entry_by_command("a", "ann", "c1")) == first
    assert (await store.entry_by_command("a", "ann", "c2")).seq == 10
    assert await store.entry_by_command("a", "bob", "c1") is None


async def test_a_prompts_status_moves_only_as_the_lifecycle_table_allows(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    row = await add_prompt(store, "a", "c1")
    async with store.transaction() as tx:
        await tx.set_entry_status(row.id, PromptStatus.RUNNING, reply_id="r1", started_at=5)
    for illegal in (PromptStatus.QUEUED, PromptStatus.RUNNING):
        with pytest.raises(IllegalTransition):
            async with store.transaction() as tx:
                await tx.set_entry_status(row.id, illegal)
    ending = Ending(ReasonCode.TIMEOUT, "too slow")
    async with store.transaction() as tx:
        await tx.set_entry_status(row.id, ending.status, ending=ending, finished_at=6)
    (failed,) = await store.entries_with_status("a", [ending.status.value])
    assert (failed.reason, failed.reply_id) == ("too slow", "r1")
    assert await store.entries_with_status("a", [PromptStatus.RUNNING.value]) == []
    assert await store.sessions_with_status([ending.status.value]) == ["a"]
    with pytest.raises(IllegalTransition):
        async with store.transaction() as tx:
            await tx.set_entry_status("nobody", PromptStatus.RUNNING)


async def test_the_document_is_its_snapshot_and_the_updates_after_it(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    await store.create_session("b", "t", "queue", 0)
    async with store.transaction() as tx:
        ids = await tx.append_updates([("a", b"u1"), ("b", b"v1"), ("a", b"u2")])
        assert ids == sorted(ids) and len(set(ids)) == 3
        await tx.write_snapshot("a", b"snap", ids[0], 1)
    doc = await store.load_doc("a")
    assert (doc.snapshot, doc.updates, doc.updates_since_snapshot) == (b"snap", [b"u2"], 1)
    assert (await store.load_doc("b")).updates == [b"v1"]
    assert await store.group.submit("b", b"v2", None) > ids[-1]
    assert (await store.load_doc("b")).updates == [b"v1", b"v2"]


async def test_summaries_cover_what_the_ones_before_them_covered(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    for i, added in enumerate((frozenset({"e1"}), frozenset({"e2", "e3"}))):
        summary = Summary(f"s{i}", 1, i + 1, added, f"summary {i}", f"s{i - 1}" if i else None)
        await store.add_summary(
            "a", summary, added=added, model="m", input_tokens=1, output_tokens=1, now=i
        )
    counted: list[str] = []
    with pytest.MonkeyPatch.context() as patch:  # a load counts no summary's tokens
        patch.setattr(count_tokens, "function", counted.append)
        patch.setattr(count_tokens, "cache", OrderedDict())
        found = await store.load_summaries("a")
    assert counted == []
    assert [(s.id, s.covers, s.text, s.extends) for s in found] == [
        ("s0", frozenset({"e1"}), "summary 0", None),
        ("s1", frozenset({"e1", "e2", "e3"}), "summary 1", "s0"),
    ]
    assert [s.tokens for s in found] == [count_tokens("summary 0"), count_tokens("summary 1")]


async def test_a_new_chain_of_summaries_covers_its_own_chain_alone(store: Any) -> None:
    """A summary that starts a new chain (membership changed: the old one holds what not
    every member may read now) covers what it summarised, and those extending it what the
    new chain holds: none of them what the old chain alone covers, as when they were made."""
    await store.create_session("a", "t", "queue", 0)
    rows = [  # (id, extends, added)
        ("s0", None, {"e1", "e2"}),
        ("s1", "s0", {"e3"}),
        ("n0", None, {"e1"}),  # e2 may not be read by every member now
        ("n1", "n0", {"e3", "e4"}),
        ("s2", "s1", {"e5"}),  # one that extends an older chain's summary
    ]
    for i, (summary_id, extends, added) in enumerate(rows):
        summary = Summary(summary_id, 1, i + 1, frozenset(added), summary_id, extends)
        await store.add_summary(
            "a", summary, added=frozenset(added), model="m", input_tokens=1, output_tokens=1, now=i
        )
    found = await store.load_summaries("a")
    assert [(s.id, s.extends, sorted(s.covers)) for s in found] == [
        ("s0", None, ["e1", "e2"]),
        ("s1", "s0", ["e1", "e2", "e3"]),
        ("n0", None, ["e1"]),
        ("n1", "n0", ["e1", "e3", "e4"]),
        ("s2", "s1", ["e1", "e2", "e3", "e5"]),
    ]


async def test_members_and_their_events(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    for user_id, now in (("bob", 2), ("ann", 1)):
        await store.change_member("a", user_id, Member(user_id, "editor"), now, lambda *_: ALLOW)
    changed = await store.change_member("a", "bob", Member("bob", "viewer"), 3, lambda *_: ALLOW)
    assert (changed.before.role, changed.after.role) == ("editor", "viewer")
    assert changed.after.token_epoch == changed.before.token_epoch
    refused = Decision(False, "no")
    kept = await store.change_member("a", "ann", None, 4, lambda *_: refused)
    assert kept.after == kept.before and not kept.decision.allowed
    assert [(m.user_id, m.role) for m in await store.list_members("a")] == [
        ("ann", "editor"), ("bob", "viewer"),
    ]  # fmt: skip
    kinds = [e.kind for e in await store.events_after("a", 0, 10)]
    assert kinds == ["member_joined", "member_joined", "member_changed"]


async def test_display_names_are_kept_unless_named(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    add = await store.change_member(
        "a", "ann", Member("ann", "editor"), 1, lambda *_: ALLOW, display_name="Ann"
    )
    assert add.after.display_name == "Ann"
    kept = await store.change_member("a", "ann", Member("ann", "viewer"), 2, lambda *_: ALLOW)
    assert (kept.after.role, kept.after.display_name) == ("viewer", "Ann")
    cleared = await store.change_member(
        "a", "ann", Member("ann", "viewer"), 3, lambda *_: ALLOW, display_name=""
    )
    assert cleared.after.display_name == ""
    assert [m.display_name for m in await store.list_members("a")] == [""]


async def test_a_user_id_added_that_reads_as_another_members_name_is_refused(
    store: Any,
) -> None:
    """Review I2-2: ``carol``, ``Carol`` and ``CAROL`` were all added, though the same
    names as display names were refused: a member without a display name is shown by
    their user id, so a user id added is compared, folded, with every member's user id and
    display name."""
    await store.create_session("a", "t", "queue", 0)

    async def add(user_id: str, display_name: str | None = None) -> None:
        member = Member(user_id, "editor")
        await store.change_member(
            "a", user_id, member, 1, lambda *_: ALLOW, display_name=display_name, max_members=10
        )

    await add("carol")
    await add("eve", "Dave")
    for user_id in ("Carol", "CAROL", "\uff43arol", "dave", "DAVE"):
        with pytest.raises(Conflict):
            await add(user_id)
    await add("carol", "Carol")  # a member changed keeps their own name
    await add("carolyn")
    assert sorted(m.user_id for m in await store.list_members("a")) == ["carol", "carolyn", "eve"]


async def test_a_former_members_user_id_in_the_transcript_is_no_one_elses_name(
    store: Any,
) -> None:
    """Review FK: ann's prompt stays in the transcript under ``ann`` after she is removed,
    so no one else is named or added as ``ann`` (folded), by any change; ann comes back."""
    await store.create_session("a", "t", "queue", 0)
    await add_prompt(store, "a", "c1")  # by ann, no member now

    async def change(user_id: str, display_name: str | None, **kw: Any) -> None:
        member = Member(user_id, "editor")
        await store.change_member(
            "a", user_id, member, 1, lambda *_: ALLOW, display_name=display_name, **kw
        )

    await change("mal", "Mal", max_members=10)
    for user_id, name in (("mal", "Ann"), ("dan", " ANN"), ("Ann", None), ("\uff41nn", "x")):
        with pytest.raises(Conflict, match="former member"):
            await change(user_id, name, distinct_name=name is not None, max_members=10)
    with pytest.raises(Conflict, match="former member"):  # a rename alone (PATCH …/me)
        await change("mal", "ann", distinct_name=True)
    await change("ann", "Ann", distinct_name=True, max_members=10)  # ann herself
    assert sorted(m.user_id for m in await store.list_members("a")) == ["ann", "mal"]


async def test_a_name_stored_before_the_rule_still_conflicts_folded(store: Any) -> None:
    """A name stored with an invisible character (before names were refused them, or by a
    path that does not judge the form) is compared folded: no one else takes it plain."""
    await store.create_session("a", "t", "queue", 0)
    await store.change_member(
        "a", "ann", Member("ann", "editor"), 1, lambda *_: ALLOW, display_name="Bo\u00adss"
    )
    await store.change_member("a", "bob", Member("bob", "editor"), 2, lambda *_: ALLOW)
    for name in ("boss", "BOSS\ufe0f", "\uff22oss", "ANN"):
        with pytest.raises(Conflict):
            await store.change_member(
                "a",
                "bob",
                Member("bob", "editor"),
                3,
                lambda *_: ALLOW,
                display_name=name,
                distinct_name=True,
            )
    assert [m.display_name for m in await store.list_members("a")] == ["Bo\u00adss", ""]


async def test_an_audit_page_ends_at_its_bytes_and_says_more_follow(store: Any) -> None:
    """Review FX21: a page holds records up to ``max_bytes`` of their JSON, at least one,
    and says whether more follow, a filtered page as well (every adapter alike)."""
    await store.create_session("a", "t", "queue", 0)
    for n in range(6):
        await store.access.audit("a", n, "big" if n != 3 else "small", "ann", {"pad": "x" * 990})
    page = await store.access.audit_page("a", limit=10, after=0, max_bytes=2500)
    assert [r.at for r in page.rows] == [0, 1] and page.more
    page = await store.access.audit_page("a", limit=10, after=page.rows[-1].id, max_bytes=10)
    assert [r.at for r in page.rows] == [2] and page.more  # one larger than the bound, alone
    page = await store.access.audit_page("a", limit=2, after=0, kinds=["big"], max_bytes=10**6)
    assert [r.at for r in page.rows] == [0, 1] and page.more
    page = await store.access.audit_page("a", limit=3, after=page.rows[-1].id, kinds=["big"])
    assert [r.at for r in page.rows] == [2, 4, 5] and not page.more
    page = await store.access.audit_page("a", limit=1, after=0, actor="bob")
    assert page.rows == [] and not page.more


async def test_private_items_audit_and_usage(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    readers = (Readers("d1", frozenset({"ann"}), frozenset()),)
    async with store.transaction() as tx:
        await tx.insert_private("a", PrivateItem("p1", "tool", "secret", readers), 1)
        await tx.insert_audit("a", 1, "run", "ann", {"ids": ("x",)})
    await store.access.audit("a", 2, "refused", "bob", {})
    assert await store.access.private_items("a") == [PrivateItem("p1", "tool", "secret", readers)]
    audit = await store.access.list_audit("a", limit=10, after=0)
    assert [(r.kind, r.actor, r.data) for r in audit] == [
        ("run", "ann", {"ids": ["x"]}), ("refused", "bob", {}),
    ]  # fmt: skip
    assert readers[0] in await store.access.reader_lists("a")
    ledger = UsageLedger(store, lambda: 86_400.0)
    await ledger.set_quotas("a", Quotas(session_tokens_per_day=100))
    from parley.session.model import Usage

    await store.record_usage(ledger.rows("a", ["ann", "bob"], "m", "r1", Usage(60, 20)))
    used = await ledger.by_user("a", ledger.today())
    assert sum(u.input_tokens + u.output_tokens for u in used) == 80
    assert [u.user_id for u in used] == ["ann", "bob"]
    await store.record_usage(ledger.rows("a", ["ann"], "m", "r2", Usage(30, 0)))
    from parley.session.errors import QuotaExceeded

    with pytest.raises(QuotaExceeded):
        await ledger.admit("a", ["ann"])
    async with store.transaction() as tx:  # what a run's start reads
        assert await tx.tokens_used("a", ledger.today()) == {"ann": 70, "bob": 40}
        assert await tx.tokens_used("a", "1970-01-01") == {}


async def test_a_cut_off_runs_estimated_usage_is_counted_once(store: Any) -> None:
    """Review H2: a recovery's estimate of a cut-off run is stored once (a second recovery's
    is not), and the count of the node that ran it, stored later, takes its place."""
    from parley.server.store.usage import usage_rows
    from parley.session.model import Usage

    await store.create_session("a", "t", "queue", 0)
    ledger = UsageLedger(store, lambda: 86_400.0)

    def estimate(tokens_in: int) -> list[Any]:
        used = Usage(tokens_in, 10)
        return usage_rows("a", ["ann", "bob"], "m", "r1", used, 86_400.0, estimated=True)

    for tokens_in in (40, 50):  # two recoveries
        async with store.transaction() as tx:
            await tx.insert_usage(estimate(tokens_in))
    used = await ledger.by_user("a", ledger.today())
    assert [(u.user_id, u.input_tokens, u.output_tokens, u.calls) for u in used] == [
        ("ann", 20, 5, 1), ("bob", 20, 5, 1),
    ]  # fmt: skip
    await store.record_usage(ledger.rows("a", ["ann", "bob"], "m", "r1", Usage(60, 20)))
    used = await ledger.by_user("a", ledger.today())
    assert [(u.user_id, u.input_tokens, u.output_tokens, u.calls) for u in used] == [
        ("ann", 30, 10, 1), ("bob", 30, 10, 1),
    ]  # fmt: skip
    async with store.transaction() as tx:  # a recovery after it: counted already
        await tx.insert_usage(estimate(40))
    assert await ledger.by_user("a", ledger.today()) == used


async def test_side_threads_and_their_turns(store: Any) -> None:
    await store.create_session("a", "t", "queue", 0)
    await store.create_session("b", "t", "queue", 0)
    readers = (Readers("d1", frozenset({"ann"}), frozenset()),)
    thread = SideThread("t1", "ann", 3, "check", "open", 5, command_id="c1")
    prompt = ThreadTurn("p1", "t1", 0, "prompt", "ann", "is it?", "running", 6)
    reply = ThreadTurn("r1", "t1", 1, "reply", "m", "it is", "done", 7, readers, None, True, "c2")
    async with store.transaction() as tx:
        await tx.insert_thread("a", thread)
        await tx.insert_thread("a", SideThread("t2", "bob", 0, "", "open", 8))
        await tx.insert_thread_turn("a", prompt)
    with pytest.raises(RuntimeError):  # a failed transaction leaves nothing behind
        async with store.transaction() as tx:
            await tx.insert_thread_turn("a", reply)
            raise RuntimeError("rolled back")
    async with store.transaction() as tx:
        await tx.set_thread_turn_status("a", ThreadTurnStatus("t1", "p1", "done", None))
        await tx.insert_thread_turn("a", reply)
        await tx.set_thread_status("a", "t1", "closed")
        await tx.delete_thread("a", "t2")
    done = replace(prompt, status="done")
    assert await store.load_threads("a") == [replace(thread, status="closed", turns=(done, reply))]
    # A prompt a quota failed, and its reply: when to send it again, stored as told.
    midnight = 86_400_000 * 20_000
    failed = ThreadTurn("p2", "t1", 2, "prompt", "ann", "again?", "running", 8)
    refused = replace(reply, id="r2", index=3, status="failed", retry_at=midnight)
    async with store.transaction() as tx:
        await tx.insert_thread_turn("a", failed)
    async with store.transaction() as tx:
        failing = ThreadTurnStatus("t1", "p2", "failed", "quota_exceeded", midnight)
        await tx.set_thread_turn_status("a", failing)
        await tx.insert_thread_turn("a", replace(refused, reason_code="quota_exceeded"))
    turns = (await store.load_threads("a"))[0].turns
    assert [(t.id, t.reason_code, t.retry_at) for t in turns] == [
        ("p1", None, None),
        ("r1", None, None),
        ("p2", "quota_exceeded", midnight),
        ("r2", "quota_exceeded", midnight),
    ]
    assert await store.load_threads("b") == []
    # A reader list named in a turn alone is one the membership checks look at.
    assert await store.access.reader_lists("a") == set(readers)


def _text_updates(*pieces: str) -> tuple[Doc[Any], list[bytes]]:
    """A document whose text grows by ``pieces``, and the update each one made."""
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    updates: list[bytes] = []
    for piece in pieces:
        before = doc.get_state()
        text.insert(len(text), piece)
        updates.append(doc.get_update(before))
    return doc, updates


def _read_back(stored: Any) -> str:
    doc: Doc[Any] = Doc()
    for update in ([stored.snapshot] if stored.snapshot is not None else []) + stored.updates:
        doc.apply_update(update)
    return str(doc.get("t", type=Text))


async def test_a_side_threads_document_is_its_snapshot_and_the_updates_after_it(
    store: Any,
) -> None:
    await store.create_session("a", "t", "queue", 0)
    async with store.transaction() as tx:
        await tx.insert_thread("a", SideThread("t1", "ann", 0, "", "open", 1))
        await tx.insert_thread("a", SideThread("t2", "bob", 0, "", "open", 1))
    doc, updates = _text_updates("one ", "two ", "three ", "four")
    async with store.transaction() as tx:
        ids = await tx.append_thread_updates([("a", "t1", updates[0]), ("a", "t2", b"\x00\x00")])
        ids += await tx.append_thread_updates([("a", "t1", updates[1])])
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert _read_back(await tx.load_thread_doc("a", "t1")) == "one two "  # its own writes
    with pytest.raises(RuntimeError):  # a failed transaction leaves nothing behind
        async with store.transaction() as tx:
            await tx.append_thread_updates([("a", "t1", updates[2])])
            raise RuntimeError("rolled back")
    assert _read_back(await store.load_thread_doc("a", "t1")) == "one two "
    # Squashed: the snapshot holds what the updates it covers held, the rest follows it.
    snap = Doc()
    for update in updates[:2]:
        snap.apply_update(update)
    async with store.transaction() as tx:
        await tx.write_thread_snapshot("a", "t1", snap.get_update(), ids[2], 5)
        await tx.append_thread_updates([("a", "t1", updates[2])])
    later = await store.group.submit("a", updates[3], None, thread_id="t1")
    stored = await store.load_thread_doc("a", "t1")
    assert stored.updates_since_snapshot == 2 and stored.last_update_id == later
    assert _read_back(stored) == str(doc.get("t", type=Text)) == "one two three four"
    assert (await store.load_thread_doc("a", "t2")).updates == [b"\x00\x00"]
    assert (await store.load_doc("a")).updates == []  # the session's own log is apart
    async with store.transaction() as tx:
        await tx.delete_thread("a", "t1")
    assert await store.load_thread_doc("a", "t1") == StoredDoc(None, [], 0)
    assert (await store.load_thread_doc("a", "t2")).updates == [b"\x00\x00"]
    if hasattr(store, "delete_session"):
        assert await store.delete_session("a", 9)
        assert (await store.load_thread_doc("a", "t2")).updates == []


async def test_each_client_id_keeps_its_latest_leaving_within_the_day_and_the_counts(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence_module, "MAX_LEFT_PER_MEMBER", 2)
    await store.create_session("a", "t", "queue", 0)
    await store.create_session("b", "t", "queue", 0)

    async def keep(session_id: str, now_s: float, *left: LeftClient) -> None:
        async with store.transaction() as tx:
            await tx.keep_left_clients(session_id, left, round(now_s * 1000))

    await keep("a", 11.0, LeftClient(1, "ann", 10.0, 3), LeftClient(2, "ann", 11.0, 1))
    await keep("b", 11.0, LeftClient(1, "cy", 11.0, 1))  # another session's own
    await keep("a", 12.5, LeftClient(1, "bob", 12.5, 7))  # a later leaving replaces
    await keep("a", 12.5, LeftClient(1, "eve", 12.0, 9))  # an earlier one (elsewhere) not
    assert await store.left_clients("a", 13_000) == [
        LeftClient(1, "bob", 12.5, 7), LeftClient(2, "ann", 11.0, 1),
    ]  # fmt: skip
    # Of ann's, her newest 2 are kept as hers are written; bob's stays.
    await keep("a", 14.0, LeftClient(3, "ann", 13.0, 2), LeftClient(4, "ann", 14.25, 5))
    assert await store.left_clients("a", 15_000) == [
        LeftClient(4, "ann", 14.25, 5), LeftClient(3, "ann", 13.0, 2),
        LeftClient(1, "bob", 12.5, 7),
    ]  # fmt: skip
    # A day on, a read leaves out those older than the day, and a write lets them go.
    day = KEEP_LEFT_S
    assert [c.client_id for c in await store.left_clients("a", round((13.5 + day) * 1000))] == [4]
    await keep("a", 13.5 + day, LeftClient(5, "bob", 13.5 + day, 1))
    assert [c.client_id for c in await store.left_clients("a", 0)] == [5, 4]
    assert await store.left_clients("b", 0) == [LeftClient(1, "cy", 11.0, 1)]


async def test_a_prompts_link_token_is_stored_with_it_and_read_back_waiting(store: Any) -> None:
    """A prompt sent with a token from another member's invite link keeps the token's
    claims (``entries.token_claims``), so whichever process starts its run later judges
    it by that token: inserted at once or left for the write's last statement alike."""
    claims = ClientClaims("carol", "a", 1_900_000_000, "t1", "e1", "alice", "e0")
    await store.create_session("a", "t", "queue", 0)
    for seq, last in ((1, False), (2, True)):
        row = replace(entry("a", seq, f"c{seq}"), token_claims=claims_column(claims))
        async with store.transaction() as tx:
            tx.claim_seq("a", seq)
            await tx.insert_entry(row, last=last)
            accepted = [PromptAccepted(row.id, seq, "ann")]
            await tx.append_change("a", bytes([seq]), 5, accepted, last=last)
    await add_prompt(store, "a", "c3")
    waiting = await store.entries_with_status("a", [PromptStatus.QUEUED.value])
    assert [claims_of(r.token_claims) for r in waiting] == [claims, claims, None]
