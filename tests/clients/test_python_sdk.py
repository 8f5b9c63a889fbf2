"""The Python SDK (``clients/python``, ``parley_client``) against a real server: join,
prompt, stream, cancel; two members converging; a prompt sent while the server is down,
resent by its id after the restart and stored once; every error code as its typed error;
the admin client over the REST API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from parley_client import (
    ERRORS,
    Ack,
    AdminClient,
    Busy,
    CommandTimeout,
    Conflict,
    ConnectionState,
    Entry,
    Forbidden,
    InternalError,
    InvalidInput,
    NotFound,
    ParleyError,
    ProviderError,
    Quotas,
    RateLimited,
    Readers,
    Reconnect,
    ReservedName,
    Session,
    SessionClosed,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnexpectedAnswer,
    UnknownCommand,
    connect,
    error_for,
)
from parley_client.errors import error_of_response, rate_wait, retry_after_seconds
from parley_client.session import _Pending, _placed, _seq_of
from parley_client.view import Snapshot
from parley_client.wire import (
    AWARENESS,
    STEP2,
    AwarenessFrame,
    AwarenessState,
    CommandReply,
    decode_server_frame,
    encode_awareness,
    encode_command,
    encode_sync,
    varbytes,
    varuint,
)
from pycrdt import Doc

from parley.session.schema import SCHEMA_VERSION, SessionDocument
from tests.conftest import (
    ADMIN_KEY,
    REPO_ROOT,
    RunningServer,
    ServerProcess,
    free_port,
    make_settings,
    serve_in_process,
    sqlite_url,
)
from tests.fake_model import FakeModel
from tests.refusing_server import error_body, refusing
from tests.server.test_sdk_js import Unclosing

FAST = Reconnect(initial_s=0.05, max_s=0.5)


@pytest.fixture
async def slow_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Replies take a second or two: long enough to watch one stream and to cancel it."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=30)
    async with serve_in_process(settings) as running:
        yield running


async def new_session(admin: AdminClient, members: dict[str, str]) -> str:
    session = await admin.create_session(title="sdk")
    for user_id, role in members.items():
        await admin.put_member(session.id, user_id, role)
    return session.id


async def join(
    server: RunningServer, admin: AdminClient, sid: str, user: str, **options: Any
) -> Session:
    """``user``'s session, with a fresh token; ``options``: ``connect()``'s."""
    token = await admin.create_token(sid, user)
    presence = {"user": {"name": user}}
    return connect(server.ws_url, sid, token.token, presence=presence, **options)


def story(entries: tuple[Entry, ...]) -> list[tuple[str, str, str, str]]:
    return [(e.id, e.kind, e.status, e.content) for e in entries]


async def test_join_prompt_stream_and_cancel(slow_server: RunningServer) -> None:
    async with AdminClient(slow_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(slow_server, admin, sid, "alice") as alice:
            assert alice.state is ConnectionState.CONNECTED
            await alice.wait_for(lambda s: s.here == ["alice"])
            changes = alice.changes()
            first = await alice.prompt("tell me a story")
            second = await alice.prompt("and another one")
            assert first.seq is not None and second.seq == first.seq + 1
            assert first.id != second.id  # ids made by the SDK

            lengths: list[int] = []  # the reply's text, change after change, while it streams
            async for change in changes:
                prompt = change.snapshot.entry(first.prompt_id)
                reply = change.snapshot.entry(prompt.reply_id or "") if prompt else None
                if reply is not None and reply.status == "streaming" and reply.content:
                    assert reply in change.added + change.updated
                    lengths.append(len(reply.content))
                if len(set(lengths)) >= 2:
                    break
            assert lengths == sorted(lengths)
            assert alice.position(second.prompt_id) == 1  # waits behind the running one

            ack = await alice.cancel(first.prompt_id)
            assert ack.id not in alice.unacknowledged
            cut = await alice.answer(first.prompt_id)
            assert cut is not None and cut.status == "cancelled" and cut.content
            prompt = alice.entry(first.prompt_id)
            assert prompt is not None and prompt.status == "cancelled"
            assert prompt.reason_code == "cancelled"

            done = await alice.answer(second.prompt_id)
            assert done is not None and done.status == "done"
            assert "offline model" in done.content and done.reply_to == second.prompt_id
            assert alice.position(second.prompt_id) is None
            kinds = [(e.kind, e.status) for e in alice.transcript]
            assert kinds == [
                ("prompt", "cancelled"),
                ("reply", "cancelled"),
                ("prompt", "done"),
                ("reply", "done"),
            ]
        assert alice.closed
        with pytest.raises(SessionClosed):
            await alice.prompt("after closing")


async def test_one_member_in_four_sessions_sending_at_once_has_every_command_stored_once(
    sqlite_server: RunningServer,
) -> None:
    """Review RH-2: the SDK paces each socket under the server's budget of one socket, but
    the server budgets a member across all their sockets: four sessions of one member,
    each sending 40 messages at once, had a third refused ``rate_limited`` with no hint.
    The refusal says when (``retry_after_ms``); the SDK waits, slows down and writes the
    command again by its id: every one acked, each stored once."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(90):
        sid = await new_session(admin, {"alice": "editor"})

        async def tab(k: int) -> list[Ack]:
            async with await join(sqlite_server, admin, sid, "alice") as session:
                return await asyncio.gather(*(session.message(f"{k}.{n}") for n in range(40)))

        acks = [ack for acked in await asyncio.gather(*map(tab, range(4))) for ack in acked]
        assert len({ack.message_id for ack in acks}) == 160
        stored = [e.content for e in await admin.transcript(sid) if e.kind == "message"]
        assert sorted(stored) == sorted(f"{k}.{n}" for k in range(4) for n in range(40))


