"""Commands resent after a reconnect, over a real socket: a client that lost its acks
resends everything unanswered at once (both SDKs do), past the command rate; what was
acknowledged lately is answered as it was, and nothing is stored twice."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets
from pycrdt import Array, Map
from sqlalchemy import update

from parley.server.runtime.membership import RESENDS_BURST
from parley.server.settings import Settings
from parley.server.store.db import create_engine
from parley.server.store.tables import command_acks
from parley.session.commands import FactCommand, PinCommand
from parley.session.recent_acks import MAX_PER_AUTHOR
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import FakeModel
from tests.yclient import YClient


def tight_rate(url: str, tmp_path: Path, *, burst: int) -> Settings:
    """A command rate that hardly refills, its burst ``burst`` a socket (twice a member)."""
    return make_settings(
        url,
        tmp_path / "d",
        commands_per_second=0.01,
        commands_burst=burst,
        user_commands_per_second=0.01,
    )


@contextlib.asynccontextmanager
async def _tight_rest(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An editor's REST client to a server of ``tight_rate`` (a member's burst of 10), and
    the route of a new session's messages."""
    settings = tight_rate(sqlite_url(tmp_path), tmp_path, burst=5)
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        token = await server.token(sid, "ann")
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
        ) as ann:
            yield ann, f"/api/v1/sessions/{sid}/messages"


async def test_a_burst_of_resent_commands_gets_its_first_acks_past_the_rate(
    tmp_path: Path,
) -> None:
    settings = tight_rate(sqlite_url(tmp_path), tmp_path, burst=5)
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        ann = await server.connect(sid, "ann")
        sent = [{"type": "message", "id": f"m{n}", "text": f"note {n}"} for n in range(5)]
        first = [await ann.command(message) for message in sent]
        assert [a["type"] for a in first] == ["ack"] * 5
        for _ in range(2):  # reconnects, resending all at once: past the member's rate
            again = await server.connect(sid, "ann")
            resent = await asyncio.gather(*(again.command(message) for message in sent))
            assert list(resent) == first
        over = await again.command({"type": "message", "id": "m5", "text": "new"})
        assert (over["type"], over["code"]) == ("error", "rate_limited")  # still in force
        texts = [e["content"] for e in again.entries() if e["kind"] == "message"]
        assert texts == [f"note {n}" for n in range(5)]


async def test_a_command_past_the_members_rate_is_told_when_to_come_back(
    tmp_path: Path,
) -> None:
    """Review RH-2: one member in four SDK sessions had a third of their commands refused
    ``rate_limited`` (the budget is the member's across their sockets; the SDKs pace each
    socket), and a socket's refusal said nothing of when to send again. It carries
    ``retry_after_ms``, as a 1013's reason does; resent by its id then, it is stored once."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        commands_per_second=1000.0,
        commands_burst=2,
        user_commands_per_second=1.0,  # a member's burst: 4 (twice a socket's)
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        tabs = [await server.connect(sid, "ann") for _ in range(3)]
        sent = [{"type": "message", "id": f"m{n}", "text": f"note {n}"} for n in range(6)]
        answers = await asyncio.gather(*(tabs[n % 3].command(m) for n, m in enumerate(sent)))
        refused = [(m, a) for m, a in zip(sent, answers, strict=True) if a["type"] == "error"]
        assert refused and {a["code"] for _, a in refused} == {"rate_limited"}
        for _, answer in refused:
            wait_ms = answer["retry_after_ms"]
            assert isinstance(wait_ms, int) and 0 < wait_ms <= 2000, answer
        for message, answer in refused:  # each told when; the first back may take it
            for _ in range(5):
                await asyncio.sleep(answer["retry_after_ms"] / 1000)
                answer = await tabs[0].command(message)
                if answer["type"] == "ack":
                    break
            assert answer["type"] == "ack", answer
        texts = sorted(e["content"] for e in tabs[0].entries() if e["kind"] == "message")
        assert texts == sorted(m["text"] for m in sent)


async def test_one_acknowledged_command_resent_in_a_loop_is_cut_off(tmp_path: Path) -> None:
    """Review (bounded): past the command rate, a resend the recent acks held was answered
    every time, uncharged: one command resent 24,000 times was answered until the command
    bytes ran out, and another member's acks took 100 times longer meanwhile. Each spends
    the member's resend allowance (a reconnect's worth); past it, ``rate_limited``,
    counted as a refusal: the flood ends in the 4429 close."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        commands_per_second=0.01,
        commands_burst=5,
        user_commands_per_second=0.01,
        abuse_refusals=3,
        abuse_window_s=600,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor", "bob": "editor"})
        ann = await server.connect(sid, "ann")
        message = {"type": "message", "id": "m", "text": "once"}
        first = await ann.command(message)
        assert first["type"] == "ack"
        answers = []
        with contextlib.suppress(ConnectionError, TimeoutError, websockets.ConnectionClosed):
            for _ in range(2 * RESENDS_BURST):
                answers.append(await ann.command(message, timeout=5))
        answered = len([a for a in answers if a == first])
        # The socket's burst after the first send (4), then the member's allowance.
        assert RESENDS_BURST <= answered <= RESENDS_BURST + 5, answered
        assert answers[:answered] == [first] * answered
        refused = answers[answered:]
        assert 3 <= len(refused) <= 4 and {a.get("code") for a in refused} == {"rate_limited"}
        assert await ann.wait_closed() == 4429
        bob = await server.connect(sid, "bob")
        assert (await bob.command({"type": "message", "id": "b", "text": "fine"}))["type"] == "ack"


