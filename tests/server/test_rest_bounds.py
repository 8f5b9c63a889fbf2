"""What a REST read may cost the server (review, "bounded"): the transcript and the member
list are encoded once per version of each entry or member, a member's reads of them spend a
read budget by their bytes, and an answer the client does not take is written a piece at a
time and dropped at the stall deadline instead of held whole for as long as the connection
lives."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from parley.authz.policy import Readers
from parley.server.http import access as http_access
from parley.server.http import transcript_body
from parley.server.http.bounded import PIECE_BYTES, BoundedJSONResponse
from parley.server.http.models import MemberOut, TranscriptEntryOut, TranscriptOut
from parley.server.http.resource_models import DocumentCreate, DocumentList, ReadersIn
from parley.server.http.transcript_body import TranscriptBody
from parley.server.store import access as store_access
from parley.server.store import reads
from parley.server.store.access import AccessStore
from parley.server.store.access_rows import DocumentRow, DocumentSizes, PrivateItem
from parley.server.ws.uvicorn_protocol import RESET_EXTENSION
from parley.session.ratelimit import Spend
from parley.session.schema import SessionDocument
from tests.conftest import ADMIN_KEY, RunningServer, make_settings, serve_in_process, sqlite_url
from tests.server.runtime.backend import Backend, backend, sql_store
from tests.server.runtime.harness import memory_settings


def a_document(count: int) -> SessionDocument:
    doc = SessionDocument(Doc())
    doc.init_meta("s", "t", "queue")
    for seq in range(1, count + 1):
        author = "alice" if seq % 2 else "bob"
        doc.add_message(id=f"m{seq}", seq=seq, author=author, text=f"note {seq} ü", created_at=seq)
    return doc


async def test_the_transcript_is_encoded_as_the_model_says_and_each_entry_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validated: list[str] = []

    class Counting(TranscriptEntryOut):
        @classmethod
        def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            validated.append(obj["id"])
            return TranscriptEntryOut.model_validate(obj, **kwargs)

    monkeypatch.setattr(transcript_body, "TranscriptEntryOut", Counting)
    doc, body = a_document(5), TranscriptBody()
    names = {"alice": "Alice"}
    first = await body.encode(doc.entries(), names)
    expected = TranscriptOut(
        messages=[
            TranscriptEntryOut.model_validate({**e.to_json(), "author_name": names.get(e.author)})
            for e in doc.entries()
        ]
    )
    assert json.loads(first) == expected.model_dump(mode="json")
    assert len(validated) == 5
    assert await body.encode(doc.entries(), names) is first  # nothing changed: the same answer

    doc.add_message(id="m6", seq=6, author="bob", text="new", created_at=6)
    again = json.loads(await body.encode(doc.entries(), names))
    assert validated[5:] == ["m6"]  # only what changed
    assert [m["id"] for m in again["messages"]] == [f"m{i}" for i in range(1, 7)]
    renamed = json.loads(await body.encode(doc.entries(), {"alice": "Alice", "bob": "Bob"}))
    assert sorted(validated[6:]) == ["m2", "m4", "m6"]  # bob's: his name changed
    assert renamed["messages"][1]["author_name"] == "Bob"

    # Another node's update: the document builds every entry again; equal ones are kept.
    replica = SessionDocument(Doc())
    replica.doc.apply_update(doc.doc.get_update())
    copied = TranscriptBody()
    await copied.encode(replica.entries(), names)
    validated.clear()
    doc.add_message(id="m7", seq=7, author="bob", text="later", created_at=7)
    replica.doc.apply_update(doc.doc.get_update(replica.doc.get_state()))
    assert len(json.loads(await copied.encode(replica.entries(), names))["messages"]) == 7
    assert validated == ["m7"]


async def test_a_long_transcripts_first_encoding_gives_the_loop_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review RN-1: a viewer's first read of a cold 20,000-entry session encoded every entry
    in one block (about a second of the event loop); it yields every few entries encoded."""
    monkeypatch.setattr(transcript_body, "ENCODED_PER_TURN", 2)
    doc, body = a_document(7), TranscriptBody()
    turns = 0
    done = asyncio.Event()

    async def other_clients() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_clients())
    await asyncio.sleep(0)  # the ticker is running
    before = turns
    first = await body.encode(doc.entries(), {})
    during = turns - before
    done.set()
    await ticker
    assert during >= 3, during  # 7 entries, 2 a turn
    assert len(json.loads(first)["messages"]) == 7
    assert await body.encode(doc.entries(), {}) is first  # kept: nothing encoded again