async def test_rest_calls_over_the_members_budget_wait_and_are_made_again(
    tmp_path: Path,
) -> None:
    """FX59: a REST call refused ``rate_limited`` says when (``Retry-After``, the body's
    ``retry_after_ms``); ``AdminClient`` with a member's token raised it where a socket's
    command waits and is sent again. It waits as the socket's does: six fact changes
    against a budget of two and four a second are all made, once each."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "data", commands_burst=1, user_commands_per_second=4.0
    )
    async with (
        serve_in_process(settings) as server,
        AdminClient(server.base_url, ADMIN_KEY) as admin,
        asyncio.timeout(30),
    ):
        sid = await new_session(admin, {"eve": "editor"})
        async with AdminClient(server.base_url, await server.token(sid, "eve")) as eve:
            for n in range(6):
                await eve.set_fact(sid, f"k{n}", "v")
            assert await admin.facts(sid) == {f"k{n}": "v" for n in range(6)}


def test_only_a_rate_refusal_that_says_when_soon_is_waited_for_a_few_times() -> None:
    """The one rule of both paths (a socket's command, a REST call): ``rate_limited`` with a
    wait of at most a minute, three times; a quota, a cap or a refusal that says nothing
    raises at once."""
    soon = error_for("rate_limited", "slow down", retry_after=0.25)
    assert [rate_wait(soon, n) for n in range(4)] == [0.25, 0.25, 0.25, None]
    assert rate_wait(error_for("rate_limited", "x", retry_after=3600.0), 0) is None
    assert rate_wait(error_for("rate_limited", "x"), 0) is None
    assert rate_wait(error_for("quota_exceeded", "x", retry_after=1.0), 0) is None
    assert rate_wait(error_for("too_many_streams", "x", retry_after=1.0), 0) is None
    body = json.dumps({"error": {"code": "rate_limited", "message": "x", "retry_after_ms": 1500}})
    assert error_of_response(429, body, retry_after="2").retry_after == 1.5  # to the ms


async def test_two_members_prompting_at_once_converge(sqlite_server: RunningServer) -> None:
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor", "bob": "editor"})
        async with (
            await join(sqlite_server, admin, sid, "alice") as alice,
            await join(sqlite_server, admin, sid, "bob") as bob,
        ):
            acks = await asyncio.gather(
                *[alice.prompt(f"alice {n}") for n in range(3)],
                *[bob.prompt(f"bob {n}") for n in range(3)],
            )
            assert sorted(a.seq or 0 for a in acks) == list(range(1, 7))

            def settled(session: Session) -> bool:
                replies = [e for e in session.transcript if e.kind == "reply"]
                return len(replies) == 6 and all(e.status == "done" for e in replies)

            await asyncio.gather(alice.wait_for(settled), bob.wait_for(settled))
            assert story(alice.transcript) == story(bob.transcript)
            assert story(await admin.transcript(sid)) == story(alice.transcript)
            entries = alice.transcript
            for prompt, reply in zip(entries[::2], entries[1::2], strict=True):
                assert prompt.kind == "prompt" and reply.reply_to == prompt.id

            # Presence: each sees the other, and who is typing.
            await bob.wait_for(lambda s: s.here == ["alice", "bob"])
            await alice.set_typing(True)
            await bob.wait_for(lambda s: s.typing == ["alice"])


@contextlib.asynccontextmanager
async def alice_on_a_restartable_server(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> AsyncIterator[tuple[ServerProcess, AdminClient, Session]]:
    """A server process to kill and start again, its admin client, and alice connected to
    a session of it (``alice.session_id``), reconnecting fast (90 s at most)."""
    node = ServerProcess(sqlite_url(tmp_path), tmp_path / "data", free_port())
    server_processes.append(node)
    await node.start()
    async with AdminClient(node.base_url, ADMIN_KEY) as admin, asyncio.timeout(90):
        sid = await new_session(admin, {"alice": "editor"})
        token = (await admin.create_token(sid, "alice")).token
        async with connect(node.ws_url, sid, token, reconnect=FAST) as alice:
            yield node, admin, alice


async def test_a_prompt_sent_while_the_server_is_down_is_stored_once(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    async with alice_on_a_restartable_server(tmp_path, server_processes) as (node, admin, alice):
        before = await alice.prompt("before the restart")
        await alice.answer(before.prompt_id)
        node.kill()
        await alice.wait_for(lambda s: s.state is ConnectionState.CONNECTING)

        sending = asyncio.create_task(alice.prompt("while the server is down"))
        await alice.wait_for(lambda s: len(s.unacknowledged) == 1)
        assert not sending.done()  # nobody to acknowledge it
        await node.start()
        ack = await sending  # resent after the reconnect, by the same id
        assert alice.connects >= 2 and alice.unacknowledged == []
        reply = await alice.answer(ack.prompt_id)
        assert reply is not None and reply.status == "done"

        again = await alice.prompt("while the server is down", id=ack.id)
        assert again == ack  # the first ack: nothing stored twice
        texts = [e.content for e in alice.transcript if e.kind == "prompt"]
        assert texts == ["before the restart", "while the server is down"]
        assert story(await admin.transcript(alice.session_id)) == story(alice.transcript)


async def test_many_commands_waiting_across_a_restart_are_paced_and_all_acked_in_order(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """Review (SDKs): after a reconnect the SDK wrote every command waiting at once; past
    the server's command burst of a socket (30) the rest were refused ``rate_limited``,
    though they would have been taken a moment later. They go out in order, a few at a
    time and at the server's rate: every one is acked, once, in the order it was made."""
    async with alice_on_a_restartable_server(tmp_path, server_processes) as (node, admin, alice):
        before = await alice.message("before the restart")
        node.kill()
        await alice.wait_for(lambda s: s.state is ConnectionState.CONNECTING)
        texts = [f"while down {n}" for n in range(45)]  # past the burst of 30
        sending = [asyncio.create_task(alice.message(text)) for text in texts]
        await alice.wait_for(lambda s: len(s.unacknowledged) == len(texts))
        await node.start()
        acks = await asyncio.gather(*sending)  # none refused (RateLimited)
        assert alice.unacknowledged == []
        seqs = [ack.seq or 0 for ack in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(texts)
        stored = [e for e in await admin.transcript(alice.session_id) if e.kind == "message"]
        assert [e.content for e in stored] == ["before the restart", *texts]
        assert [e.id for e in stored] == [before.message_id, *(a.message_id for a in acks)]


class Relay:
    """A loopback TCP relay between the SDK and a server that can drop what the server
    sends (``holding``), cut every connection, and keep new ones waiting until
    ``admitting`` is set again, as a network that fails would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.holding = False
        self.admitting = asyncio.Event()
        self.admitting.set()
        self.links: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.admitting.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            while data := await src.read(65536):
                if not (held and self.holding):
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(
            pipe(reader, up_writer, False), pipe(up_reader, writer, True), return_exceptions=True
        )
        for end in (writer, up_writer):
            end.transport.abort()

    def cut(self) -> None:
        for end in self.links:
            end.transport.abort()
        self.links.clear()


@contextlib.asynccontextmanager
async def relayed(server: RunningServer) -> AsyncIterator[tuple[AdminClient, Relay]]:
    """The admin client, and a relay to the server to cut or hold (60 s at most)."""
    port = int(server.base_url.rsplit(":", 1)[1])
    async with (
        AdminClient(server.base_url, ADMIN_KEY) as admin,
        Relay(port) as relay,
        asyncio.timeout(60),
    ):
        yield admin, relay


async def test_a_prompt_stored_whose_ack_was_lost_is_resent_and_stored_once(
    sqlite_server: RunningServer,
) -> None:
    async with relayed(sqlite_server) as (admin, relay):
        sid = await new_session(admin, {"alice": "editor"})
        token = (await admin.create_token(sid, "alice")).token
        async with connect(f"ws://127.0.0.1:{relay.port}", sid, token, reconnect=FAST) as alice:
            relay.holding = True  # the server's answers go nowhere from now on
            sending = asyncio.create_task(alice.prompt("did this arrive?"))
            for _ in range(400):
                if [e.kind for e in await admin.transcript(sid)][:1] == ["prompt"]:
                    break
                await asyncio.sleep(0.05)
            assert [e.content for e in await admin.transcript(sid)][:1] == ["did this arrive?"]
            assert not sending.done()  # stored, but its ack never came
            relay.cut()
            relay.holding = False
            ack = await sending  # resent on the next socket, by the same id: the first ack
            assert alice.connects == 2
            await alice.answer(ack.prompt_id)
            prompts = [e for e in await admin.transcript(sid) if e.kind == "prompt"]
            assert [(p.id, p.content) for p in prompts] == [(ack.prompt_id, "did this arrive?")]
            assert story(alice.transcript) == story(await admin.transcript(sid))


async def test_a_command_that_timed_out_names_itself_and_is_resent_by_its_id(
    sqlite_server: RunningServer,
) -> None:
    """Review (SDKs): a caller bounding a command's wait lost its id with the timeout, and
    could not retry without storing the prompt twice. ``CommandTimeout`` holds the command
    as sent; the SDK does not resend it, and ``resend`` gets the first ack."""
    async with relayed(sqlite_server) as (admin, relay):
        sid = await new_session(admin, {"alice": "editor"})
        token = (await admin.create_token(sid, "alice")).token
        url = f"ws://127.0.0.1:{relay.port}"
        async with connect(url, sid, token, reconnect=FAST, command_timeout_s=1.0) as alice:
            relay.holding = True  # the server's answers go nowhere from now on
            with pytest.raises(CommandTimeout) as timed:
                await alice.prompt("did this arrive?")
            command = timed.value.command
            assert isinstance(timed.value, TimeoutError) and timed.value.code == "timeout"
            assert dict(command) == {
                "type": "prompt",
                "id": timed.value.command_id,
                "text": "did this arrive?",
            }
            assert alice.unacknowledged == []  # given up: not resent by the SDK
            for _ in range(400):
                if [e.kind for e in await admin.transcript(sid)][:1] == ["prompt"]:
                    break
                await asyncio.sleep(0.05)
            relay.cut()
            relay.holding = False
            ack = await alice.resend(command, timeout_s=30)  # the first ack: stored once
            assert ack.id == timed.value.command_id and alice.connects == 2
            prompts = [e for e in await admin.transcript(sid) if e.kind == "prompt"]
            assert [(p.id, p.content) for p in prompts] == [(ack.prompt_id, "did this arrive?")]


def readme_error_codes() -> list[str]:
    """The error table of the docs' "The admin API" page (docs/api.md)."""
    text = (REPO_ROOT / "docs" / "api.md").read_text()
    table = text.split("| Error code |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)


def test_every_error_code_of_the_readme_is_a_typed_error() -> None:
    codes = readme_error_codes()
    assert sorted(codes) == sorted(ERRORS) and "reserved_name" in codes
    for code in codes:
        error = error_for(code, "because")
        assert type(error) is ERRORS[code] and type(error) is not ParleyError
        assert error.code == code and error.message == "because"
    assert isinstance(error_for("busy", "x"), Conflict)
    assert isinstance(error_for("too_large", "x"), InvalidInput)
    unknown = error_for("brand_new", "x")
    assert type(unknown) is ParleyError and unknown.code == "brand_new"


@pytest.fixture
async def gated_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server whose model holds a ``[wait]`` prompt's run until the test is over, so a
    second prompt meets a run in flight whatever the machine's speed."""
    model = FakeModel()
    model.gate = asyncio.Event()
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings, model) as running:
        yield running
        model.gate.set()


async def test_refusals_arrive_as_typed_errors(gated_server: RunningServer) -> None:
    sqlite_server = gated_server
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"olga": "owner", "eve": "editor", "vic": "viewer"})
        async with (
            await join(sqlite_server, admin, sid, "vic") as vic,
            await join(sqlite_server, admin, sid, "eve") as eve,
            await join(sqlite_server, admin, sid, "olga") as olga,
        ):
            with pytest.raises(Forbidden) as refused:
                await vic.prompt("may I?")
            assert refused.value.code == "forbidden"
            with pytest.raises(NotFound):
                await eve.cancel("no-such-prompt")
            with pytest.raises(Forbidden):
                await eve.set_policy("reject")
            with pytest.raises(UnknownCommand):
                await eve.command("dance")
            with pytest.raises(InvalidInput):
                await eve.prompt("   ")
            with pytest.raises(TooLarge):
                await eve.message("x" * 40_000)
            await eve.message("hello", id="m1")
            with pytest.raises(Conflict) as reused:
                await eve.prompt("hello", id="m1")  # an id used for another command
            assert reused.value.command_id == "m1"  # review: to resend by, or look up
            assert (await olga.set_policy("reject")).data["policy"] == "reject"
            await eve.prompt("first [wait]")  # runs until the end of the test
            with pytest.raises(Busy):
                await eve.prompt("second")
            ack = await eve.set_fact("region", "eu-west-1")
            assert ack.seq is None
            await eve.wait_for(lambda s: s.snapshot.facts.get("region") == "eu-west-1")
            note = await eve.message("keep this")
            await eve.pin(note.message_id)
            await eve.wait_for(lambda s: note.message_id in s.snapshot.pins)

            await admin.remove_member(sid, "vic")  # the server ends vic's socket for good
            with pytest.raises(SessionClosed) as ended:
                await vic.wait_for(lambda s: False)
            assert ended.value.close_code == 4403 and isinstance(ended.value.cause, Forbidden)
            assert vic.closed and vic.closed_by is ended.value

        with pytest.raises(Unauthenticated):
            async with connect(sqlite_server.ws_url, sid, "not-a-token"):
                pass
        with pytest.raises(NotFound) as missing:
            await admin.get_session("no-such-session")
        assert missing.value.status == 404
        async with AdminClient(sqlite_server.base_url, "wrong-key") as stranger:
            with pytest.raises(Unauthenticated):
                await stranger.list_sessions()
        member = (await admin.create_token(sid, "eve")).token
        async with AdminClient(sqlite_server.base_url, member) as eve_rest:
            assert sorted(m.user_id for m in await eve_rest.list_members(sid)) == ["eve", "olga"]
            with pytest.raises(Forbidden):
                await eve_rest.audit(sid)
            with pytest.raises(Forbidden):
                await eve_rest.create_session("mine")


