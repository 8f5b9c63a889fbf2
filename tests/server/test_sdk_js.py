"""The TypeScript SDK (``clients/js``, ``@parley/client``) against a live server.

Its ``npm pack`` tarball is installed, with ``yjs``, ``y-websocket`` and ``ws`` alone, into
an empty folder (once per module), and Node scripts there use it as an application would:
the docs' example (``clients/js/examples/example.mjs``), and ``tests/js/sdk_driver.mjs``,
which speaks ``stock_client.mjs``'s line protocol so these tests drive it from asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from parley_client.wire import (
    AWARENESS,
    COMMAND,
    STEP2,
    UPDATE,
    CommandReply,
    decode_server_frame,
    encode_sync,
    varbytes,
    varuint,
)
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from tests.conftest import (
    ADMIN_KEY,
    RunningServer,
    ServerProcess,
    free_port,
    make_settings,
    serve_in_process,
    sqlite_url,
)
from tests.refusing_server import error_body, refusing
from tests.stock_client import JS_DIR, REPO_ROOT, Event, StockYjsClient
from tests.yclient import YClient

# One worker builds the module's packed SDK once for all its tests (``--dist loadgroup``).
pytestmark = [pytest.mark.node, pytest.mark.xdist_group("sdk-js")]

SDK_DIR = REPO_ROOT / "clients" / "js"
PEERS = ("yjs", "y-websocket", "ws")


def _npm(*args: str, cwd: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the SDK tests need Node.js 20 or newer (node and npm on PATH)")
    done = subprocess.run(
        [npm, *args, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} in {cwd} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def sdk_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder with only the packed SDK and its peers (the versions ``tests/js`` pins)
    installed, plus the scripts that use it. npm takes the packages from its cache when it
    holds them (``.ci/run`` installed them) and from the registry otherwise."""
    if not (SDK_DIR / "node_modules" / "typescript").is_dir():
        _npm("ci", "--prefer-offline", cwd=SDK_DIR)
    app = tmp_path_factory.mktemp("sdk-app")
    tarball = _npm("pack", "--pack-destination", str(app), cwd=SDK_DIR).strip().splitlines()[-1]
    (app / "package.json").write_text('{"name": "sdk-app", "private": true, "type": "module"}')
    pinned = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    _npm(
        "install",
        "--prefer-offline",
        str(app / tarball),
        *(f"{name}@{pinned[name]}" for name in PEERS),
        cwd=app,
    )
    shutil.copy(SDK_DIR / "examples" / "example.mjs", app)
    shutil.copy(JS_DIR / "sdk_driver.mjs", app)
    (app / "readme.mjs").write_text(readme_example())
    return app


def readme_example() -> str:
    """The JavaScript example of the docs' "TypeScript SDK" section (docs/sdks.md)."""
    section = (REPO_ROOT / "docs" / "sdks.md").read_text().split("## TypeScript SDK", 1)[1]
    return section.split("```js\n", 1)[1].split("```", 1)[0]


class SdkClient(StockYjsClient):
    """One ``node sdk_driver.mjs`` process: a ``ParleySession`` of the installed SDK."""

    @classmethod
    async def launch(
        cls, app: Path, url: str, sid: str, token: str, name: str, *extra: str
    ) -> Self:
        """``extra``: more of the driver's options (``--max-message-bytes N``)."""
        proc = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            "sdk_driver.mjs",
            *("--url", url, "--session", sid, "--token", token, "--name", name, *extra),
            cwd=app,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, name)

    async def call(self, tag: str, method: str, *args: object, drop: bool = False) -> None:
        """Call ``session[method](*args)``; its outcome comes later (``settled``). ``drop``:
        the socket is dropped as soon as the command is written."""
        await self.command(
            {"cmd": "call", "tag": tag, "method": method, "args": list(args), "drop": drop}
        )

    async def settled(self, tag: str, timeout: float = 30) -> Event:
        return await self.wait_event(
            lambda e: e.get("event") == "settled" and e["tag"] == tag, timeout
        )

    async def ack(self, tag: str, method: str, *args: object, drop: bool = False) -> dict[str, Any]:
        await self.call(tag, method, *args, drop=drop)
        outcome = await self.settled(tag)
        assert "ack" in outcome, outcome
        ack: dict[str, Any] = outcome["ack"]
        return ack

    async def refusal(self, tag: str, method: str, *args: object) -> dict[str, Any]:
        await self.call(tag, method, *args)
        outcome = await self.settled(tag)
        assert "error" in outcome, outcome
        error: dict[str, Any] = outcome["error"]
        assert error["is_parley_error"] and error["name"] == "ParleyError", error
        return error

    async def synced(self) -> None:
        await self.wait_event(lambda e: e.get("event") == "synced" and e["synced"], 30)

    async def disconnected(self) -> None:
        await self.wait_event(
            lambda e: e.get("event") == "state" and e["state"] == "disconnected", 30
        )

    async def wait_dump(self, predicate: Callable[[Event], bool], timeout_s: float = 30) -> Event:
        for _ in range(int(timeout_s / 0.05)):
            dump = await self.dump()
            if predicate(dump):
                return dump
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: not reached; last dump {json.dumps(dump)[:3000]}")


async def join(app: Path, server: RunningServer, sid: str, user: str) -> SdkClient:
    """``user``'s SDK session, with a fresh token."""
    return await SdkClient.launch(app, server.ws_url, sid, await server.token(sid, user), user)


def prompts_ended(count: int) -> Callable[[Event], bool]:
    ended = {"done", "failed", "cancelled", "interrupted"}
    return lambda dump: (
        [e["status"] in ended for e in dump["transcript"] if e["kind"] == "prompt"]
        == [True] * count
    )


def replies_done(count: int) -> Callable[[Event], bool]:
    return lambda dump: (
        sum(e["kind"] == "reply" and e["status"] == "done" for e in dump["transcript"]) == count
    )


# -- the packed SDK, installed alone, runs the docs' example -----------------------------------