async def test_a_members_transcript_reads_spend_their_read_budget(tmp_path: Path) -> None:
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=1000
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"vic": "viewer", "alice": "editor"})
        alice = await server.connect(sid, "alice")
        for i in range(10):  # a transcript well over the burst
            assert (await alice.command({"type": "message", "id": f"m{i}", "text": "x" * 200}))[
                "type"
            ] == "ack"
        token = await server.token(sid, "vic")
        headers = {"Authorization": f"Bearer {token}"}
        path = f"/api/v1/sessions/{sid}/transcript"
        first = await server.http.get(path, headers=headers)
        assert first.status_code == 200 and len(first.json()["messages"]) == 10
        refused = await server.http.get(path, headers=headers)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        for _ in range(3):  # the admin key reads unbudgeted
            assert (await server.http.get(path)).status_code == 200


class StalledClient:
    """An ASGI ``send`` whose client takes the first piece of the body and then nothing,
    and the scope's reset (``parley serve``'s protocol puts one in every request's)."""

    def __init__(self) -> None:
        self.reset = 0
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and len(self.messages) > 2:
            await asyncio.Event().wait()  # the transport stays past its high-water mark

    def scope(self) -> dict[str, Any]:
        return {"type": "http", "extensions": {RESET_EXTENSION: self._reset}}

    def _reset(self) -> None:
        self.reset += 1


async def test_an_answer_the_client_does_not_take_is_dropped_at_the_stall_deadline() -> None:
    cut: list[bool] = []
    body = b"[" + b"1," * PIECE_BYTES + b"1]"  # three pieces
    response = BoundedJSONResponse(raw=body, stall_timeout_s=0.05, on_cut=lambda: cut.append(True))
    client = StalledClient()

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await response(client.scope(), receive, client.send)
    start, first, second = client.messages
    assert start["type"] == "http.response.start"
    assert first["body"] == body[:PIECE_BYTES] and first["more_body"]
    assert second["body"] == body[PIECE_BYTES : 2 * PIECE_BYTES]  # the write that stalled
    assert client.reset == 1 and cut == [True]


async def test_a_taken_answer_goes_out_whole_in_pieces() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    body = json.dumps({"messages": ["x" * 100] * 2000}).encode()
    await BoundedJSONResponse(raw=body, stall_timeout_s=1.0)({"type": "http"}, receive, send)
    assert sent[0]["headers"] and (b"content-length", str(len(body)).encode()) in sent[0]["headers"]
    pieces = [m for m in sent[1:]]
    assert b"".join(m["body"] for m in pieces) == body
    assert all(m["more_body"] for m in pieces[:-1]) and not pieces[-1]["more_body"]