async def test_admin_client_over_the_rest_api(sqlite_server: RunningServer) -> None:
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        created = await admin.create_session(title="Incident 42", policy="coalesce")
        sid = created.id
        assert (created.title, created.policy, created.last_seq) == ("Incident 42", "coalesce", 0)
        member = await admin.put_member(sid, "alice", "editor", denials=["pin"])
        assert "prompt" in member.capabilities and "pin" not in member.capabilities
        await admin.put_member(sid, "bob", "viewer")
        assert [m.user_id for m in await admin.list_members(sid)] == ["alice", "bob"]
        token = await admin.create_token(sid, "alice", ttl_seconds=600)
        assert (token.user_id, token.role, token.session_id) == ("alice", "editor", sid)

        async with connect(sqlite_server.ws_url, sid, token.token) as alice:
            ack = await alice.prompt("what is in the runbook?")
            await alice.answer(ack.prompt_id)
        transcript = await admin.transcript(sid)
        assert [e.kind for e in transcript] == ["prompt", "reply"]

        page = await admin.audit(sid)
        kinds = [r.kind for r in page.records]
        assert kinds.count("membership") == 2 and "model_call" in kinds
        model_call = next(r for r in page.records if r.kind == "model_call")
        assert model_call.actor == "alice"
        assert [r.kind for r in (await admin.audit(sid, kind="membership")).records] == [
            "membership",
            "membership",
        ]
        paged, cursor = [], None  # read on by cursor, two at a time: every record once
        while (part := await admin.audit(sid, limit=2, cursor=cursor)).records:
            paged += [r.id for r in part.records]
            cursor = part.next_cursor
        assert paged == [r.id for r in page.records]
        usage = await admin.usage(sid)
        assert [u.user_id for u in usage.users] == ["alice"] and usage.output_tokens > 0
        quotas = await admin.set_quotas(sid, Quotas(user_tokens_per_day=10_000))
        assert quotas == Quotas(None, 10_000) == await admin.quotas(sid)

        document = await admin.add_document(
            sid, "Runbook", "Restart the pods.", Readers(("alice",))
        )
        assert document.readers.users == ("alice",) and document.text is None
        assert (await admin.get_document(sid, document.id)).text == "Restart the pods."
        assert [d.id for d in await admin.list_documents(sid)] == [document.id]
        await admin.delete_document(sid, document.id)

        tool = await admin.create_tool("deploy", "Deploy a build", "http://127.0.0.1:9/hook")
        assert tool.secret and tool.capability == "tool:deploy"
        assert [t.name for t in await admin.list_tools()] == ["deploy"]
        await admin.delete_tool("deploy")
        role = await admin.put_role("auditor", ["read_session", "read_audit"])
        assert role.capabilities == ("read_audit", "read_session") and not role.builtin

        assert await admin.set_fact(sid, "region", "eu") == {"region": "eu"}
        await admin.pin(sid, transcript[0].id)
        assert await admin.pins(sid) == (transcript[0].id,)
        preview = await admin.context(sid, "alice")
        assert preview["user_id"] == "alice"
        renamed = await admin.update_session(sid, title="Incident 43")
        assert renamed.title == "Incident 43"
        assert sid in [s.id for s in (await admin.list_sessions()).sessions]

        await admin.revoke_token(sid, token.jti)
        with pytest.raises(Unauthenticated):
            async with connect(sqlite_server.ws_url, sid, token.token):
                pass
        await admin.remove_member(sid, "bob")
        await admin.delete_session(sid)
        with pytest.raises(NotFound):
            await admin.get_session(sid)