async def test_the_packed_sdk_joins_prompts_streams_and_cancels(
    sdk_app: Path, tmp_path: Path
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=30)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        example = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            "example.mjs",
            server.ws_url,
            sid,
            await server.token(sid, "alice"),
            cwd=sdk_app,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await example.communicate()
        assert example.returncode == 0, err.decode()
        steps = {line["step"]: line for line in map(json.loads, out.decode().splitlines())}
        stored = await server.transcript(sid)

        # The docs' example (docs/sdks.md), as written there.
        ada = await server.new_session({"ada": "editor"})
        readme = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            "readme.mjs",
            cwd=sdk_app,
            env={
                **os.environ,
                "PARLEY_URL": server.ws_url,
                "SID": ada,
                "TOKEN": await server.token(ada, "ada"),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            printed, err = await readme.communicate()
        assert readme.returncode == 0, err.decode()
        assert "true not_found" in printed.decode().splitlines()
        assert [e["content"] for e in await server.transcript(ada)][:1] == [
            "What changed in the last deploy?"
        ]

    assert steps["synced"]["state"] == "connected"
    # The second prompt waited behind the first, at position 1, until it was cancelled.
    assert steps["queued"]["position"] == 1
    reply = steps["reply"]
    assert reply["status"] == "done" and reply["content"].startswith("Hello alice.")
    assert reply["lengths_seen"] > 5  # the reply streamed in, it did not arrive whole
    assert steps["refused"] == {"step": "refused", "is_parley_error": True, "code": "not_found"}
    seen = steps["summary"]["transcript"]
    assert [(e["kind"], e["status"], e["reason_code"]) for e in seen] == [
        ("prompt", "done", None),
        ("reply", "done", None),
        ("prompt", "cancelled", "cancelled"),
    ]
    assert [e["id"] for e in seen] == [e["id"] for e in stored]
    assert seen[2]["id"] == steps["cancelled"]["prompt_id"]


# -- two SDK clients at once ------------------------------------------------------------------


async def test_two_sdk_clients_prompting_at_once_converge(sdk_app: Path, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=5)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        clients = [await join(sdk_app, server, sid, u) for u in ("alice", "bob")]
        try:
            await asyncio.gather(*(c.synced() for c in clients))
            alice, bob = clients
            await bob.command({"cmd": "typing", "value": True})
            await alice.wait_dump(
                lambda d: any(p["userId"] == "bob" and p["typing"] for p in d["presence"])
            )
            await asyncio.gather(
                alice.call("a", "prompt", "alice asks"), bob.call("b", "prompt", "bob asks")
            )
            acks = [(await c.settled(t))["ack"] for c, t in ((alice, "a"), (bob, "b"))]
            assert sorted(a["seq"] for a in acks) == [1, 2]
            dumps = [await c.wait_dump(replies_done(2)) for c in clients]
            stored = await server.transcript(sid)
        finally:
            for client in clients:
                await client.close()

    def story(dump: Event) -> list[tuple[Any, ...]]:
        return [
            (e["id"], e["seq"], e["kind"], e["author"], e["status"], e["content"])
            for e in dump["transcript"]
        ]

    assert story(dumps[0]) == story(dumps[1])
    assert [e["id"] for e in dumps[0]["transcript"]] == [e["id"] for e in stored]
    prompts = [e["author"] for e in dumps[0]["transcript"] if e["kind"] == "prompt"]
    assert sorted(prompts) == ["alice", "bob"]
    # each reply sits directly under its prompt
    entries = dumps[0]["transcript"]
    for prompt, reply in zip(entries[::2], entries[1::2], strict=True):
        assert prompt["reply_id"] == reply["id"] and reply["reply_to"] == prompt["id"]
    assert dumps[0]["queue"] == [] and dumps[0]["unanswered"] == {}


TWO_IN_ONE_PROCESS = """
import WebSocket from 'ws'
import { connect } from '@parley/client'
const [url, sessionId, ...tokens] = process.argv.slice(2)
const sessions = []
for (const [n, token] of tokens.entries()) { // one after the other, as a bot's members join
  const name = `member ${n}`
  const session = connect({ url, sessionId, token, name, WebSocketPolyfill: WebSocket })
  await session.ready(10000)
  sessions.push(session)
}
process.stdin.on('end', () => { for (const s of sessions) s.close(); process.exit(0) })
process.stdin.resume()
"""


async def test_two_sdk_sessions_in_one_process_are_each_shown_as_their_member(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Review (SDKs): two sessions of one Node process (or two tabs of one browser) passed
    each other's presence along over a BroadcastChannel, and the server stamped bob's
    state with alice, whose socket sent it first: bob was shown as alice, and not at all."""
    (sdk_app / "two.mjs").write_text(TWO_IN_ONE_PROCESS)
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "data")) as s:
        sid = await s.new_session({"alice": "editor", "bob": "editor", "vera": "viewer"})
        tokens = [await s.token(sid, user) for user in ("alice", "bob")]
        node = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            "two.mjs",
            s.ws_url,
            sid,
            *tokens,
            cwd=sdk_app,
            stdin=asyncio.subprocess.PIPE,
        )
        try:
            vera = await s.connect(sid, "vera")

            def shown(client: YClient) -> list[tuple[str, str]]:
                states = [st for st in client.awareness.values() if st and "user" in st]
                return sorted(
                    (str(st["parley"]["user_id"]), str(st["user"]["name"])) for st in states
                )

            await vera.wait_until(lambda c: len(shown(c)) == 2)
            assert shown(vera) == [("alice", "member 0"), ("bob", "member 1")]
        finally:
            assert node.stdin is not None
            node.stdin.close()
            async with asyncio.timeout(10):
                await node.wait()


FOUR_TABS_AT_ONCE = """
import WebSocket from 'ws'
import { connect } from '@parley/client'
const [url, sessionId, token] = process.argv.slice(2)
const tab = async (k) => {
  const session = connect({ url, sessionId, token, WebSocketPolyfill: WebSocket })
  await session.ready(10000)
  const sent = Array.from({ length: 40 }, (_, n) => session.message(`${k}.${n}`))
  const settled = await Promise.allSettled(sent)
  session.close()
  return settled.map((r) => (r.status === 'fulfilled' ? 'ack' : r.reason.code))
}
const outcomes = (await Promise.all([0, 1, 2, 3].map(tab))).flat()
console.log(JSON.stringify(outcomes))
process.exit(0)
"""


async def test_one_member_in_four_sessions_sending_at_once_has_every_command_stored_once(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Review RH-2: the SDK paced each socket under the server's budget of one socket, but
    the server budgets a member across their sockets: four ``connect()``s of one member,
    each sending 40 messages at once, had 47 of 160 rejected ``rate_limited`` with
    ``retryAfter`` null. The refusal says when; the SDK waits, slows down and sends the
    command again by its id: every one acked, each stored once."""
    (sdk_app / "four.mjs").write_text(FOUR_TABS_AT_ONCE)
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "data")) as s:
        sid = await s.new_session({"alice": "editor"})
        node = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            "four.mjs",
            s.ws_url,
            sid,
            await s.token(sid, "alice"),
            cwd=sdk_app,
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(90):
            out, _ = await node.communicate()
        outcomes = json.loads(out.decode().strip().splitlines()[-1])
        assert outcomes == ["ack"] * 160, {o: outcomes.count(o) for o in set(outcomes)}
        transcript = (await s.http.get(f"/api/v1/sessions/{sid}/transcript")).json()["messages"]
        texts = sorted(m["content"] for m in transcript)
        assert texts == sorted(f"{k}.{n}" for k in range(4) for n in range(40))