async def test_a_real_answer_the_client_stops_taking_is_reset(tmp_path: Path) -> None:
    """Through the app's middleware and ``parley serve``'s protocol: the connection of a
    transcript the client does not read is reset at the stall deadline, the kernel's
    buffer with it (review: the cut could not reach the transport, and a close left the
    client able to read megabytes more)."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        send_stall_timeout_s=0.5,
        commands_per_second=1000.0,
        commands_burst=1000,
        user_commands_per_second=1000.0,
        command_bytes_per_s=1e9,
        command_burst_bytes=10**8,
        max_prompt_chars=3_000_000,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        for i in range(3):  # 9 MB: more than the kernel buffers on both ends
            text = "x" * 3_000_000
            answer = await alice.command({"type": "message", "id": f"m{i}", "text": text})
            assert answer["type"] == "ack", answer
        host, port = server.base_url.removeprefix("http://").split(":")
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((host, int(port)))
        request = f"GET /api/v1/sessions/{sid}/transcript HTTP/1.1\r\nHost: x\r\n"
        reader.sendall(f"{request}Authorization: Bearer {ADMIN_KEY}\r\n\r\n".encode())
        cut = server.app.state.parley.metrics.answers_cut
        for _ in range(400):  # the stall deadline, and then some, on a loaded machine
            if cut._value.get() >= 1:
                break
            await asyncio.sleep(0.05)
        assert cut._value.get() == 1
        reader.setblocking(False)
        taken, reset = 0, False
        for _ in range(400):
            try:
                chunk = reader.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            taken += len(chunk)
        reader.close()
        assert reset and taken < 1_000_000, (reset, taken)


async def test_each_route_reads_what_its_body_can_hold(tmp_path: Path) -> None:
    """A route's body limit is what its model can hold (review: 1 MiB of nested lists in an
    unread field cost the unauthenticated invite exchange 0.2 s of the loop to refuse)."""
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        padded = json.dumps({"invite": "x" * 20, "pad": [[[[1]]]] * 300}).encode()
        exchange = await server.http.post(
            "/api/v1/invites/exchange", content=padded, headers={"content-type": "application/json"}
        )
        assert exchange.status_code == 413 and exchange.json()["error"]["code"] == "too_large"
        sid = await server.new_session({"alice": "editor"})
        member = {"role": "viewer", "pad": [[[[1]]]] * 10_000}  # 110 kB: past 64 KiB
        put = await server.http.put(f"/api/v1/sessions/{sid}/members/bob", json=member)
        assert put.status_code == 413
        # The routes that carry texts take up to PARLEY_MAX_REQUEST_BYTES: 180 kB here.
        body = json.dumps({"text": "é" * 30_000, "as_user": "alice"}, ensure_ascii=True)
        assert len(body) > 64 * 1024
        posted = await server.http.post(
            f"/api/v1/sessions/{sid}/messages",
            content=body.encode(),
            headers={"content-type": "application/json"},
        )
        assert posted.status_code == 202, posted.text


async def test_a_members_member_changes_and_reads_are_bounded(tmp_path: Path) -> None:
    """A member who manages members spends their command budget on each change, and a
    session holds at most PARLEY_MAX_MEMBERS_PER_SESSION (review: an owner added 3,000
    members at 120 a second, and each viewer's read of the list then cost 90 ms)."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        max_members_per_session=5,
        commands_burst=4,
        user_commands_per_second=0.001,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"olga": "owner", "vic": "viewer"})
        olga = {"Authorization": f"Bearer {await server.token(sid, 'olga')}"}
        answers = []
        for i in range(10):
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/members/u{i}", json={"role": "viewer"}, headers=olga
            )
            answers.append(put.status_code)
        assert answers.count(200) <= 2 * 4 and 429 in answers  # the member's burst
        # The admin key spends nothing, but the session is full at five.
        for i in range(10, 14):
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/members/u{i}", json={"role": "viewer"}
            )
            assert put.status_code in (200, 409)
        listed = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
        assert len(listed) == 5
        full = await server.http.put(
            f"/api/v1/sessions/{sid}/members/late", json={"role": "viewer"}
        )
        assert full.status_code == 409 and "the most it may have" in full.json()["error"]["message"]
        vic = {"Authorization": f"Bearer {await server.token(sid, 'vic')}"}
        reads = [
            (await server.http.get(f"/api/v1/sessions/{sid}/members", headers=vic)).status_code
            for _ in range(12)
        ]
        assert 200 in reads and 429 in reads


async def test_members_added_at_once_stop_at_the_cap(tmp_path: Path) -> None:
    """Concurrent adds each saw the same count and all went in (review): they take turns."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", max_members_per_session=3)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"olga": "owner"})
        puts = await asyncio.gather(
            *(
                server.http.put(f"/api/v1/sessions/{sid}/members/u{i}", json={"role": "viewer"})
                for i in range(8)
            )
        )
        assert sorted(p.status_code for p in puts) == [200, 200] + [409] * 6
        listed = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
        assert len(listed) == 3


async def _members_session(server: RunningServer, count: int) -> tuple[str, dict[str, str]]:
    """A session of ``count`` members (``vic`` a viewer among them), and vic's headers."""
    sid = await server.new_session({"vic": "viewer"})
    for i in range(count - 1):
        put = await server.http.put(f"/api/v1/sessions/{sid}/members/m{i}", json={"role": "viewer"})
        assert put.status_code == 200, put.text
    return sid, {"Authorization": f"Bearer {await server.token(sid, 'vic')}"}