async def test_rest_resends_of_one_acknowledged_command_spend_the_resend_allowance(
    tmp_path: Path,
) -> None:
    """Review (same answer everywhere, bounded): over REST too, a resend the recent acks
    held was answered past the command budget without limit. It spends the member's
    resend allowance, as on a socket; past it, ``429 rate_limited``."""
    async with _tight_rest(tmp_path) as (ann, messages):
        body = {"text": "once", "id": "m"}
        first = await ann.post(messages, json=body)
        assert first.status_code == 202
        answers = []
        for _ in range(2 * RESENDS_BURST):
            answer = await ann.post(messages, json=body)
            answers.append(answer)
            if answer.status_code != 202:
                break
        answered = [a.json() for a in answers if a.status_code == 202]
        assert answered == [first.json()] * len(answered)
        # The member's burst after the first (9), then the member's allowance.
        assert RESENDS_BURST <= len(answered) <= RESENDS_BURST + 10, len(answered)
        assert answers[-1].status_code == 429
        assert answers[-1].json()["error"]["code"] == "rate_limited"


async def _sent_on_a_socket(
    settings: Settings, count: int
) -> tuple[str, list[dict[str, str]], list[dict[str, Any]]]:
    """``count`` messages an editor sent on a socket to a server of ``settings`` then
    stopped: the session, the messages and their first acks."""
    sent = [{"type": "message", "id": f"m{n}", "text": f"note {n}"} for n in range(count)]
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"ann": "editor"})
        ann = await server.connect(sid, "ann")
        first = [await ann.command(message) for message in sent]
        assert [a["type"] for a in first] == ["ack"] * count
    return sid, sent, first


async def test_a_reconnect_resending_hundreds_of_commands_gets_their_first_acks(
    tmp_path: Path,
) -> None:
    """A client's resends past the rate after a restart, up to a reconnect's worth (the
    member's resend allowance), all get their first acks, from the store."""
    database = sqlite_url(tmp_path)
    roomy = make_settings(
        database,
        tmp_path / "d",
        commands_per_second=1000,
        commands_burst=1000,
        user_commands_per_second=1000,
    )
    sid, sent, first = await _sent_on_a_socket(roomy, 200)
    tight = tight_rate(database, tmp_path, burst=5)
    async with serve_in_process(tight) as again:
        ann = await again.connect(sid, "ann")
        resent = await asyncio.gather(*(ann.command(message) for message in sent))
        assert list(resent) == first