async def test_a_membership_change_is_a_member_event(sdk_app: Path, tmp_path: Path) -> None:
    """Review K1: nothing told a client that its member's role changed; the server's
    ``member`` frame is the SDK's ``member`` event, the role and capabilities as they are now."""
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "data")) as s:
        sid = await s.new_session({"alice": "owner", "vera": "viewer"})
        vera = await join(sdk_app, s, sid, "vera")
        try:
            await vera.synced()
            path = f"/api/v1/sessions/{sid}/members/vera"
            put = await s.http.put(path, json={"role": "editor", "display_name": "Vera"})
            assert put.is_success, put.text
            event = await vera.wait_event(lambda e: e.get("event") == "member", 30)
            assert event["member"] == {
                "type": "member",
                "user_id": "vera",
                "role": "editor",
                "display_name": "Vera",
                "capabilities": put.json()["capabilities"],
            }
            acked = await vera.ack("m", "message", "promoted: I may write")
            assert acked["type"] == "ack"
        finally:
            await vera.close()


# -- typed errors -----------------------------------------------------------------------------


async def test_refusals_reject_with_typed_errors(sdk_app: Path, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=30)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"olga": "owner", "ed": "editor", "vic": "viewer"})
        users = ("olga", "ed", "vic")
        olga, ed, vic = [await join(sdk_app, server, sid, u) for u in users]
        try:
            for client in (olga, ed, vic):
                await client.synced()
            assert (await vic.refusal("v", "prompt", "may I?"))["code"] == "forbidden"
            assert (await ed.refusal("n", "cancel", "no-such-prompt"))["code"] == "not_found"
            assert (await ed.refusal("e", "prompt", "   "))["code"] == "invalid"
            for tag, bad in (("i1", 5), ("i2", ""), ("i3", "x" * 129)):  # review: 5 waited
                refused = await ed.refusal(tag, "prompt", "hi", {"id": bad})
                assert refused["code"] == "invalid" and refused["command_id"] is None
            assert (await ed.refusal("f", "setFact", "k", "x" * 2001))["code"] == "too_large"
            assert (await ed.refusal("p", "setPolicy", "reject"))["code"] == "forbidden"
            assert (await olga.ack("o", "setPolicy", "reject"))["policy"] == "reject"
            first = await ed.ack("r1", "prompt", "a long answer please")
            busy = await olga.refusal("r2", "prompt", "me too")
            assert busy["code"] == "busy" and busy["command_id"]
            await ed.wait_dump(replies_done(1))
            # a prompt that has run can no longer be cancelled
            assert (await ed.refusal("c", "cancel", first["prompt_id"]))["code"] == "conflict"
            fact = await ed.ack("k", "setFact", "account", "7731")
            pin = await ed.ack("pin", "pin", first["prompt_id"], True)
            assert (fact["key"], pin["entry_id"]) == ("account", first["prompt_id"])
            dump = await ed.wait_dump(lambda d: d["pins"] and d["facts"])
            assert dump["facts"] == {"account": "7731"} and dump["pins"] == [first["prompt_id"]]
            assert dump["policy"] == "reject"
            # A final close rejects what is pending with its code, and ends the session.
            await server.http.delete(f"/api/v1/sessions/{sid}/members/vic")
            closed = await vic.wait_event(
                lambda e: e.get("event") == "state" and e["state"] == "closed", 30
            )
            assert closed
            after = await vic.refusal("late", "message", "still here?")
            assert (after["code"], after["close_code"]) == ("forbidden", 4403)
        finally:
            for client in (olga, ed, vic):
                await client.close()


# Every character the server takes for blank in an id (Python's ``str.strip()``), and two
# it does not that JavaScript's ``trim()`` or a reader might (a BOM, a zero-width space).
BLANK_TO_THE_SERVER = "".join(c for c in map(chr, range(0x3001)) if not c.strip())
NOT_BLANK = ("\ufeff", "\u200b")


async def test_an_id_is_blank_to_the_sdk_as_it_is_to_the_server(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Review G4: the SDK's blank test was ``id.trim()``: it refused ``"\ufeff"`` (which
    the server acks) and sent U+001C-U+001F and U+0085 (which the server refuses). Its
    test is the server's: refused before anything is sent (no command id), or acked."""
    assert len(BLANK_TO_THE_SERVER) == 29  # Python's whitespace
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"ed": "editor"})
        ed = await join(sdk_app, server, sid, "ed")
        try:
            await ed.synced()
            for n, blank in enumerate([*BLANK_TO_THE_SERVER, BLANK_TO_THE_SERVER]):
                refused = await ed.refusal(f"b{n}", "message", "hi", {"id": blank})
                assert (refused["code"], refused["command_id"]) == ("invalid", None), blank
            for n, id_ in enumerate(NOT_BLANK):
                assert (await ed.ack(f"n{n}", "message", "hi", {"id": id_}))["id"] == id_
        finally:
            await ed.close()