async def test_a_read_of_the_member_list_costs_what_changed_not_every_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review R4-1: each read of the list read every member from the store and validated a
    ``MemberOut`` for each (110-180 ms at 600 members, within the command budget). A read
    of an unchanged list reads no member and validates none, in a session of 10 members or
    of 200; after a rename, the renamed member alone is encoded again."""
    rows_read, validated = [0], [0]
    read_row, init = reads.member_row, MemberOut.__init__

    def counted_row(row: Any) -> Any:
        rows_read[0] += 1
        return read_row(row)

    def counted_init(self: MemberOut, **fields: Any) -> None:
        validated[0] += 1
        init(self, **fields)

    monkeypatch.setattr(reads, "member_row", counted_row)
    monkeypatch.setattr(MemberOut, "__init__", counted_init)
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:

        async def cost_of_a_read(sid: str, headers: dict[str, str]) -> tuple[int, int]:
            rows_read[0] = validated[0] = 0
            listed = await server.http.get(f"/api/v1/sessions/{sid}/members", headers=headers)
            assert listed.status_code == 200, listed.text
            return rows_read[0], validated[0]

        costs = {}
        for count in (10, 200):
            sid, vic = await _members_session(server, count)
            first = await server.http.get(f"/api/v1/sessions/{sid}/members", headers=vic)
            assert len(first.json()["members"]) == count
            costs[count] = await cost_of_a_read(sid, vic)
            renamed = await server.http.patch(
                f"/api/v1/sessions/{sid}/me", json={"display_name": "Vic"}, headers=vic
            )
            assert renamed.status_code == 200, renamed.text
            assert await cost_of_a_read(sid, vic) == (0, 1)  # vic's entry alone
            listed = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
            assert [m["display_name"] for m in listed if m["user_id"] == "vic"] == ["Vic"]
            assert {m["user_id"] for m in listed} == {"vic", *(f"m{i}" for i in range(count - 1))}
            order = [(m["created_at"], m["user_id"]) for m in listed]
            assert order == sorted(order) and len(order) == count
        assert costs == {10: (0, 0), 200: (0, 0)}


async def _read_over_the_burst(server: RunningServer, path: str, member: dict[str, str]) -> None:
    """``member``'s read of ``path``, an answer over the read budget's burst of 2,000 bytes,
    is answered, and their next is refused ``rate_limited`` for the read budget; the admin
    key reads it unbudgeted, the same answer."""
    first = await server.http.get(path, headers=member)
    assert first.status_code == 200 and len(first.content) > 2000
    refused = await server.http.get(path, headers=member)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert "read budget" in refused.json()["error"]["message"]
    for _ in range(3):  # the admin key reads unbudgeted
        assert (await server.http.get(path)).json() == first.json()


async def test_a_members_reads_of_the_member_list_spend_their_read_budget(
    tmp_path: Path,
) -> None:
    """Review R4-1: the list's reads spent one command each, whatever their size; they
    spend the read budget by the answer's bytes too, as the transcript's do."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=2000
    )
    async with serve_in_process(settings) as server:
        sid, vic = await _members_session(server, 20)  # a list well over the burst
        await _read_over_the_burst(server, f"/api/v1/sessions/{sid}/members", vic)


async def test_a_members_audit_reads_spend_their_read_budget_and_a_refused_one_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RJ-1: the audit log was read without any budget: one owner rereading a 4 MB
    page on a few connections held another session's acks at 100-510 ms. A member's page
    spends a command and their read budget by its bytes, as the member list's does; one
    refused reads nothing from the store."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=0.001, read_burst_bytes=2000
    )
    loads: list[str] = []
    audit_page = AccessStore.audit_page

    async def counted(self: AccessStore, session_id: str, **kwargs: Any) -> Any:
        loads.append(session_id)
        return await audit_page(self, session_id, **kwargs)

    monkeypatch.setattr(AccessStore, "audit_page", counted)
    async with serve_in_process(settings) as server:
        sid, _ = await _members_session(server, 20)  # 20 membership records
        await server.http.put(f"/api/v1/sessions/{sid}/members/m0", json={"role": "owner"})
        owner = {"Authorization": f"Bearer {await server.token(sid, 'm0')}"}
        path = f"/api/v1/sessions/{sid}/audit?limit=500"
        first = await server.http.get(path, headers=owner)
        assert first.status_code == 200 and len(first.content) > 2000, first.text
        assert len(loads) == 1
        refused = await server.http.get(path, headers=owner)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert "read budget" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert len(loads) == 1  # refused before the store was read
        for _ in range(3):  # the admin key reads unbudgeted
            assert (await server.http.get(path)).json() == first.json()


async def _documents_session(server: RunningServer, count: int) -> tuple[str, dict[str, str]]:
    """A session with ``count`` documents, each with a reader list of 20 users that names
    the viewer ``vic`` (about 1.2 kB of list a document), and vic's headers."""
    sid = await server.new_session({"vic": "viewer"})
    readers = {"users": ["vic", *(f"reader-{n:050d}" for n in range(19))], "roles": ["owner"]}
    for i in range(count):
        body = {"title": f"doc {i}", "text": "x" * 10, "readers": readers}
        made = await server.http.post(f"/api/v1/sessions/{sid}/documents", json=body)
        assert made.status_code == 201, made.text
    return sid, {"Authorization": f"Bearer {await server.token(sid, 'vic')}"}