async def test_the_same_bad_input_gets_the_same_answer_on_the_socket_and_over_rest(
    tmp_path: Path,
) -> None:
    """Review (same answer everywhere): a 2,001-character fact was ``too_large`` on the
    socket and ``invalid`` over REST; a 65-character entry id ``not_found`` on the socket
    and ``invalid`` over REST; a command longer than the command-bytes budget's burst
    was ``rate_limited`` for good ("slow down"), though it could never pass; a viewer's
    fact was refused as "may not pin"."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", command_burst_bytes=1000)
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor", "vic": "viewer"})
        ann = await server.connect(sid, "ann")
        base = f"/api/v1/sessions/{sid}"
        fact = {"type": "set_fact", "id": "f", "key": "k", "value": "x" * 2001}
        on_socket = await ann.command(fact)
        over_rest = await server.http.put(f"{base}/facts/k", json={"value": "x" * 2001})
        assert (on_socket["code"], over_rest.status_code) == ("too_large", 413)
        assert over_rest.json()["error"]["code"] == "too_large"
        pin = {"type": "pin", "id": "p", "entry_id": "e" * 65}
        on_socket = await ann.command(pin)
        over_rest = await server.http.post(f"{base}/pins", json={"entry_id": "e" * 65})
        assert (on_socket["code"], over_rest.json()["error"]["code"]) == ("invalid", "invalid")
        long = await ann.command({"type": "message", "id": "m", "text": "y" * 1500})
        assert long["code"] == "too_large"  # past the burst: it could never pass
        vic = await server.connect(sid, "vic")
        refused = await vic.command({"type": "set_fact", "id": "v", "key": "k", "value": "v"})
        assert refused["code"] == "forbidden" and "facts" in refused["message"]


async def test_rest_resends_get_their_first_answers_past_the_rate(tmp_path: Path) -> None:
    """Review of the resends: over REST, resent messages were charged again and 19 of 80
    came back 429, while the same resent on a socket were all answered."""
    async with _tight_rest(tmp_path) as (ann, messages):
        sent = [{"text": f"note {n}", "id": f"m{n}"} for n in range(10)]  # the burst
        first = [await ann.post(messages, json=body) for body in sent]
        assert [r.status_code for r in first] == [202] * 10
        again = [await ann.post(messages, json=body) for body in sent]
        assert [r.json() for r in again] == [r.json() for r in first]
        over = await ann.post(messages, json={"text": "new", "id": "m10"})
        assert over.status_code == 429


async def _stored_by_rest(
    tmp_path: Path, bodies: list[dict[str, str]]
) -> tuple[str, str, dict[str, str], list[Any]]:
    """``bodies`` posted as messages by an editor over REST to a server then stopped: the
    database, the messages route, the editor's auth header and the first answers."""
    database = sqlite_url(tmp_path)
    async with serve_in_process(make_settings(database, tmp_path / "d")) as server:
        sid = await server.new_session({"ann": "editor"})
        token = await server.token(sid, "ann")
        messages = f"/api/v1/sessions/{sid}/messages"
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth) as ann:
            first = [(await ann.post(messages, json=body)).json() for body in bodies]
    return database, messages, auth, first


async def test_rest_resends_of_stored_commands_spend_the_command_budget(tmp_path: Path) -> None:
    """Review (bounded): over REST, a resend answered from the store, or from the recent
    acks, spent no command budget, while the same on a socket did: a caller could make a
    read of the store per request without limit. Now each spends it; past it, the recent
    acks still answer."""
    sent = [{"text": f"note {n}", "id": f"m{n}"} for n in range(2)]
    database, messages, auth, first = await _stored_by_rest(tmp_path, sent)
    tight = tight_rate(database, tmp_path, burst=5)
    async with (
        serve_in_process(tight) as again,
        httpx.AsyncClient(base_url=again.base_url, headers=auth) as ann,
    ):
        for _ in range(6):  # 12 resends: past the member's burst of 10
            resent = [await ann.post(messages, json=body) for body in sent]
            assert [r.json() for r in resent] == first
        over = await ann.post(messages, json={"text": "new", "id": "m2"})
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "rate_limited"


async def test_a_rest_resend_the_store_answers_is_answered_past_the_budget(
    tmp_path: Path,
) -> None:
    """Review (same answer everywhere): past the member's command budget, a resend of a
    command only the store knows (after a restart) was refused 429 over REST while a
    socket answered it from the store, within its resend allowance. Now REST answers it
    too, within the member's; a command never stored is still refused."""
    database, messages, auth, (first,) = await _stored_by_rest(
        tmp_path, [{"text": "kept", "id": "kept"}]
    )
    tight = tight_rate(database, tmp_path, burst=5)
    async with (
        serve_in_process(tight) as again,
        httpx.AsyncClient(base_url=again.base_url, headers=auth) as ann,
    ):
        spent = [await ann.post(messages, json={"text": f"n{n}", "id": f"n{n}"}) for n in range(12)]
        assert spent[-1].status_code == 429  # the budget is gone
        resent = await ann.post(messages, json={"text": "kept", "id": "kept"})
        assert resent.status_code == 202 and resent.json() == first
        new = await ann.post(messages, json={"text": "new", "id": "never"})
        assert new.status_code == 429 and new.json()["error"]["code"] == "rate_limited"