# -- a server restart: the unanswered prompt is sent once more, stored once ----------------------


@contextlib.asynccontextmanager
async def restartable(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> AsyncIterator[tuple[ServerProcess, RunningServer]]:
    """A server process to kill and start again, and an admin client of it."""
    node = ServerProcess(sqlite_url(tmp_path), tmp_path / "data", free_port())
    server_processes.append(node)
    await node.start()
    admin = httpx.AsyncClient(
        base_url=node.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=20
    )
    async with admin:
        yield node, RunningServer(node.base_url, node.ws_url, admin)


async def test_unanswered_prompts_are_resent_once_across_a_restart(
    sdk_app: Path, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    async with restartable(tmp_path, server_processes) as (node, http):
        sid = await http.new_session({"alice": "editor"})
        alice = await join(sdk_app, http, sid, "alice")
        try:
            await alice.synced()
            # Sent as the server dies: stored or not, it is unanswered when the socket drops.
            await alice.call("edge", "prompt", "sent as the server dies")
            node.kill()
            await alice.disconnected()
            # Sent while the server is down: kept until a socket opens.
            await alice.call("offline", "prompt", "sent while offline")
            await node.start()
            acks = {tag: (await alice.settled(tag, 60))["ack"] for tag in ("edge", "offline")}
            # (the first ends `failed`, `server_restart`, if it was running at the kill)
            dump = await alice.wait_dump(prompts_ended(2), 60)
            stored = await http.transcript(sid)
        finally:
            await alice.close()

    prompts = [e for e in stored if e["kind"] == "prompt"]
    texts = sorted(e["content"] for e in prompts)
    assert texts == ["sent as the server dies", "sent while offline"]
    assert {e["id"] for e in prompts} == {a["prompt_id"] for a in acks.values()}
    seen = dump["transcript"]
    assert [e["id"] for e in seen] == [e["id"] for e in stored]
    assert len({e["id"] for e in seen}) == len(seen)
    sent = [e for e in alice.history if e.get("event") == "sent"]
    by_id = {a["id"]: [e["attempt"] for e in sent if e["id"] == a["id"]] for a in acks.values()}
    # The offline prompt went out once, on the new socket; the other at most twice.
    assert by_id[acks["offline"]["id"]] == [1]
    assert by_id[acks["edge"]["id"]] in ([1], [1, 2])
    assert dump["unanswered"] == {}


async def test_a_cancel_whose_socket_dropped_is_resent_and_acked_once(
    sdk_app: Path, tmp_path: Path
) -> None:
    """The socket drops right after a cancel is written: whether or not the server carried
    it out, the cancel is written once more on the next socket and acked once."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=50)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await join(sdk_app, server, sid, "alice")
        try:
            await alice.synced()
            await alice.ack("run", "prompt", "a long answer please")
            waiting = await alice.ack("wait", "prompt", "then this one")
            cancelled = await alice.ack("cancel", "cancel", waiting["prompt_id"], drop=True)
            dump = await alice.wait_dump(
                lambda d: any(e["status"] == "cancelled" for e in d["transcript"])
            )
            stored = await server.transcript(sid)
        finally:
            await alice.close()

    assert cancelled["prompt_id"] == waiting["prompt_id"]
    attempts = [e["attempt"] for e in alice.history if e.get("id") == cancelled["id"]]
    assert attempts == [1, 2]
    assert alice.history.count({"event": "state", "state": "disconnected"}) == 1
    entry = next(e for e in dump["transcript"] if e["id"] == waiting["prompt_id"])
    assert (entry["status"], entry["reason_code"]) == ("cancelled", "cancelled")
    assert [e["id"] for e in dump["transcript"]] == [e["id"] for e in stored]


async def test_a_prompt_a_quota_failed_shows_when_to_send_it_again(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Its entry (and its reply's) carries ``retry_at``, the time REST tells (FX75)."""
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await join(sdk_app, server, sid, "alice")
        try:
            await alice.synced()
            await alice.ack("1", "prompt", "runs")
            await alice.wait_dump(replies_done(1))
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/quotas", json={"user_tokens_per_day": 1}
            )
            assert put.status_code == 200, put.text
            refused = await alice.ack("2", "prompt", "over the quota")
            dump = await alice.wait_dump(prompts_ended(2))
        finally:
            await alice.close()
        told = (
            await server.http.get(f"/api/v1/sessions/{sid}/prompts/{refused['prompt_id']}")
        ).json()
    shown = {e["id"]: e for e in dump["transcript"]}
    prompt = shown[refused["prompt_id"]]
    assert (prompt["status"], prompt["reason_code"]) == ("failed", "quota_exceeded")
    assert isinstance(told["retry_at"], int) and told["retry_at"] % 86_400_000 == 0
    assert prompt["retry_at"] == shown[told["reply_id"]]["retry_at"] == told["retry_at"]


async def test_a_side_thread_prompt_a_quota_failed_shows_when_to_send_it_again(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Its turn (and its reply's) in the ``thread`` frame carries ``retry_at``, the time
    the thread's REST read tells (FX78); an answered turn's is null."""
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await join(sdk_app, server, sid, "alice")
        try:
            await alice.synced()
            thread_id = (await alice.ack("open", "openThread", {"title": "t"}))["thread_id"]
            first = await alice.ack("1", "threadPrompt", thread_id, "runs")
            await alice.wait_event(settled_turn(first["reply_id"]), 30)
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/quotas", json={"user_tokens_per_day": 1}
            )
            assert put.status_code == 200, put.text
            refused = await alice.ack("2", "threadPrompt", thread_id, "over the quota")
            framed = await alice.wait_event(settled_turn(refused["reply_id"]), 30)
        finally:
            await alice.close()
        token = await server.token(sid, "alice")
        told = (
            await server.http.get(
                f"/api/v1/sessions/{sid}/threads/{thread_id}",
                headers={"Authorization": f"Bearer {token}"},
            )
        ).json()
    retry_at = told["turns"][-1]["retry_at"]
    assert isinstance(retry_at, int) and retry_at % 86_400_000 == 0
    shown = [
        (t["status"], t["reason_code"], t["retry_at"]) for t in framed["frame"]["thread"]["turns"]
    ]
    assert shown == [
        ("done", None, None),
        ("done", None, None),
        ("failed", "quota_exceeded", retry_at),
        ("failed", "quota_exceeded", retry_at),
    ]


def settled_turn(reply_id: str) -> Callable[[Event], bool]:
    """A ``thread`` frame whose thread holds ``reply_id`` settled (not running)."""

    def settled(event: Event) -> bool:
        frame = event.get("frame") if event.get("event") == "thread" else None
        if not isinstance(frame, dict) or frame.get("type") != "thread":
            return False
        thread = frame["thread"]
        return not thread["running"] and any(t["id"] == reply_id for t in thread["turns"])

    return settled


async def test_limits_and_a_refused_token_reject_typed(sdk_app: Path, tmp_path: Path) -> None:
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "data",
        offline_token_delay_ms=50,
        max_pending_per_user=1,
        commands_per_second=0.01,
        commands_burst=4,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await join(sdk_app, server, sid, "alice")
        stranger = await SdkClient.launch(sdk_app, server.ws_url, sid, "not-a-token", "eve")
        try:
            await alice.synced()
            await alice.ack("1", "prompt", "runs")
            await alice.wait_dump(lambda d: any(e["kind"] == "reply" for e in d["transcript"]))
            await alice.ack("2", "prompt", "waits")
            assert (await alice.refusal("3", "prompt", "one too many"))["code"] == "queue_full"
            # past the burst of 4 commands, the next is refused, unread
            outcomes = []
            for n in range(8):
                await alice.call(f"m{n}", "message", "hello?")
                outcomes.append(await alice.settled(f"m{n}"))
                if "error" in outcomes[-1]:
                    break
            assert outcomes[-1]["error"]["code"] == "rate_limited", outcomes
            assert all("ack" in outcome for outcome in outcomes[:-1])

            # A refused token closes the socket for good (4401): a command waiting for it
            # rejects with `unauthenticated`, and the session ends.
            await stranger.call("x", "prompt", "let me in")
            refused = (await stranger.settled("x"))["error"]
            assert (refused["code"], refused["close_code"]) == ("unauthenticated", 4401)
            assert (await stranger.dump())["state"] == "closed"
        finally:
            for client in (alice, stranger):
                await client.close()


async def test_a_command_too_big_for_the_socket_rejects_too_large(
    sdk_app: Path, tmp_path: Path
) -> None:
    """The server closes a socket with 1009 for a frame over its limit: the command is
    refused, not written again to every next socket (each closed 1009 in turn)."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "data", max_ws_message_bytes=64 * 1024
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await join(sdk_app, server, sid, "alice")
        try:
            await alice.synced()
            refused = await alice.refusal("big", "prompt", "x" * 100_000)
            assert refused["code"] == "too_large", refused
            await alice.ack("small", "prompt", "and a small one")  # the session goes on
            assert (await alice.dump())["unanswered"] == {}
        finally:
            await alice.close()


async def test_a_command_over_the_servers_message_limit_is_refused_before_it_is_written(
    sdk_app: Path, sqlite_server: RunningServer, tmp_path: Path
) -> None:
    """Review G7: the server closes a socket whose frame is over its limit before the frame
    is all written, so the SDK often saw a reset (1006), not 1009, and wrote the command
    again to each next socket (a 60 MB prompt, 8 times). A command over the limit (the
    server's default, or ``maxMessageBytes``) is refused ``too_large`` at the call, never
    written, and the socket stays open."""
    limit = 4 * 1024 * 1024  # PARLEY_MAX_WS_MESSAGE_BYTES's default
    sid = await sqlite_server.new_session({"alice": "editor"})
    alice = await join(sdk_app, sqlite_server, sid, "alice")
    try:
        await alice.synced()
        refused = await alice.refusal("big", "prompt", "x" * limit)
        assert refused["code"] == "too_large", refused
        await alice.ack("small", "prompt", "and a small one")  # on the same socket
        assert [e["type"] for e in alice.history if e.get("event") == "sent"] == ["prompt"]
        assert [e["state"] for e in alice.history if e.get("event") == "state"] == [
            "connecting",
            "connected",
        ]
        assert (await alice.dump())["unanswered"] == {}
    finally:
        await alice.close()

    # A database of its own: the first server still serves its file (and may still be
    # answering alice's prompt), and two servers never share one.
    url = sqlite_url(tmp_path, "second.db")
    settings = make_settings(url, tmp_path / "second", max_ws_message_bytes=65536)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"bob": "editor"})
        token = await server.token(sid, "bob")
        options = ("--max-message-bytes", "65536")  # the server's own, lower limit
        bob = await SdkClient.launch(sdk_app, server.ws_url, sid, token, "bob", *options)
        try:
            await bob.synced()
            refused = await bob.refusal("big", "message", "x" * 65536)  # its frame is larger
            assert refused["code"] == "too_large", refused
            await bob.ack("small", "message", "x" * 30_000)  # under the limit: taken
            assert [e["type"] for e in bob.history if e.get("event") == "sent"] == ["message"]
        finally:
            await bob.close()


@pytest.mark.parametrize(
    ("status", "retry_after", "code"),
    [
        ("429 Too Many Requests", "20", "rate_limited"),
        ("503 Service Unavailable", "30", "unavailable"),
        ("401 Unauthorized", None, "unauthenticated"),
        ("403 Forbidden", None, "forbidden"),
        ("404 Not Found", None, "not_found"),
    ],
)
async def test_an_upgrade_refused_rejects_ready_with_its_typed_error(
    sdk_app: Path, status: str, retry_after: str | None, code: str
) -> None:
    """Review RK-4: a refused upgrade was a plain 1006 to the SDK: ``ready(ms)`` rejected
    ``unavailable`` once the time was out, whatever the server said. Its status and JSON
    body are read (Node's ``ws``): a retryable one (429, 503) whose ``Retry-After`` falls
    past the time left rejects ``ready`` at once, a final one (401, 403, 404) ends the
    session with its error, as its close code would."""
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    async with refusing(status, headers, error_body(code, f"refused: {code}")) as refuser:
        client = await SdkClient.launch(sdk_app, refuser.url, "s", "t", "alice")
        try:
            await client.command({"cmd": "ready", "tag": "r", "timeout_ms": 10_000})
            refused = (await client.settled("r", timeout=8))["error"]
            assert (refused["code"], refused["message"]) == (code, f"refused: {code}"), refused
            assert refused["status"] == int(status.split()[0])
            expected = None if retry_after is None else float(retry_after)
            assert refused["retry_after"] == expected
            dump = await client.dump()
            assert dump["state"] == ("connecting" if retry_after else "closed")
            assert refuser.requests == 1  # not retried before its Retry-After, or at all
        finally:
            await client.close()


async def test_a_presence_over_the_message_limit_is_refused_before_it_is_sent(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Review RK-5: ``setPresence`` throws ``too_large`` for a state whose frame is over
    ``maxMessageBytes``, before anything is sent; the socket stays open."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_ws_message_bytes=65536)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        token = await server.token(sid, "alice")
        options = ("--max-message-bytes", "65536")
        alice = await SdkClient.launch(sdk_app, server.ws_url, sid, token, "alice", *options)
        try:
            await alice.synced()
            big = await alice.command({"cmd": "presence", "state": {"note": "x" * 100_000}})
            assert big["thrown"]["code"] == "too_large", big
            assert "thrown" not in await alice.command({"cmd": "presence", "state": {"n": 1}})
            await alice.ack("small", "prompt", "still here")
            states = [e["state"] for e in alice.history if e.get("event") == "state"]
            assert states == ["connecting", "connected"]  # never dropped
        finally:
            await alice.close()


async def test_a_presence_closed_1009_fails_no_small_command_and_is_not_resent(
    sdk_app: Path, tmp_path: Path
) -> None:
    """Review RK-5: a state over a server's lower limit (set on the provider's awareness,
    past the SDK's check) closed the socket 1009; the SDK refused the largest *command*
    written to it, however small, and the provider wrote the state to every next socket.
    The state is blamed (an ``error`` event, ``presenceRefused``) and not written again;
    the prompts are acked."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_ws_message_bytes=65536)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await join(sdk_app, server, sid, "alice")
        try:
            await alice.synced()
            for n in range(3):
                await alice.call(f"p{n}", "prompt", f"small prompt {n}")
            state = {"note": "x" * 100_000}
            await alice.command({"cmd": "presence", "state": state, "raw": True})
            for n in range(3):
                assert "ack" in await alice.settled(f"p{n}"), alice.history[-5:]
            refused = await alice.wait_event(lambda e: e.get("event") == "sdk-error", 30)
            assert refused["error"]["code"] == "too_large", refused
            dump = await alice.wait_dump(lambda d: d["state"] == "connected" and d["synced"])
            assert dump["presence_refused"]["code"] == "too_large"
            await alice.ack("after", "message", "and on")
        finally:
            await alice.close()


async def test_a_caller_may_bound_ready_and_give_a_command_up(sdk_app: Path) -> None:
    """Review (SDKs): with the server away, ``ready()`` waited for good, and a caller's
    own timeout could not withdraw a command, which went out again on the reconnect (a
    prompt retried meanwhile was stored twice). ``ready(timeoutMs)`` rejects
    ``unavailable``; a command given up by its ``AbortSignal`` rejects ``aborted`` and is
    not sent again."""
    nowhere = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    client = await SdkClient.launch(sdk_app, nowhere, "s", "t", "ann")
    try:
        await client.command({"cmd": "ready", "tag": "r", "timeout_ms": 300})
        bounded = await client.settled("r")
        assert bounded["error"]["code"] == "unavailable", bounded
        await client.command(
            {"cmd": "call", "tag": "p", "method": "prompt", "args": ["x"], "abort_ms": 200}
        )
        given_up = await client.settled("p")
        assert given_up["error"]["code"] == "aborted" and given_up["error"]["command_id"]
        assert (await client.dump())["unanswered"] == {}
    finally:
        await client.close()


async def test_a_command_given_up_names_itself_and_is_resent_by_its_id(
    sdk_app: Path, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """Review (SDKs): a command given up (its ``AbortSignal``, a caller's timeout) said its
    id, but nothing took an id to resend by: a retry was a new command, stored twice when
    the first had been. The error holds the command as sent, and ``resend`` sends it again
    by its id, answered with the first ack (as the Python SDK's ``CommandTimeout``)."""
    async with restartable(tmp_path, server_processes) as (node, http):
        sid = await http.new_session({"alice": "editor"})
        token = await http.token(sid, "alice")
        node.kill()  # nobody answers until the command is given up
        alice = await SdkClient.launch(sdk_app, node.ws_url, sid, token, "alice")
        try:
            await alice.command(
                {"cmd": "call", "tag": "p", "method": "prompt", "args": ["x"], "abort_ms": 300}
            )
            given_up = (await alice.settled("p"))["error"]
            command = given_up["command"]
            assert given_up["code"] == "aborted", given_up
            assert command == {"type": "prompt", "text": "x", "id": given_up["command_id"]}
            # Under the id of a command still waiting: the same command shares its reply,
            # another is refused.
            await alice.call("y1", "message", "y", {"id": "m1"})
            await alice.call("y2", "message", "y", {"id": "m1"})
            assert (await alice.refusal("z", "message", "z", {"id": "m1"}))["code"] == "conflict"
            await node.start()
            first = await alice.ack("r1", "resend", command)
            again = await alice.ack("r2", "prompt", "x", {"id": command["id"]})
            shared = [(await alice.settled(tag))["ack"] for tag in ("y1", "y2")]
            stored = await http.transcript(sid)
        finally:
            await alice.close()

    assert first["id"] == command["id"] and again == first  # the first ack, twice
    assert [e["id"] for e in stored if e["kind"] == "prompt"] == [first["prompt_id"]]
    assert shared[0] == shared[1] and shared[0]["id"] == "m1"
    assert [e["content"] for e in stored if e["kind"] == "message"] == ["y"]


async def test_many_commands_waiting_across_a_restart_are_paced_and_all_acked_in_order(
    sdk_app: Path, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """Review (SDKs): once synced again, the SDK wrote every command waiting at once; past
    the server's command burst of a socket (30) the rest were refused ``rate_limited``,
    though they would have been taken a moment later. They go out in order, a few at a
    time and at the server's rate: every one is acked, once, in the order it was made."""
    async with restartable(tmp_path, server_processes) as (node, http):
        sid = await http.new_session({"alice": "editor"})
        alice = await join(sdk_app, http, sid, "alice")
        try:
            await alice.synced()
            await alice.ack("before", "message", "before the restart")
            node.kill()
            await alice.disconnected()
            texts = [f"while down {n}" for n in range(45)]  # past the burst of 30
            for n, text in enumerate(texts):
                await alice.call(f"m{n}", "message", text)
            await node.start()
            acks = [(await alice.settled(f"m{n}", 60)).get("ack") for n in range(len(texts))]
            stored = await http.transcript(sid)
        finally:
            await alice.close()

    assert all(ack is not None for ack in acks), acks  # none refused (rate_limited)
    seqs = [ack["seq"] for ack in acks if ack is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(texts)
    assert [e["content"] for e in stored] == ["before the restart", *texts]
    sent = [e for e in alice.history if e.get("event") == "sent"]
    assert [e["id"] for e in sent][1:] == [ack["id"] for ack in acks if ack is not None]


# -- a server whose frames cannot be read (review SA F3) ---------------------------------------


class Answering:
    """A fake server of Parley's protocol: it syncs an empty document, answers the first
    command of its first socket with ``first(command_id)`` (frames) and acks every other
    command with seq 7. It keeps the ids of the commands each socket brought and the code
    each socket closed with."""

    def __init__(
        self, first: Callable[[str], list[bytes]], close: tuple[int, str] | None = None
    ) -> None:
        self.first = first
        self.close = close  # the first socket's close, after what ``first`` sends
        self.commands: list[list[str]] = []
        self.close_codes: list[int | None] = []
        self.url = ""  # once listening

    async def handler(self, ws: Any) -> None:
        ids: list[str] = []
        self.commands.append(ids)
        try:
            await ws.send(encode_sync(STEP2, b"\x00\x00"))
            async for frame in ws:  # ends as the SDK closes it (a ConnectionClosed below)
                message = decode_server_frame(frame) if isinstance(frame, bytes) else None
                if not isinstance(message, CommandReply):  # a command: framed as a reply
                    continue
                command_id = str(message.data["id"])
                ids.append(command_id)
                if len(self.commands) == 1 and len(ids) == 1:
                    for bad in self.first(command_id):
                        await ws.send(bad)
                    if self.close is not None:
                        await ws.close(*self.close)
                else:
                    await ws.send(_command_frame(_ack(command_id, "7")))
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)


@contextlib.asynccontextmanager
async def answering(
    first: Callable[[str], list[bytes]], close: tuple[int, str] | None = None
) -> AsyncIterator[Answering]:
    """An ``Answering`` server listening at its ``url``; its sockets all ended on exit."""
    fake = Answering(first, close)
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        fake.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield fake


def _command_frame(text: str) -> bytes:
    return bytes([COMMAND]) + varbytes(text.encode())


def _ack(command_id: str, seq: str) -> str:
    return f'{{"type": "ack", "id": {json.dumps(command_id)}, "seq": {seq}}}'


def _awareness(clock: int, state: bytes) -> bytes:
    update = varuint(1) + varuint(7) + varuint(clock) + varbytes(state)
    return bytes([AWARENESS]) + varbytes(update)


DEEP = ("[" * 100_000 + "]" * 100_000).encode()

# What the first socket answers the first command with, which the SDK cannot read.
UNREADABLE: dict[str, Callable[[str], list[bytes]]] = {
    "awareness-not-json": lambda _: [_awareness(1, b"{{{")],
    # JSON.parse takes it; comparing the state with the one before recurses past the stack
    "awareness-nested-100000-deep-twice": lambda _: [_awareness(1, DEEP), _awareness(2, DEEP)],
    "sync-update-garbled": lambda _: [encode_sync(UPDATE, bytes([1, 5, 200, 1, 2]))],
    "sync-step-2-cut-short": lambda _: [encode_sync(STEP2, bytes([3, 0, 0]))],
    "sync-type-unknown": lambda _: [bytes([0, 9, 0])],
    "empty-frame": lambda _: [b""],
    "command-not-json": lambda _: [_command_frame("{oops")],
    "ack-seq-a-string": lambda i: [_command_frame(_ack(i, '"seven"'))],
    "ack-seq-1e400": lambda i: [_command_frame(_ack(i, "1e400"))],
    "ack-seq-a-fraction": lambda i: [_command_frame(_ack(i, "1.5"))],
    "ack-seq-true": lambda i: [_command_frame(_ack(i, "true"))],
    "ack-seq-an-object": lambda i: [_command_frame(_ack(i, '{"n": 1}'))],
    # FX44: as the Python SDK reads them now (it took both)
    "ack-seq-a-numeric-string": lambda i: [_command_frame(_ack(i, '"7"'))],
    "ack-seq-past-a-safe-integer": lambda i: [_command_frame(_ack(i, "9007199254740992"))],
}


@pytest.mark.parametrize("case", list(UNREADABLE))
async def test_a_frame_that_cannot_be_read_starts_the_socket_over_and_the_command_is_resent(
    sdk_app: Path, case: str
) -> None:
    """Review SA F3: an awareness state that is not JSON threw from stock y-protocols out of
    the socket's message handler, which ends a Node process; a garbled sync update was only
    logged, and an ack with a ``seq`` of "seven" resolved the prompt with it. Every frame is
    read under one guard: one that cannot be read closes its socket 1002 and is reported
    (``invalid``), the SDK connects again, and the command is resent by its id."""
    async with answering(UNREADABLE[case]) as server:
        client = await SdkClient.launch(sdk_app, server.url, "s", "t", "ann")
        try:
            ack = await client.ack("p", "prompt", "did this arrive?")
            reported = await client.wait_event(lambda e: e.get("event") == "sdk-error", 30)
            dump = await client.wait_dump(lambda d: d["state"] == "connected" and d["synced"])
        finally:
            await client.close()

    assert ack["seq"] == 7
    assert reported["error"]["code"] == "invalid", reported
    assert "cannot be read" in reported["error"]["message"]
    assert server.commands == [[ack["id"]], [ack["id"]]]  # once to each socket
    assert server.close_codes[0] == 1002
    assert dump["unanswered"] == {}
    assert not [e for e in client.history if e.get("event") == "fatal"]
    assert sum(e.get("event") == "sdk-error" for e in client.history) == 1


class Unclosing:
    """A fake server of Parley's protocol, on websockets' sans-I/O core, that never finishes
    the close of its first socket: it answers the first command there with an ack the SDK
    cannot read, and the close the SDK then starts gets no close frame back (the connection
    stays open, and read, until the SDK drops it). Its next sockets ack every command with
    seq 7. ``sockets`` counts the sockets it took."""

    def __init__(self) -> None:
        self.sockets = 0
        self.url = ""  # once listening

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sockets += 1
        first, closing = self.sockets == 1, False
        protocol = ServerProtocol()
        try:
            while data := await reader.read(65536):
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, Request):
                        protocol.send_response(protocol.accept(event))
                        protocol.send_binary(encode_sync(STEP2, b"\x00\x00"))
                    elif event.opcode is Opcode.CLOSE:
                        closing = True
                    elif event.opcode is Opcode.BINARY:
                        message = decode_server_frame(event.data)
                        if isinstance(message, CommandReply):
                            command_id = str(message.data["id"])
                            seq = '"seven"' if first else "7"
                            protocol.send_binary(_command_frame(_ack(command_id, seq)))
                outgoing = protocol.data_to_send()
                if not (first and closing):  # the first socket's close is never answered
                    writer.write(b"".join(outgoing))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def test_a_close_the_server_never_finishes_is_given_up_and_the_command_resent(
    sdk_app: Path,
) -> None:
    """FX44: a socket closed 1002 for a frame it cannot read waited for the server's close
    frame as long as ``ws`` waits (30 s) before the SDK connected again. It waits at most
    ``closeTimeoutMs`` (3 s by default), then drops the socket: the command is resent on the
    next one and answered well within this test's bound."""
    server = Unclosing()
    listening = await asyncio.start_server(server.handler, "127.0.0.1", 0)
    async with listening:
        server.url = f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        client = await SdkClient.launch(sdk_app, server.url, "s", "t", "ann")
        try:
            await client.call("p", "prompt", "did this arrive?")
            outcome = await client.settled("p", timeout=20)
            reported = await client.wait_event(lambda e: e.get("event") == "sdk-error", 5)
        finally:
            await client.close()

    assert outcome["ack"]["seq"] == 7, outcome
    assert reported["error"]["code"] == "invalid", reported
    assert server.sockets == 2
    assert not [e for e in client.history if e.get("event") == "fatal"]


async def test_a_reply_nested_deep_settles_its_command_on_the_same_socket(sdk_app: Path) -> None:
    """JSON nested 100,000 deep in a command's reply is read (V8's parser does not recurse)
    and settles the command; nothing is thrown and the socket is kept."""
    deep = DEEP.decode()
    reply = {"type": "error", "code": "invalid", "message": "deep"}

    def first(command_id: str) -> list[bytes]:
        text = json.dumps({**reply, "id": command_id})
        return [_command_frame(text[:-1] + f', "detail": {deep}}}')]

    async with answering(first) as server:
        client = await SdkClient.launch(sdk_app, server.url, "s", "t", "ann")
        try:
            refused = await client.refusal("p", "prompt", "deep?")
            after = await client.ack("q", "prompt", "and on")
        finally:
            await client.close()

    assert (refused["code"], refused["message"]) == ("invalid", "deep")
    assert after["seq"] == 7 and len(server.commands) == 1
    assert not [e for e in client.history if e.get("event") in ("fatal", "sdk-error")]


CUT_OFF = json.dumps({"code": "rate_limited", "retry_after_ms": 300, "message": "too many"})


@pytest.mark.parametrize(
    ("code", "reason"),
    [(4429, CUT_OFF), (1013, CUT_OFF.replace("rate_limited", "unavailable"))],
)
async def test_a_close_that_says_when_is_waited_out_and_the_command_resent(
    sdk_app: Path, code: int, reason: str
) -> None:
    """FX69: a 4429 (limits ignored again and again) was final, whatever it said, and a
    1013's wait was not read (the provider came back in its own 0.1-2.5 s). A close whose
    reason says when (``retry_after_ms``) is told as a refusal (``refused``, with
    ``retryAfter``, as an upgrade refused is) and the session connects again after it: the
    command the close cut off is resent and answered."""
    async with answering(lambda _: [], close=(code, reason)) as server:
        client = await SdkClient.launch(sdk_app, server.url, "s", "t", "ann")
        try:
            ack = await client.ack("p", "prompt", "did this arrive?")
            refused = await client.wait_event(lambda e: e.get("event") == "refused", 5)
            history = list(client.history)  # before the client's own close
        finally:
            await client.close()

    assert ack["seq"] == 7 and server.close_codes[0] == code
    error = refused["error"]
    assert (error["code"], error["close_code"], error["retry_after"]) == (
        json.loads(reason)["code"],
        code,
        0.3,
    )
    assert not [e for e in history if e.get("event") in ("fatal", "sdk-error")]
    assert not [e for e in history if e.get("state") == "closed"]


async def test_a_cut_off_that_says_no_wait_is_final(sdk_app: Path) -> None:
    """A 4429 whose reason tells no wait (a server before FX69) ends the session, as before."""
    async with answering(lambda _: [], close=(4429, "too many commands")) as server:
        client = await SdkClient.launch(sdk_app, server.url, "s", "t", "ann")
        try:
            refused = await client.refusal("p", "prompt", "did this arrive?")
        finally:
            await client.close()

    assert (refused["code"], refused["close_code"]) == ("rate_limited", 4429)
    assert len(server.commands) == 1