def _count_reader_lists_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the documents whose reader lists the store reads, as it reads them."""
    read: list[str] = []
    readers_of = store_access._readers

    def counted(row: Any) -> Any:
        read.append(row.id)
        return readers_of(row)

    monkeypatch.setattr(store_access, "_readers", counted)
    return read


async def test_a_members_document_lists_spend_their_read_budget_and_a_refused_one_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RL-2: the list of documents, with every document's reader lists (22 MB for
    100 documents at the lists' bounds), spent no budget: a viewer listing in a loop was
    sent 30 MB/s against a read budget of 4 MB/s and held every session on the node 1.3 s
    a call. It spends the read budget by its bytes, as one document's read does, paid
    before the store is read by what the member's last list cost: one refused reads no
    document from the store, and lists asked at once on several connections are not each
    made against what is left of one budget."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=0.001, read_burst_bytes=8000
    )
    async with serve_in_process(settings) as server:
        sid, vic = await _documents_session(server, 4)
        read = _count_reader_lists_read(monkeypatch)
        path = f"/api/v1/sessions/{sid}/documents"
        first = await server.http.get(path, headers=vic)
        # Over half the burst: what is left after it is no debt, nor enough for another.
        assert first.status_code == 200 and 4000 < len(first.content) < 8000, first.text
        listed = first.json()["documents"]
        assert [d["title"] for d in listed] == [f"doc {i}" for i in range(4)]
        assert listed[0]["readers"]["users"][0] == "reader-" + "0" * 50  # sorted, as before
        assert "vic" in listed[0]["readers"]["users"] and listed[0]["text"] is None
        assert listed[0]["chars"] == 10
        assert len(read) == 4
        refused = await server.http.get(path, headers=vic)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert "read budget" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert len(read) == 4  # refused before the store was read
        for _ in range(3):  # the admin key reads unbudgeted
            assert (await server.http.get(path)).json() == first.json()


async def _request_at_once(
    b: Backend, path: str, token: str, store_read: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[httpx.Response], list[str]]:
    """Two GETs of ``path`` with ``token`` asked at once, each read from the store giving
    the loop a turn first (``store_read``: the class and the name of its read), so both
    are under way together; their answers, and the store's reads made."""
    owner, name = store_read
    reading = getattr(owner, name)
    made: list[str] = []

    async def turn_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(name)
        await asyncio.sleep(0)  # the other request's turn
        return await reading(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, turn_first)
    answers = await asyncio.gather(*(b.request("GET", path, token=token) for _ in range(2)))
    return list(answers), made


def _read_left(b: Backend, room: Any, user_id: str) -> float:
    now = b.state.clock()
    return float(room.budgets.bucket(user_id, Spend.READ_BYTES, now).left(now))


async def test_a_members_first_document_lists_are_paid_before_the_store_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX67: a member's first list (what their last one cost not known) was paid 1 byte
    before it was made: first lists asked at once were each made against one budget. It
    is paid first by an upper estimate (the session's documents, each as large as one can
    be listed, up to the burst), and settled to its true cost once made."""
    settings = memory_settings(read_bytes_per_s=0.001, read_burst_bytes=8000)
    async with sql_store(sqlite_url(tmp_path)) as store, backend(settings, store=store) as b:
        sid = await b.new_session({"vic": "viewer"})
        readers = ReadersIn(users=["vic", *(f"reader-{n:050d}" for n in range(19))])
        for i in range(4):
            body = DocumentCreate(title=f"doc {i}", text="x" * 10, readers=readers)
            await b.call(http_access.create_document, session_id=sid, body=body)
        token = await b.token(sid, "vic")
        path = f"/api/v1/sessions/{sid}/documents"
        answers, made = await _request_at_once(
            b, path, token, (AccessStore, "list_documents"), monkeypatch
        )
        assert sorted(a.status_code for a in answers) == [200, 429], [a.text for a in answers]
        assert len(made) == 1  # the refused one read nothing
        listed = next(a for a in answers if a.status_code == 200)
        assert 4000 < len(listed.content) < 8000
        assert len(listed.json()["documents"]) == 4
        refused = next(a for a in answers if a.status_code == 429)
        assert "read budget" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        room = await b.rooms.get(sid)
        assert _read_left(b, room, "vic") == 8000 - len(listed.content)  # its true cost


class _HeldLists:
    """Lists of documents held once paid, before the store reads them, until ``go``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._reached, self._go = asyncio.Event(), asyncio.Event()
        listing = AccessStore.list_documents

        async def held(store: AccessStore, *args: Any, **kwargs: Any) -> Any:
            self._reached.set()
            await self._go.wait()
            return await listing(store, *args, **kwargs)

        monkeypatch.setattr(AccessStore, "list_documents", held)

    async def start(self, request: Awaitable[httpx.Response]) -> asyncio.Future[httpx.Response]:
        """``request`` under way, once held (an answer before that fails the test)."""
        answer = asyncio.ensure_future(request)
        reached = asyncio.ensure_future(self._reached.wait())
        await asyncio.wait({answer, reached}, return_when=asyncio.FIRST_COMPLETED)
        reached.cancel()
        if answer.done():
            raise AssertionError(f"answered before it was held: {answer.result().text}")
        return answer

    def go(self) -> None:
        self._go.set()