async def test_resends_of_stored_commands_after_a_restart_get_their_first_acks(
    tmp_path: Path,
) -> None:
    """Review (SDKs): the recent acks are in memory, so after a restart (or past the 64 a
    member's are kept) an SDK's resends of stored prompts and messages were refused
    ``rate_limited`` (a caller retrying them stored them twice), and a large burst closed
    the socket 4429 for good. Those stored are answered as the first time, whatever the
    rate."""
    database = sqlite_url(tmp_path)
    sid, sent, first = await _sent_on_a_socket(make_settings(database, tmp_path / "d"), 12)
    tight = tight_rate(database, tmp_path, burst=2)
    async with serve_in_process(tight) as again:
        ann = await again.connect(sid, "ann")
        # A stored id passes the rate only for what it stored (review of the mend: any
        # command under a stored message's id went past it, 1000 in a second).
        reused = [
            {"type": "set_fact", "id": f"m{n}", "key": "k", "value": f"v{n}"} for n in range(6, 12)
        ]
        answers = await asyncio.gather(*(ann.command(fact) for fact in reused))
        assert sum(a["type"] == "ack" for a in answers) <= 4, answers  # the burst, no more
        assert any(a.get("code") == "rate_limited" for a in answers)
        resent = await asyncio.gather(*(ann.command(message) for message in sent[:6]))
        assert list(resent) == first[:6]
        over = await ann.command({"type": "message", "id": "new", "text": "new"})
        assert (over["type"], over["code"]) == ("error", "rate_limited")  # still in force
        texts = [e["content"] for e in ann.entries() if e["kind"] == "message"]
        assert texts == [f"note {n}" for n in range(12)]


async def test_commands_with_no_entry_resent_after_a_restart_are_not_carried_out_again(
    database_url: str, tmp_path: Path
) -> None:
    """Review (faults): only prompts and messages were known to the store by their command
    ids, so a pin, a fact or a policy resent after a restart (an SDK resends what it had
    no answer for) was carried out again: it pinned what another member had unpinned
    meanwhile, and set back a fact and a policy others had changed. Their acks are kept
    with what they wrote: a resend gets its first ack and changes nothing; another
    command under such an id is a conflict, of any kind."""
    pin = {"type": "pin", "id": "p1", "entry_id": ""}
    fact = {"type": "set_fact", "id": "f1", "key": "account", "value": "A-1"}
    policy = {"type": "set_policy", "id": "s1", "policy": "coalesce"}
    async with serve_in_process(make_settings(database_url, tmp_path / "d")) as server:
        sid = await server.new_session({"ann": "owner", "bob": "owner"})
        ann = await server.connect(sid, "ann")
        bob = await server.connect(sid, "bob")
        note = await ann.command({"type": "message", "id": "m1", "text": "keep this"})
        pin["entry_id"] = note["message_id"]
        first = [await ann.command(c) for c in (pin, fact, policy)]
        assert [a["type"] for a in first] == ["ack"] * 3, first
        # Another member undoes each of them.
        for undo in (
            {"type": "unpin", "id": "b1", "entry_id": note["message_id"]},
            {"type": "set_fact", "id": "b2", "key": "account", "value": "B-2"},
            {"type": "set_policy", "id": "b3", "policy": "queue"},
        ):
            assert (await bob.command(undo))["type"] == "ack"
    async with serve_in_process(make_settings(database_url, tmp_path / "d")) as again:
        ann = await again.connect(sid, "ann")
        resent = [await ann.command(c) for c in (pin, fact, policy)]
        assert resent == first
        reused = [
            {"type": "set_fact", "id": "p1", "key": "account", "value": "C-3"},
            {"type": "unpin", "id": "f1", "entry_id": note["message_id"]},
            {"type": "message", "id": "s1", "text": "under a policy's id"},
            {"type": "prompt", "id": "p1", "text": "under a pin's id"},
        ]
        for command in reused:
            answer = await ann.command(command)
            assert (answer["type"], answer.get("code")) == ("error", "conflict"), answer
        assert ann.doc.get("pins", type=Array).to_py() == []
        assert ann.doc.get("facts", type=Map).to_py() == {"account": "B-2"}
        session = (await again.http.get(f"/api/v1/sessions/{sid}")).json()
        assert session["policy"] == "queue"
        texts = [e["content"] for e in ann.entries()]
        assert texts == ["keep this"]