async def test_a_private_side_thread_and_sharing_back(sqlite_server: RunningServer) -> None:
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor", "bob": "editor"})
        async with (
            await join(sqlite_server, admin, sid, "alice") as alice,
            await join(sqlite_server, admin, sid, "bob") as bob,
        ):
            opened = await bob.open_thread(title="check")
            thread_id = str(opened.data["thread_id"])
            asked = await bob.thread_prompt(thread_id, "is my reading right?")
            reply = await bob.thread_answer(thread_id)
            assert reply is not None and reply["id"] == asked.data["reply_id"]
            assert reply["kind"] == "reply" and reply["status"] == "done"
            assert bob.thread_text[reply["id"]] == reply["text"]
            with pytest.raises(NotFound):
                await alice.thread_prompt(thread_id, "peek")
            posted = await bob.thread_share(thread_id, turn_ids=[reply["id"]])
            await alice.wait_for(lambda s: s.entry(posted.message_id) is not None)
            shared = alice.entry(posted.message_id)
            assert shared is not None and (shared.author, shared.source) == (
                "bob",
                "private_thread",
            )
            assert alice.threads == {} and list(bob.threads) == [thread_id]
            await bob.close_thread(thread_id, delete=True)
            await bob.wait_for(lambda s: not s.threads)


async def test_a_member_who_left_while_the_socket_was_down_is_not_here(
    sqlite_server: RunningServer,
) -> None:
    async with relayed(sqlite_server) as (admin, relay):
        sid = await new_session(admin, {"alice": "editor", "bob": "editor", "carol": "viewer"})
        token = (await admin.create_token(sid, "alice")).token
        async with (
            connect(f"ws://127.0.0.1:{relay.port}", sid, token, reconnect=FAST) as alice,
            await join(sqlite_server, admin, sid, "carol") as carol,
        ):
            bob = await join(sqlite_server, admin, sid, "bob")
            async with bob:
                await alice.wait_for(lambda s: "bob" in s.here)
                relay.holding = True  # alice hears nothing from now on
            await carol.wait_for(lambda s: "bob" not in s.here)  # the server saw bob leave
            relay.cut()
            relay.holding = False
            await alice.wait_for(lambda s: s.connects == 2 and s.state is ConnectionState.CONNECTED)
            # The server's presence now (sent before the document) does not list bob.
            assert "bob" not in alice.here


async def test_a_member_whose_socket_dropped_is_seen_again_at_the_reconnect(
    sqlite_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review G6: the server tells a socket's peers that its client left one clock past its
    last state, and a client back under that clock that it left. The SDK came back at that
    very clock and let the notice be: everyone else ignored it until its renewal, 15 s on.
    It shows itself again past the clock, as Yjs clients do; its own ``here`` does not list
    it while the others cannot see it."""
    # No renewal falls due in this test: only the answer to the notice can show alice again.
    monkeypatch.setattr("parley_client.session.PRESENCE_RENEW_S", 3600.0)
    async with relayed(sqlite_server) as (admin, relay):
        sid = await new_session(admin, {"alice": "editor", "carol": "viewer"})
        token = (await admin.create_token(sid, "alice")).token
        async with (
            connect(f"ws://127.0.0.1:{relay.port}", sid, token, reconnect=FAST) as alice,
            await join(sqlite_server, admin, sid, "carol") as carol,
        ):
            await carol.wait_for(lambda s: "alice" in s.here)
            await alice.wait_for(lambda s: "alice" in s.here)
            relay.admitting.clear()  # she comes back once carol saw her leave
            relay.cut()
            await alice.wait_for(lambda s: s.state is ConnectionState.CONNECTING)
            assert "alice" not in alice.here  # the server told everyone she left
            await carol.wait_for(lambda s: "alice" not in s.here)
            relay.admitting.set()
            async with asyncio.timeout(5):  # the renewal would have come after 15 s
                await carol.wait_for(lambda s: "alice" in s.here)
                await alice.wait_for(lambda s: "alice" in s.here)
            assert alice.connects == 2
            # Her clocks: shown (1), back at the clock of her leaving (2), past it (3); no
            # renewal between.
            assert alice._clock == 3


def test_told_it_left_while_shown_a_client_shows_itself_again_past_that_clock() -> None:
    """Review G6, the notice alone (it also comes on an open socket: another node told it,
    say): answered with the state past the clock, unless the client is not shown or showed
    itself past it already; a state at the clock of a leaving is not taken as shown."""
    session = Session("ws://127.0.0.1:1", "s", "t", presence={"n": 1})
    me = session._client_id

    def told(clock: int, state: dict[str, Any] | None = None) -> bytes | None:
        return session._on_frame(encode_awareness([AwarenessState(me, clock, state)]))

    assert told(1, {"n": 1, "parley": {"user_id": "alice"}}) is None
    assert session.here == ["alice"]
    answer = told(2)
    assert session.here == []  # the others do not see her now
    assert answer is not None
    frame = decode_server_frame(answer)
    assert isinstance(frame, AwarenessFrame)
    assert frame.states == [AwarenessState(me, 3, {"n": 1})]
    assert told(2, {"n": 1, "parley": {"user_id": "alice"}}) is None  # at the leaving's clock
    assert session.here == []
    assert told(1) is None  # older than what she sent since
    asyncio.run(session.set_presence(None))  # not shown: nothing to show again
    assert told(4) is None


@pytest.fixture
async def limited_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Takes messages of 64 KiB at most (``PARLEY_MAX_WS_MESSAGE_BYTES``)."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "data", max_ws_message_bytes=64 * 1024
    )
    async with serve_in_process(settings) as running:
        yield running


async def test_a_command_too_big_for_the_socket_is_refused_not_resent_forever(
    limited_server: RunningServer,
) -> None:
    async with AdminClient(limited_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(limited_server, admin, sid, "alice", reconnect=FAST) as alice:
            with pytest.raises(TooLarge):  # the server closed the socket with 1009
                await alice.prompt("x" * 100_000)
            assert alice.unacknowledged == []
            ack = await alice.prompt("and a small one")  # the session goes on
            assert ack.seq == 1


async def test_a_command_over_the_servers_message_limit_is_refused_before_it_is_written(
    sqlite_server: RunningServer,
) -> None:
    """Review G7: only a close with 1009 told an SDK that a command was too large, and the
    server may close before the frame is all written (a reset: 1006), after which the
    command was written again to each next socket. A command over the server's default
    limit raises ``TooLarge`` at the call, and is never written: the socket stays open."""
    limit = 4 * 1024 * 1024  # PARLEY_MAX_WS_MESSAGE_BYTES's default
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(sqlite_server, admin, sid, "alice") as alice:
            with pytest.raises(TooLarge) as refused:
                await alice.prompt("x" * limit, id="big")
            assert refused.value.command_id == "big"
            assert (await alice.prompt("and a small one")).seq == 1
            assert (alice.connects, alice.unacknowledged) == (1, [])


async def test_a_command_over_a_lower_limit_given_to_the_sdk_is_refused_at_the_call(
    limited_server: RunningServer,
) -> None:
    """Review G7, against a server with its own limit (``max_message_bytes``)."""
    async with AdminClient(limited_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"bob": "editor"})
        async with await join(limited_server, admin, sid, "bob", max_message_bytes=65536) as bob:
            with pytest.raises(TooLarge):
                await bob.message("x" * 65536)  # its frame is larger
            assert (await bob.message("x" * 30_000)).seq == 1  # under the limit: taken
            assert (bob.connects, bob.unacknowledged) == (1, [])


async def test_an_upgrade_past_the_socket_opens_budget_raises_rate_limited(
    tmp_path: Path,
) -> None:
    """Review RK-4: refused at the upgrade (429, ``Retry-After`` past ``connect_timeout_s``),
    ``connect()`` waited out its 10 s and raised a bare ``TimeoutError('')``. It raises
    the server's error at once: ``RateLimited``, with its status and ``retry_after``."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "data", socket_opens_per_minute=0.01, socket_opens_burst=2
    )
    async with (
        serve_in_process(settings) as server,
        asyncio.timeout(60),
        AdminClient(server.base_url, ADMIN_KEY) as admin,
    ):
        sid = await new_session(admin, {"alice": "editor"})
        token = (await admin.create_token(sid, "alice")).token
        for _ in range(2):
            async with connect(server.ws_url, sid, token):
                pass
        with pytest.raises(RateLimited) as refused:
            async with connect(server.ws_url, sid, token, connect_timeout_s=30):
                pass
    assert refused.value.code == "rate_limited" and refused.value.status == 429
    assert refused.value.retry_after is not None and refused.value.retry_after > 30
    assert "slow down" in refused.value.message  # the server's own words


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "kind"),
    [
        ("429 Too Many Requests", "20", "rate_limited", RateLimited),
        ("503 Service Unavailable", "30", "unavailable", Unavailable),
        ("401 Unauthorized", None, "unauthenticated", Unauthenticated),
        ("403 Forbidden", None, "forbidden", Forbidden),
        ("404 Not Found", None, "not_found", NotFound),
    ],
)
async def test_an_upgrade_refused_raises_its_typed_error_from_connect(
    status: str, retry_after: str | None, code: str, kind: type[ParleyError]
) -> None:
    """Review RK-4: any refused upgrade raises the error of its status and JSON body (the
    REST API's), as its close code would: a retryable one (429, 503) whose ``Retry-After``
    falls past ``connect_timeout_s`` at once, a final one (401, 403, 404) at once."""
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    async with refusing(status, headers, error_body(code, f"refused: {code}")) as refuser:
        with pytest.raises(kind) as refused:
            async with asyncio.timeout(30), connect(refuser.url, "s", "t", connect_timeout_s=10):
                pass
    assert refuser.requests == 1  # not retried: past the time left, or final
    assert refused.value.code == code and refused.value.message == f"refused: {code}"
    assert refused.value.status == int(status.split()[0])
    expected = None if retry_after is None else float(retry_after)
    assert refused.value.retry_after == expected