async def test_a_members_first_document_list_leaves_them_budget_for_other_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX74: a first list was paid ``count * LISTED_DOCUMENT_MAX_BYTES`` (1.3 MB a
    document) up to the burst: in a session of 20 small documents it took all of a
    member's read budget until made, and their other reads meanwhile were refused. It is
    paid by a bound of the documents' listed bytes the store gives with their count."""
    settings = memory_settings(read_bytes_per_s=0.001, read_burst_bytes=100_000)
    async with sql_store(sqlite_url(tmp_path)) as store, backend(settings, store=store) as b:
        sid = await b.new_session({"vic": "viewer"})
        for i in range(20):
            body = DocumentCreate(title=f"doc {i}", text="x" * 10, readers=ReadersIn(users=["vic"]))
            await b.call(http_access.create_document, session_id=sid, body=body)
        room = await b.rooms.get(sid)
        vic = (Readers("d", frozenset({"vic"}), frozenset()),)
        room.context.keep(PrivateItem("e1", "reply", "note", vic))
        token = await b.token(sid, "vic")
        held = _HeldLists(monkeypatch)
        path = f"/api/v1/sessions/{sid}/documents"
        listed = await held.start(b.request("GET", path, token=token))
        private = await b.request("GET", f"/api/v1/sessions/{sid}/entries/e1/private", token=token)
        held.go()
        assert private.status_code == 200, private.text
        answer = await listed
        assert answer.status_code == 200 and len(answer.json()["documents"]) == 20
        spent = len(answer.content) + len(private.content)
        assert _read_left(b, room, "vic") == 100_000 - spent  # what was sent, once


async def test_a_members_later_document_list_is_paid_for_what_was_added_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX74: a later list was paid what the member's last one cost, too little once
    documents were added (the rest charged once made, so lists asked at once could go
    past the budget by up to a burst of debt). It is paid that and the most the documents
    added since can add, never more than the most the list can be."""
    settings = memory_settings(read_bytes_per_s=0.001, read_burst_bytes=100_000)
    async with sql_store(sqlite_url(tmp_path)) as store, backend(settings, store=store) as b:
        sid = await b.new_session({"vic": "viewer"})

        async def attach(count: int) -> None:
            for i in range(count):
                readers = ReadersIn(users=["vic", *(f"reader-{n:050d}" for n in range(5))])
                body = DocumentCreate(title=f"doc {i}", text="x", readers=readers)
                await b.call(http_access.create_document, session_id=sid, body=body)

        await attach(2)
        token = await b.token(sid, "vic")
        path = f"/api/v1/sessions/{sid}/documents"
        first = await b.request("GET", path, token=token)
        assert first.status_code == 200
        await attach(10)
        room = await b.rooms.get(sid)
        held = _HeldLists(monkeypatch)
        listed = await held.start(b.request("GET", path, token=token))
        paid = 100_000 - len(first.content) - _read_left(b, room, "vic")
        held.go()
        answer = await listed
        assert answer.status_code == 200 and len(answer.json()["documents"]) == 12
        assert len(answer.content) <= paid < 2 * len(answer.content)  # nothing owed after
        assert _read_left(b, room, "vic") == 100_000 - len(first.content) - len(answer.content)


_names = st.lists(st.text(min_size=1, max_size=30), max_size=4)
_listed_documents = st.lists(
    st.builds(
        lambda document_id, title, users, roles, chars, at: DocumentRow(
            document_id,
            "s",
            title,
            "",
            Readers(document_id, frozenset(users), frozenset(roles)),
            at,
            chars,
        ),
        st.text(min_size=1, max_size=20),
        st.text(min_size=1, max_size=40),
        _names,
        _names,
        st.integers(0, 2**63 - 1),
        st.integers(-(2**63), 2**63 - 1),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(_listed_documents)
def test_a_document_list_is_never_larger_than_its_bound(rows: list[DocumentRow]) -> None:
    """FX74: what a list is paid before it is made (``listed_bytes_bound`` of the sizes the
    store gives) is never less than the list, whatever characters its titles and reader
    lists hold (control characters, escaped to 6 bytes; non-ASCII; 4-byte UTF-8)."""
    sizes = DocumentSizes(
        len(rows),
        sum(len(r.id) + len(r.title) for r in rows),
        sum(len(store_access._readers_json(r.readers)) for r in rows),
    )
    listed = asyncio.run(http_access.document_list_json(rows))
    assert len(listed) <= http_access.listed_bytes_bound(sizes)


async def test_a_members_first_side_thread_lists_are_paid_before_the_store_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX67: as a first list of documents, a list of side-threads was paid 1 byte before it
    was made (each one, there being no last size); it is paid first by the most a member's
    list can be (their side-threads at their bound), and settled to its true cost."""
    settings = memory_settings(read_bytes_per_s=0.001, read_burst_bytes=8000)
    async with sql_store(sqlite_url(tmp_path)) as store, backend(settings, store=store) as b:
        sid = await b.new_session({"vic": "viewer"})
        token = await b.token(sid, "vic")
        path = f"/api/v1/sessions/{sid}/threads"
        answers, made = await _request_at_once(
            b, path, token, (type(b.store), "load_threads"), monkeypatch
        )
        assert sorted(a.status_code for a in answers) == [200, 429], [a.text for a in answers]
        assert len(made) == 1  # the refused one read nothing
        listed = next(a for a in answers if a.status_code == 200)
        assert listed.json() == {"threads": []}
        room = await b.rooms.get(sid)
        assert _read_left(b, room, "vic") == 8000 - len(listed.content)