async def test_acks_kept_by_an_earlier_release_answer_their_resends(
    database_url: str, tmp_path: Path
) -> None:
    """The kept acks' fingerprints were the commands' ``repr``, which a release that gives a
    command a new field changes: those kept before an upgrade still answer their resends
    after it (and a different command under the id is still a conflict)."""
    pin = {"type": "pin", "id": "p1", "entry_id": ""}
    fact = {"type": "set_fact", "id": "f1", "key": "account", "value": "A-1"}
    async with serve_in_process(make_settings(database_url, tmp_path / "d")) as server:
        sid = await server.new_session({"ann": "owner"})
        ann = await server.connect(sid, "ann")
        note = await ann.command({"type": "message", "id": "m1", "text": "keep this"})
        pin["entry_id"] = note["message_id"]
        first = [await ann.command(c) for c in (pin, fact)]
        assert [a["type"] for a in first] == ["ack"] * 2, first
    engine = create_engine(database_url)
    earlier = {
        "p1": PinCommand("", note["message_id"], True),
        "f1": FactCommand("", "account", "A-1"),
    }
    async with engine.begin() as connection:  # as the release before this one kept them
        for command_id, command in earlier.items():
            legacy = hashlib.sha256(repr(command).encode()).hexdigest()
            kept = command_acks.c.command_id == command_id
            await connection.execute(update(command_acks).where(kept).values(fingerprint=legacy))
    await engine.dispose()
    async with serve_in_process(make_settings(database_url, tmp_path / "d")) as again:
        ann = await again.connect(sid, "ann")
        assert [await ann.command(c) for c in (pin, fact)] == first
        other = {"type": "set_fact", "id": "f1", "key": "account", "value": "C-3"}
        assert (await ann.command(other)).get("code") == "conflict"
        assert ann.doc.get("facts", type=Map).to_py() == {"account": "A-1"}


async def _open_ask_and_delete(ann: YClient) -> tuple[dict[str, Any], ...]:
    """Ann's side-thread opened (``o1``), asked in (``q1``, its reply settled) and deleted
    (``d1``): the three commands and their first acks."""
    opened = await ann.command({"type": "thread_open", "id": "o1", "title": "mine"})
    thread_id = opened["thread_id"]
    prompt = {"type": "thread_prompt", "id": "q1", "thread_id": thread_id, "text": "why?"}
    asked = await ann.command(prompt)
    await ann.wait_until(lambda c: _settled(c, thread_id))
    delete = {"type": "thread_delete", "id": "d1", "thread_id": thread_id}
    deleted = await ann.command(delete)
    assert [a["type"] for a in (opened, asked, deleted)] == ["ack"] * 3, (opened, asked, deleted)
    open_ = {"type": "thread_open", "id": "o1", "title": "mine"}
    return open_, prompt, delete, opened, asked, deleted


def _settled(client: YClient, thread_id: str) -> bool:
    """Whether ``client`` was told that its side-thread's reply was written."""
    states = [
        f["thread"]
        for f in client.unsolicited
        if f.get("type") == "thread" and f["thread"]["id"] == thread_id
    ]
    return bool(states) and not states[-1]["running"] and len(states[-1]["turns"]) == 2


async def _no_threads(server: RunningServer, sid: str) -> None:
    listed = await server.http.get(f"/api/v1/sessions/{sid}/threads")  # the admin: everyone's
    assert listed.status_code == 200 and listed.json()["threads"] == [], listed.text