async def test_an_upgrade_refused_until_the_time_runs_out_raises_the_refusal() -> None:
    """Review RK-4: refused again and again, each ``Retry-After`` within the time left,
    ``connect()`` retried until ``connect_timeout_s`` and raised a bare ``TimeoutError``:
    it retries, with back-off, and raises the last refusal once the time is out."""
    headers = {"Retry-After": "0"}
    async with refusing("503 Service Unavailable", headers, "upstream down") as refuser:
        with pytest.raises(Unavailable) as refused:
            async with asyncio.timeout(30), connect(refuser.url, "s", "t", connect_timeout_s=2):
                pass
    assert refused.value.message == "upstream down"  # not JSON: the body as text
    assert refuser.requests > 1


async def test_a_presence_over_the_message_limit_is_refused_before_it_is_sent(
    limited_server: RunningServer,
) -> None:
    """Review RK-5: a state over the server's limit went out, and the server closed every
    socket it was sent to with 1009. It raises ``TooLarge`` at the call, nothing sent, and
    the state shown is kept."""
    async with AdminClient(limited_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor", "carol": "viewer"})
        async with (
            await join(limited_server, admin, sid, "alice", max_message_bytes=65536) as alice,
            await join(limited_server, admin, sid, "carol") as carol,
        ):
            await alice.set_presence({"note": "small"})
            await carol.wait_for(lambda s: any(p.state.get("note") == "small" for p in s.peers))
            with pytest.raises(TooLarge):
                await alice.set_presence({"note": "x" * 100_000})
            await alice.set_typing(True)  # on the state kept
            await carol.wait_for(lambda s: s.typing == ["alice"])
            assert [p.state.get("note") for p in carol.peers if p.user_id == "alice"] == ["small"]
            assert (await alice.prompt("still here")).seq == 1
            assert alice.connects == 1
        with pytest.raises(TooLarge):
            connect(limited_server.ws_url, sid, "t", presence={"n": "x" * 10}, max_message_bytes=20)


async def test_a_presence_closed_1009_fails_no_small_command_and_is_not_resent(
    limited_server: RunningServer,
) -> None:
    """Review RK-5: a state over a server's lower limit (the SDK not told it) closed the
    socket 1009; the SDK refused the largest *command* written to it (three 65-byte
    prompts, one per close, never stored) and sent the state again at every reconnect, so
    the session stayed ``connecting``. The state is blamed, not resent; the prompts are
    stored once each."""
    async with AdminClient(limited_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(limited_server, admin, sid, "alice", reconnect=FAST) as alice:
            prompts = [asyncio.create_task(alice.prompt(f"small prompt {n}")) for n in range(3)]
            await asyncio.sleep(0)  # the prompts are written first
            await alice.set_presence({"note": "x" * 100_000})
            acks = await asyncio.gather(*prompts)
            assert sorted(ack.seq for ack in acks) == [1, 2, 3]
            await alice.wait_for(lambda s: s.presence_refused is not None)
            assert isinstance(alice.presence_refused, TooLarge)
            await alice.wait_for(lambda s: s.state is ConnectionState.CONNECTED)
            assert (await alice.message("and on")).seq == 4
            assert alice.close_code == 1009
            await alice.wait_for(lambda s: "alice" in s.here)  # shown, with an empty state
            await alice.set_presence({"note": "small"})  # a new state clears the refusal
            assert alice.presence_refused is None


def test_a_1009_is_pinned_on_the_largest_frame_written_command_or_presence() -> None:
    """Review RK-5, the blame rule alone: a command is refused only when it was larger than
    the presence state written to the socket that closed; else the state is."""
    session = Session("ws://127.0.0.1:1", "s", "t", presence={"n": "x" * 1000})
    session.connects = 1

    async def blamed(command_bytes: int) -> tuple[list[str], TooLarge | None]:
        session._presence, session.presence_refused = {"n": "x" * 1000}, None
        session._presence_frame()  # written to socket 1
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        payload = {"type": "prompt", "id": "p", "text": "x" * command_bytes}
        session._pending = {"p": _Pending(payload, reply, written_on=1)}
        session._refuse_largest(1)
        return list(session._pending), session.presence_refused

    async def main() -> None:
        assert (await blamed(10))[0] == ["p"]  # a small command: the state is refused
        assert session._presence == {}
        pending, refused = await blamed(5000)  # a command larger than the state
        assert pending == [] and refused is None
        assert session._presence == {"n": "x" * 1000}

    asyncio.run(main())


def test_a_side_thread_reply_delta_is_placed_by_its_offset() -> None:
    """Review (SDKs): after a reconnect mid-reply, ``thread_text`` ran the deltas after the
    gap onto the text before it. Each delta is placed at its offset: the greeting's text so
    far replaces what the client held, a delta seen twice changes nothing, and one after a
    gap waits for the stored reply."""
    assert _placed("one ", "one two ", 0) == "one two "  # a greeting's text so far
    assert _placed("one two ", "two ", 4) == "one two "  # seen before
    assert _placed("one two ", "three", 8) == "one two three"
    assert _placed("one ", "four", 14) == "one "  # after a gap: not run on
    assert _placed("one ", "two", None) == "one two"  # an older server sends no offset


def test_thread_text_follows_the_stored_turns_of_each_thread_frame() -> None:
    """Review rv37 F1: a side-thread reply cut by a crash is dropped from the thread (its
    prompt failed ``server_restart``), but ``thread_text`` kept what had streamed of it.
    A ``thread`` frame now decides: a reply the thread no longer holds is dropped, one
    stored with other text is replaced, and the reply streaming now (the thread runs) is
    kept; a deleted thread's replies go too."""
    session = Session("ws://127.0.0.1:1", "s", "t")

    def thread(running: bool, *replies: tuple[str, str]) -> dict[str, Any]:
        turns = [{"id": "p", "kind": "prompt", "text": "q", "status": "failed"}]
        turns += [{"id": r, "kind": "reply", "text": text} for r, text in replies]
        return {"type": "thread", "thread": {"id": "t", "running": running, "turns": turns}}

    def delta(reply_id: str, offset: int, text: str, thread_id: str = "t") -> dict[str, Any]:
        ids = {"thread_id": thread_id, "reply_id": reply_id}
        return {"type": "thread_delta", **ids, "offset": offset, "text": text}

    session._on_reply(delta("r1", 0, "cut "))
    session._on_reply(delta("other", 0, "another thread's", "u"))
    session._on_reply(thread(True))  # sent mid-reply (its prompt stored): r1 streams on
    assert session.thread_text == {"r1": "cut ", "other": "another thread's"}
    session._on_reply(delta("r1", 4, "off"))
    session._on_reply(thread(False))  # after the restart: the thread holds no reply
    assert session.thread_text == {"other": "another thread's"}

    session._on_reply(delta("r2", 0, "kept "))
    session._on_reply(thread(False, ("r2", "kept as stored")))
    assert session.thread_text == {"r2": "kept as stored", "other": "another thread's"}
    session._on_reply(delta("r3", 0, "late"))
    session._on_reply(thread(False, ("r2", "kept as stored")))  # r3 not stored, not running
    assert "r3" not in session.thread_text
    session._on_reply({"type": "thread_deleted", "thread_id": "t"})
    assert session.thread_text == {"other": "another thread's"}


async def test_a_command_resent_by_its_id_while_it_waits_shares_its_reply(
    sqlite_server: RunningServer,
) -> None:
    """Review (SDKs): a second call under the id of a command still waiting took its place,
    and the first waited for good. Both get the one reply; another command under the id
    is refused at once. Text goes as UTF-8, not escaped: an emoji spends 4 bytes of the
    command budget, not 12."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(sqlite_server, admin, sid, "alice") as alice:
            first = asyncio.ensure_future(alice.message("twice", id="m1"))
            second = asyncio.ensure_future(alice.message("twice", id="m1"))
            await asyncio.sleep(0)  # both sent, or waiting
            with pytest.raises(Conflict):
                await alice.message("another text", id="m1")
            assert await first == await second
            assert [e.content for e in alice.transcript] == ["twice"]
    assert len(encode_command({"type": "message", "id": "m", "text": "🙂" * 10})) < 80


async def test_a_text_that_is_not_unicode_is_refused_at_the_call(
    sqlite_server: RunningServer,
) -> None:
    """Review of the change: a lone surrogate could not be encoded once texts went as UTF-8;
    queued while offline, it failed every command waiting. It is refused at the call."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(sqlite_server, admin, sid, "alice") as alice:
            with pytest.raises(InvalidInput):
                await alice.message("half \ud800 a pair")
            assert (await alice.message("whole")).data["type"] == "ack"


async def test_a_number_that_is_not_json_is_refused_before_anything_is_sent(
    sqlite_server: RunningServer,
) -> None:
    """Review G3: ``set_presence`` with a NaN or an infinity sent ``NaN`` / ``Infinity``
    (``json.dumps`` writes them by default), which the server refuses as not JSON with
    4400, final: every later command failed ``SessionClosed``. Presence, commands and the
    admin client's bodies are refused ``InvalidInput`` at the call; the session goes on."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor", "bob": "editor"})
        token = (await admin.create_token(sid, "alice")).token
        with pytest.raises(InvalidInput):
            connect(sqlite_server.ws_url, sid, token, presence={"cursor": math.nan})
        async with (
            await join(sqlite_server, admin, sid, "alice") as alice,
            await join(sqlite_server, admin, sid, "bob") as bob,
        ):
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(InvalidInput):
                    await alice.set_presence({"cursor": {"x": bad}})
                with pytest.raises(InvalidInput):
                    await alice.command("message", text="hi", score=bad)
            with pytest.raises(InvalidInput):
                await admin.request("PUT", f"/api/v1/sessions/{sid}/facts/k", json={"v": math.nan})
            cursor = {"x": 1.5}
            await alice.set_presence({"cursor": cursor})
            cursor["x"] = math.nan  # changed after it was set: not what is shown or renewed
            await alice.set_typing(True)
            await bob.wait_for(
                lambda s: any(p.state.get("cursor") == {"x": 1.5} and p.typing for p in s.peers)
            )
            assert (await alice.message("still here")).data["type"] == "ack"
            assert alice.state is ConnectionState.CONNECTED and alice.closed_by is None


async def test_an_id_the_server_would_refuse_is_refused_at_the_call(
    sqlite_server: RunningServer,
) -> None:
    """Review: ``id=""`` was replaced by an id of the SDK's own, so a resend under it stored
    the message twice; ``id=5`` waited for good, the server's ``invalid`` (its id null)
    matching no call."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        async with await join(sqlite_server, admin, sid, "alice") as alice:
            # Blank as the server takes it (``str.strip()``; review G4: JavaScript's
            # ``trim()`` differs on U+FEFF, U+001C-U+001F and U+0085).
            for bad in ("", "   ", "\x1c", "\x85\u3000", 5, "x" * 129):
                with pytest.raises(InvalidInput):
                    await alice.message("same text", id=bad)  # type: ignore[arg-type]
            assert alice.unacknowledged == []
            assert (await alice.message("a BOM", id="\ufeff")).data["id"] == "\ufeff"
            first = await alice.message("same text", id="x" * 128)
            again = await alice.message("same text", id="x" * 128)
            assert first.message_id == again.message_id
        transcript = await admin.transcript(sid)
        assert [e.content for e in transcript].count("same text") == 1


async def test_dot_segments_name_nothing_and_reach_no_other_route(
    sqlite_server: RunningServer,
) -> None:
    """Review (cluster): a fact named ".." (taken over the socket) made ``delete_fact``
    send ``DELETE /sessions/{id}/facts/..``, which the client resolved to ``DELETE
    /sessions/{id}``: the session was deleted. The server takes no fact or member of that
    name, and the SDK escapes dots in every path segment."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "owner"})
        async with await join(sqlite_server, admin, sid, "alice") as alice:
            for key in (".", ".."):
                with pytest.raises(InvalidInput):
                    await alice.set_fact(key, "x")
                with pytest.raises(InvalidInput):
                    await admin.set_fact(sid, key, "x")
                with pytest.raises(InvalidInput):
                    await admin.put_member(sid, key, "editor")
                with pytest.raises(InvalidInput):
                    await admin.delete_fact(sid, key)  # no such fact: nothing else either
        assert (await admin.get_session(sid)).id == sid


async def test_an_id_holding_a_slash_names_nothing_and_reaches_no_other_route(
    sqlite_server: RunningServer,
) -> None:
    """Review I4: the SDK sends ``delete_session("<sid>/members/bob")`` as
    ``DELETE /sessions/<sid>%2Fmembers%2Fbob``; the server decoded the ``%2F`` before routing
    and removed bob. No session has that id: ``NotFound``, and nothing else changes."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"bob": "editor"})
        await admin.set_fact(sid, "k", "v")
        for bogus in (f"{sid}/members/bob", f"{sid}/facts/k"):
            with pytest.raises(NotFound):
                await admin.delete_session(bogus)
        with pytest.raises(NotFound):
            await admin.transcript(f"{sid}/members")
        assert [m.user_id for m in await admin.list_members(sid)] == ["bob"]
        assert await admin.facts(sid) == {"k": "v"}


async def test_a_member_id_reserved_or_looking_like_anothers_is_a_typed_refusal(
    sqlite_server: RunningServer,
) -> None:
    """Review RN-1 and RN-3 over the SDK's admin API: ``server`` reads as the server's own
    speaker (``ReservedName``); ``aIice`` looks like ``alice`` (``Conflict``)."""
    async with AdminClient(sqlite_server.base_url, ADMIN_KEY) as admin, asyncio.timeout(60):
        sid = await new_session(admin, {"alice": "editor"})
        for reserved in ("server", "Moderator", "ADMIN"):
            with pytest.raises(ReservedName):
                await admin.put_member(sid, reserved, "editor")
        with pytest.raises(Conflict, match="looks like 'alice'"):
            await admin.put_member(sid, "aIice", "editor")
        assert [m.user_id for m in await admin.list_members(sid)] == ["alice"]


async def test_list_sessions_takes_a_cursor_or_an_offset_not_both() -> None:
    """Review: given both, the SDK dropped the offset silently (the server refuses the
    pair); it says so before any request."""
    async with AdminClient("http://127.0.0.1:9", ADMIN_KEY) as admin:
        with pytest.raises(ValueError, match="cursor or an offset"):
            await admin.list_sessions(offset=2, cursor="abc")


async def test_connect_past_the_connection_cap_comes_in_once_there_is_room(
    tmp_path: Path,
) -> None:
    """Review RK-2: a socket past ``PARLEY_MAX_CONNECTIONS_PER_USER`` was closed 4429, final
    to the SDK (``connect`` raised ``RateLimited`` for good). It is refused at the upgrade
    (429, ``Retry-After``), which the SDK retries: it is in once another socket closed."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_connections_per_user=1)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        held = await server.connect(sid, "alice")
        session = connect(
            server.ws_url, sid, await server.token(sid, "alice"), connect_timeout_s=60
        )
        opening = asyncio.create_task(session.open())
        try:
            await _refused_at_least_once(server)
            await held.close()
            await asyncio.wait_for(opening, 60)
            assert session.state is ConnectionState.CONNECTED
        finally:
            await session.close()


async def _refused_at_least_once(server: RunningServer) -> None:
    """Until the server has refused a socket ``rate_limited``; fails after 30 s."""
    for _ in range(600):
        if 'parley_errors_total{code="rate_limited"}' in (await server.http.get("/metrics")).text:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the server refused no socket")


@contextlib.asynccontextmanager
async def answering(
    first_ack_seq: object, awareness: bytes | None = None, close: tuple[int, str] | None = None
) -> AsyncIterator[Any]:
    """A server of Parley's protocol that syncs an empty document and acks each command:
    on the first socket with ``seq`` ``first_ack_seq`` (after ``awareness``, if given), or
    closes it at its first command with ``close`` (code, reason) when given; on the next
    ones with seq 7. ``sockets`` counts the sockets it took."""
    from websockets.asyncio.server import ServerConnection, serve

    state = {"sockets": 0}

    async def handler(ws: ServerConnection) -> None:
        state["sockets"] += 1
        first = state["sockets"] == 1
        await ws.send(encode_sync(STEP2, b"\x00\x00"))
        if first and awareness is not None:
            await ws.send(awareness)
        async for frame in ws:
            message = decode_server_frame(frame) if isinstance(frame, bytes) else None
            if isinstance(message, CommandReply):  # a command: the same frame as a reply
                if first and close is not None:
                    await ws.close(*close)
                    return
                seq = first_ack_seq if first else 7
                await ws.send(
                    f'{{"type": "ack", "id": {json.dumps(message.data["id"])}, "seq": {seq}}}'
                )

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        state["url"] = f"ws://127.0.0.1:{port}"
        yield state


CUT_OFF = json.dumps({"code": "rate_limited", "retry_after_ms": 50, "message": "too many"})


async def test_a_socket_cut_off_with_a_wait_is_opened_again_after_it() -> None:
    """FX69: a 4429 (limits ignored again and again) was final, whatever it said; one whose
    reason says when to come back (``retry_after_ms``, as a 1013's does) is waited out and
    the session connects again: the command it cut off is resent and answered."""
    async with (
        answering(7, close=(4429, CUT_OFF)) as server,
        asyncio.timeout(30),
        connect(server["url"], "s", "t", reconnect=FAST) as alice,
    ):
        ack = await alice.prompt("did this arrive?")
        assert ack.seq == 7 and alice.close_code == 4429 and not alice.closed
        assert server["sockets"] == 2 and alice.connects == 2


@pytest.mark.parametrize(
    ("code", "reason", "wait"),
    [
        (4429, CUT_OFF, 0.05),
        (1013, CUT_OFF.replace("rate_limited", "unavailable"), 0.05),
        (1013, "slow consumer", 0.0),
        (1001, CUT_OFF, 0.0),
    ],
)
def test_a_close_that_says_when_is_waited_out(code: int, reason: str, wait: float) -> None:
    """The least wait before the next socket, as a close's reason says it (a 1013 or a 4429
    with JSON ``retry_after_ms``); the session goes on."""
    session = Session("ws://127.0.0.1:1", "s", "t")
    assert session._after_close(code, reason) == wait and not session.closed


@pytest.mark.parametrize("reason", ["too many commands", "{", '{"retry_after_ms": -1}', ""])
def test_a_cut_off_that_says_no_wait_is_final(reason: str) -> None:
    """A 4429 whose reason tells no wait (a server before FX69) ends the session, as
    before: ``RateLimited``."""
    session = Session("ws://127.0.0.1:1", "s", "t")
    assert session._after_close(4429, reason) == 0.0 and session.closed
    assert session.closed_by is not None and isinstance(session.closed_by.cause, RateLimited)


def test_a_cut_off_is_final_to_a_session_that_does_not_reconnect() -> None:
    """``reconnect=None``: no next socket to wait for, so a 4429 ends it as before, typed."""
    session = Session("ws://127.0.0.1:1", "s", "t", reconnect=None)
    assert session._after_close(4429, CUT_OFF) == 0.0 and session.closed
    assert session.closed_by is not None and isinstance(session.closed_by.cause, RateLimited)


# FX44: a numeric string ("7") and an integer past 2**53 were taken here and refused by
# the TypeScript SDK (``seqOf``): a ``seq`` is a JSON integer that is a safe integer in both.
UNREADABLE_SEQS = ['"x"', "1e400", '{"n": 1}', "true", '"7"', "1.5", "9007199254740992"]


@pytest.mark.parametrize("seq", UNREADABLE_SEQS)
async def test_an_ack_that_cannot_be_read_leaves_its_command_to_be_resent(seq: str) -> None:
    """Review SA F1: the command was taken off the list before its ack's ``seq`` was
    read, so an ack of ``seq`` "x" or 1e400 left ``prompt()`` waiting for good, even after
    the session closed. The frame is now undecodable, the socket is started over and the
    command resent by its id: the next ack answers it."""
    async with (
        answering(seq) as server,
        asyncio.timeout(30),
        connect(server["url"], "s", "t", reconnect=FAST) as alice,
    ):
        ack = await alice.prompt("did this arrive?")
        assert ack.seq == 7
        assert server["sockets"] == 2 and alice.connects == 2


@pytest.mark.parametrize(
    ("seq", "read"),
    [("7", 7), ("7.0", 7), ("1e2", 100), ("null", None), ("-9007199254740991", -(2**53) + 1)]
    + [(bad, ValueError) for bad in UNREADABLE_SEQS],
)
def test_an_acks_seq_is_read_as_the_typescript_sdk_reads_it(seq: str, read: object) -> None:
    """As ``seqOf`` in clients/js: a JSON number that is a safe integer (JavaScript cannot
    tell ``7.0`` from ``7``), or none; anything else cannot be read."""
    ack = json.loads(f'{{"type": "ack", "id": "a", "seq": {seq}}}')
    if read is ValueError:
        with pytest.raises(ValueError, match="no whole number"):
            _seq_of(ack)
    else:
        assert _seq_of(ack) == read and type(_seq_of(ack)) is type(read)


def test_an_acks_ids_are_none_where_its_command_names_none() -> None:
    """Review RN: ``message_id`` of a prompt's ack (and ``prompt_id`` of a message's) raised
    ``KeyError``; docs/sdks.md lists both as the ack's fields."""
    prompted = Ack("c1", 4, {"type": "ack", "id": "c1", "seq": 4, "prompt_id": "p1"})
    posted = Ack("c2", 5, {"type": "ack", "id": "c2", "seq": 5, "message_id": "m1"})
    pinned = Ack("c3", None, {"type": "ack", "id": "c3"})
    assert (prompted.prompt_id, prompted.message_id) == ("p1", None)
    assert (posted.prompt_id, posted.message_id) == (None, "m1")
    assert (pinned.prompt_id, pinned.message_id) == (None, None)


def test_a_snapshots_meta_gives_the_schema_version_as_the_server_wrote_it() -> None:
    """Review RN: ``meta.schema_version`` read back as ``1.0`` (Yjs keeps every number as
    a double); the server writes a whole number."""
    written = SessionDocument(Doc())
    written.init_meta("s1", "Incident 42", "queue")
    doc: Doc[Any] = Doc()
    doc.apply_update(written.doc.get_update())
    meta = Snapshot.of(doc).meta
    assert meta == {
        "session_id": "s1",
        "title": "Incident 42",
        "policy": "queue",
        "schema_version": SCHEMA_VERSION,
    }
    assert type(meta["schema_version"]) is int


async def test_an_awareness_frame_nested_past_the_limit_starts_the_socket_over() -> None:
    """Review SA F2: ``json.loads`` raised ``RecursionError`` on a state nested 100,000
    deep, which no guard took: the session ended for good (``InternalError``). It is an
    undecodable frame like any other: the socket is started over, the session goes on."""
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    update = varuint(1) + varuint(5) + varuint(1) + varbytes(deep)
    frame = bytes([AWARENESS]) + varbytes(update)
    async with (
        answering(3, awareness=frame) as server,
        asyncio.timeout(30),
        connect(server["url"], "s", "t", reconnect=FAST) as alice,
    ):
        ack = await alice.prompt("still here?")
        assert ack.seq in (3, 7)
        assert alice.closed_by is None


async def test_a_close_the_server_never_finishes_is_given_up_and_the_command_resent() -> None:
    """FX54: a socket closed 1002 for a frame the SDK cannot read waited for the server's
    close frame as long as websockets waits by default (``close_timeout``, 10 s) before the
    SDK connected again. It waits as long as the TypeScript SDK does, 3 s at most, then
    drops the socket: the command is resent on the next one."""
    server = Unclosing()
    listening = await asyncio.start_server(server.handler, "127.0.0.1", 0)
    async with listening:
        server.url = f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        async with asyncio.timeout(30), connect(server.url, "s", "t", reconnect=FAST) as ann:
            ack = await ann.prompt("did this arrive?")
            socket = ann._socket
            assert socket is not None and socket.close_timeout is not None
            assert socket.close_timeout <= 3
    assert ack.seq == 7 and server.sockets == 2 and ann.connects == 2


def _answering(status: int, body: bytes, **headers: str) -> httpx.MockTransport:
    """A transport answering every request ``status`` and ``body``: a proxy or another
    service in front of the server."""
    return httpx.MockTransport(
        lambda request: httpx.Response(status, content=body, headers=headers)
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b'{"unexpected": 1}',
        b"[1, 2]",
        b'"text"',
        b'{"sessions": [{"id": 1}]}',
    ],
)
async def test_admin_client_unreadable_success_is_typed(body: bytes) -> None:
    """Review RC-4: a 200 whose body is not JSON, or JSON of another shape, raised
    JSONDecodeError, TypeError or KeyError, which ``except ParleyError`` missed."""
    async with AdminClient("http://parley", "k", transport=_answering(200, body)) as admin:
        for call in (
            lambda: admin.get_session("s"),
            lambda: admin.list_sessions(),
            lambda: admin.list_members("s"),
            lambda: admin.facts("s"),
            lambda: admin.usage("s"),
            lambda: admin.audit("s"),
        ):
            with pytest.raises(UnexpectedAnswer) as raised:
                await call()
            assert raised.value.code == "unexpected_answer"


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (502, Unavailable, "unavailable"),
        (504, Unavailable, "unavailable"),
        (500, InternalError, "internal"),
    ],
)
async def test_admin_client_gateway_page_is_not_provider_error(
    status: int, kind: type[ParleyError], code: str
) -> None:
    """Review RC-4: a reverse proxy's 502 HTML page read as ``provider_error`` (the model's
    API failed); an answer without Parley's error body is read by its status alone."""
    transport = _answering(status, b"<html>Bad Gateway</html>", **{"Content-Type": "text/html"})
    async with AdminClient("http://parley", "k", transport=transport) as admin:
        with pytest.raises(kind) as raised:
            await admin.get_session("s")
    assert raised.value.code == code and raised.value.status == status
    body = json.dumps({"error": {"code": "provider_error", "message": "model down"}}).encode()
    async with AdminClient("http://parley", "k", transport=_answering(502, body)) as admin:
        with pytest.raises(ProviderError):  # the server's own 502 still says what failed
            await admin.get_session("s")


def test_retry_after_as_an_http_date() -> None:
    """Review RC-4: an HTTP-date ``Retry-After`` (RFC 9110) was read as None."""
    now = 1_445_412_470.0  # 10 s before Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0
    assert retry_after_seconds(" 3 ") == 3.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    error = error_of_response(429, b"", retry_after="Thu, 01 Jan 2099 00:00:00 GMT")
    assert isinstance(error, RateLimited) and (error.retry_after or 0) > 0