async def test_a_members_reads_of_restricted_text_spend_their_read_budget(tmp_path: Path) -> None:
    """FX67: ``…/entries/{id}/private`` spent no read budget: a member could pull large
    restricted texts in a loop. It spends it by the answer's bytes, as the transcript's
    read does: 429 ``rate_limited`` with a retry hint past it; the admin key's are free."""
    settings = memory_settings(read_bytes_per_s=0.001, read_burst_bytes=2000)
    async with sql_store(sqlite_url(tmp_path)) as store, backend(settings, store=store) as b:
        sid = await b.new_session({"olga": "owner"})
        room = await b.rooms.get(sid)
        olga = (Readers("d", frozenset({"olga"}), frozenset()),)
        room.context.keep(PrivateItem("e1", "reply", "é" * 600, olga))  # 1,200 bytes
        token = await b.token(sid, "olga")
        path = f"/api/v1/sessions/{sid}/entries/e1/private"
        first = await b.request("GET", path, token=token)
        assert first.status_code == 200 and first.json()["text"] == "é" * 600
        assert _read_left(b, room, "olga") == 2000 - len(first.content)
        refused = await b.request("GET", path, token=token)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert "read budget" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        for _ in range(3):  # the admin key reads unbudgeted
            assert (await b.request("GET", path)).json() == first.json()


async def test_a_long_document_list_is_encoded_giving_the_loop_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review RL-2: 100 documents' reader lists (22 MB) were encoded in one block, half a
    second of the event loop; the list gives it back every few hundred kB encoded."""
    monkeypatch.setattr(http_access, "LISTED_BYTES_PER_TURN", 1)
    readers = Readers("d", frozenset({"vic", "amy"}), frozenset({"owner"}))
    rows = [DocumentRow(f"d{i}", "s", f"doc {i}", "", readers, i, 10) for i in range(6)]
    turns = 0
    done = asyncio.Event()

    async def other_clients() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_clients())
    await asyncio.sleep(0)  # the ticker is running
    before = turns
    body = await http_access.document_list_json(rows)
    during = turns - before
    done.set()
    await ticker
    assert during >= 5, during  # 6 documents, 1 a turn
    listed = DocumentList.model_validate_json(body).documents
    assert [d.title for d in listed] == [f"doc {i}" for i in range(6)]
    assert listed[0].readers.users == ["amy", "vic"] and listed[0].text is None


async def test_a_read_of_one_document_reads_no_other_documents_reader_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RL-2's follow-up: a read or a detach of one document judged the caller on
    every document's reader lists, read from the store for each call (a 220 kB document's
    read took 0.4 s among 100 with long lists). It reads that document's alone."""
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        sid, vic = await _documents_session(server, 5)
        path = f"/api/v1/sessions/{sid}/documents"
        ids = [d["id"] for d in (await server.http.get(path)).json()["documents"]]
        read = _count_reader_lists_read(monkeypatch)
        got = await server.http.get(f"{path}/{ids[2]}", headers=vic)
        assert got.status_code == 200 and got.json()["text"] == "x" * 10
        assert set(read) == {ids[2]}, read
        read.clear()
        assert (await server.http.get(f"{path}/none", headers=vic)).status_code == 404
        assert read == []
        assert (await server.http.delete(f"{path}/{ids[3]}")).status_code == 204
        assert set(read) == {ids[3]}, read
        assert (await server.http.get(f"{path}/{ids[3]}", headers=vic)).status_code == 404