async def test_a_deleted_side_thread_resent_after_a_restart_is_not_opened_again(
    database_url: str, tmp_path: Path
) -> None:
    """Review (nothing acknowledged is lost): a side-thread opened then deleted, both
    resent after a restart (their acks lost with the socket), was opened again under a
    new id, and the resent delete was answered from its kept ack: the member was left
    with the thread they had deleted. The open, its prompt and the delete get their first
    acks, and no thread is there; another command under the open's id is a conflict."""
    settings = make_settings(database_url, tmp_path / "d")
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        ann = await server.connect(sid, "ann", commands="text")
        *sent, opened, asked, deleted = await _open_ask_and_delete(ann)
    async with serve_in_process(settings, FakeModel.answering("ok")) as again:
        ann = await again.connect(sid, "ann")
        resent = [await ann.command(c) for c in sent]
        assert resent == [opened, asked, deleted]
        await _no_threads(again, sid)
        for reused in (
            {"type": "thread_open", "id": "o1", "title": "another title"},
            {"type": "message", "id": "o1", "text": "under the open's id"},
            {"type": "thread_open", "id": "q1", "title": "mine"},
        ):
            answer = await ann.command(reused)
            assert (answer["type"], answer.get("code")) == ("error", "conflict"), answer
        await _no_threads(again, sid)
        assert ann.entries() == []


async def test_a_deleted_side_thread_resent_past_the_recent_acks_is_not_opened_again(
    tmp_path: Path,
) -> None:
    """The same without a restart: the recent acks keep a member's last 64, so 65 later
    commands leave the store to answer the resends."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        commands_burst=MAX_PER_AUTHOR * 2,
        commands_per_second=1000,
        user_commands_per_second=1000,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        ann = await server.connect(sid, "ann", commands="text")
        *sent, opened, asked, deleted = await _open_ask_and_delete(ann)
        for n in range(MAX_PER_AUTHOR + 1):
            later = await ann.command({"type": "message", "id": f"m{n}", "text": f"n{n}"})
            assert later["type"] == "ack", later
        again = await server.connect(sid, "ann")
        resent = [await again.command(c) for c in sent]
        assert resent == [opened, asked, deleted]
        await _no_threads(server, sid)
        other = await again.command({"type": "thread_open", "id": "o1", "title": "other"})
        assert (other["type"], other.get("code")) == ("error", "conflict"), other
        await _no_threads(server, sid)


async def test_a_deleted_side_thread_resent_over_rest_after_a_restart_is_not_opened_again(
    database_url: str, tmp_path: Path
) -> None:
    """The same over REST: a resent open gets its first answer (the deleted thread's id)
    and opens nothing, a resent prompt in it its first answer, on a socket too."""
    settings = make_settings(database_url, tmp_path / "d")
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        ann = await server.connect(sid, "ann", commands="text")
        auth = {"Authorization": f"Bearer {await server.token(sid, 'ann')}"}
        threads = f"/api/v1/sessions/{sid}/threads"
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth) as rest:
            opened = await rest.post(threads, json={"id": "o1", "title": "mine"})
            assert opened.status_code == 201, opened.text
            thread_id = opened.json()["thread_id"]
            prompts = f"{threads}/{thread_id}/prompts"
            asked = await rest.post(prompts, json={"id": "q1", "text": "why?"})
            assert asked.status_code == 202, asked.text
            await ann.wait_until(lambda c: _settled(c, thread_id))
            deleted = await rest.delete(f"{threads}/{thread_id}")
            assert deleted.status_code == 204, deleted.text
    async with (
        serve_in_process(settings, FakeModel.answering("ok")) as again,
        httpx.AsyncClient(base_url=again.base_url, headers=auth) as rest,
    ):
        reopened = await rest.post(threads, json={"id": "o1", "title": "mine"})
        assert (reopened.status_code, reopened.json()) == (201, opened.json())
        reasked = await rest.post(prompts, json={"id": "q1", "text": "why?"})
        assert (reasked.status_code, reasked.json()) == (202, asked.json())
        ann = await again.connect(sid, "ann")
        prompt = {"type": "thread_prompt", "id": "q1", "thread_id": thread_id, "text": "why?"}
        on_socket = await ann.command(prompt)
        assert {k: on_socket[k] for k in asked.json()} == asked.json(), on_socket
        other = await rest.post(threads, json={"id": "o1", "title": "other"})
        assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
        await _no_threads(again, sid)