async def test_audit_pages_end_at_their_bytes_and_list_every_record_once(tmp_path: Path) -> None:
    """Review FX21: a page of the audit log was bounded in records only (500 records of
    8 KB: a 4 MB page built on the event loop, ~0.3 s), and ``next_after`` came only on a
    full page. A page ends at ``audit_page_max_bytes``, gives ``next_after`` whenever
    records follow, and paging by either cursor lists every record once, in order; a
    record larger than the bound comes alone on its page."""
    cap = 8192
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", audit_page_max_bytes=cap)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({})
        access = AccessStore(server.app.state.parley.store)
        sizes = [700 * (1 + n % 5) for n in range(40)]
        sizes[17] = 3 * cap  # larger than a page
        for n, size in enumerate(sizes):
            await access.audit(sid, n, "big", "admin", {"n": n, "pad": "é" * size})
        written = [r.id for r in await access.list_audit(sid, limit=500, after=0, kinds=["big"])]
        assert len(written) == 40

        async def pages(by: str) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            query = ""
            for _ in range(100):  # bounded: far more than the pages there are
                answer = await server.http.get(f"/api/v1/sessions/{sid}/audit?limit=500{query}")
                assert answer.status_code == 200, answer.text
                page = answer.json()
                assert len(answer.content) <= cap or len(page["records"]) == 1
                found.append(page)
                if page["next_after"] is None:
                    return found
                query = f"&after={page['next_after']}" if by == "after" else ""
                query += f"&cursor={page['next_cursor']}" if by == "cursor" else ""
            raise AssertionError("paging did not end")

        for by in ("after", "cursor"):
            found = await pages(by)
            listed = [r["id"] for page in found for r in page["records"] if r["kind"] == "big"]
            assert listed == written, by
            assert len(found) > 5  # the pages ended at their bytes, not at 500 records
            alone = [p for p in found if any(r["data"]["n"] == 17 for r in p["records"])]
            assert len(alone) == 1 and len(alone[0]["records"]) == 1
            for page in found[:-1]:  # each but the last says where the next begins
                assert page["next_after"] == page["records"][-1]["id"]


async def test_a_members_reads_of_facts_and_pins_spend_their_read_budget(tmp_path: Path) -> None:
    """Review RV40-F1: ``GET …/facts`` (up to the facts' share of the window, some 200 kB at
    a large one) and ``GET …/pins`` spent no budget: a viewer read them in a loop at 46-81
    MB/s against a budget of 1 MiB/s, and another member's reads slowed sixfold. They
    spend the read budget by their bytes, as the transcript's do."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=2000
    )
    async with serve_in_process(settings) as server:
        sid, vic = await _members_session(server, 1)
        for key in ("region", "tier", "owner"):
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/facts/{key}", json={"value": "x" * 900}
            )
            assert put.status_code == 200, put.text
        path = f"/api/v1/sessions/{sid}/facts"
        await _read_over_the_burst(server, path, vic)
        # The pins' read spends the same budget: in debt, it is refused too.
        pins = await server.http.get(f"/api/v1/sessions/{sid}/pins", headers=vic)
        assert pins.status_code == 429
        # A change's answer lists every fact: its bytes are paid as a read's are.
        await server.http.put(f"/api/v1/sessions/{sid}/members/ed", json={"role": "editor"})
        ed = {"Authorization": f"Bearer {await server.token(sid, 'ed')}"}
        put = await server.http.put(f"{path}/zone", json={"value": "y"}, headers=ed)
        assert put.status_code == 200 and len(put.content) > 2000
        assert (await server.http.get(path, headers=ed)).status_code == 429
        # Nor does another change's answer go past it (review RV42-F3: answers were sent at
        # 11 times the budget): refused before anything is written.
        again = await server.http.put(f"{path}/area", json={"value": "z"}, headers=ed)
        assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
        assert "area" not in (await server.http.get(path)).json()["facts"]


async def test_a_members_list_of_their_sessions_spends_their_budgets(tmp_path: Path) -> None:
    """Review RV40-F2: ``GET /api/v1/me/sessions`` (a page of 200 sessions took the loop
    about 16 ms) spent no budget. A page spends a command and the read budget in the token's
    session by its bytes."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=2000
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"vic": "viewer"}, title="t" * 500)
        for _ in range(4):
            await server.new_session({"vic": "viewer"}, title="t" * 500)
        vic = {"Authorization": f"Bearer {await server.token(sid, 'vic')}"}
        first = await server.http.get("/api/v1/me/sessions?limit=10", headers=vic)
        assert first.status_code == 200 and len(first.json()["sessions"]) == 5
        assert len(first.content) > 2000
        second = await server.http.get("/api/v1/me/sessions?limit=10", headers=vic)
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
        # The token's session's other reads wait for the same budget.
        facts = await server.http.get(f"/api/v1/sessions/{sid}/facts", headers=vic)
        assert facts.status_code == 429
