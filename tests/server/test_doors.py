"""Same answer at every door: a bad command sent on a socket and the same command sent
over REST are refused with the same stable error code (review: a viewer's over-long fact
was ``too_large`` on the socket and ``forbidden`` over REST; an unknown field was taken
on the socket and refused over REST; a malformed body past the member's command rate was
``invalid`` over REST and ``rate_limited`` on a socket)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.server.http.models import FactPut
from parley.server.settings import Settings
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.server.cluster.nodes import cluster

LONG_ID = "e" * 65  # past the 64 characters an entry id has at both doors
# A window whose share for the pins and facts (half of 1024 - 256) one long fact overflows.
WINDOW = {"context_window_tokens": 1024, "max_output_tokens": 256}
CLAUSES = " ".join(f"clause {n} of the contract" for n in range(80))  # ~480 tokens
TURNS = [f"turn{n}" for n in range(51)]  # one more than a share may pick


@dataclass(frozen=True)
class Case:
    """One bad command: who sends it, its socket frame (without ``id``), the REST call that
    sends the same (``"PUT /facts/k"``, under the session's path) and its body, and the
    code both doors answer."""

    role: str
    frame: dict[str, Any]
    route: str
    body: dict[str, Any] | bytes | None
    code: str


FACT = {"type": "set_fact", "key": "k"}
CASES = {
    # Size before permission: a viewer may not set facts, but an over-long one is too large.
    "viewer_long_fact": Case(
        "viewer", {**FACT, "value": "x" * 2001}, "PUT /facts/k", {"value": "x" * 2001}, "too_large"
    ),
    # Review B2: within the fact limit, past what the window leaves the pins and facts.
    "editor_fact_past_the_window": Case(
        "editor",
        {**FACT, "value": CLAUSES[:2000]},
        "PUT /facts/k",
        {"value": CLAUSES[:2000]},
        "too_large",
    ),
    # Form before permission: a fact's key, its line breaks, its type, its unicode.
    "viewer_bad_fact_key": Case(
        "viewer",
        {**FACT, "key": "a b", "value": "v"},
        "PUT /facts/a%20b",
        {"value": "v"},
        "invalid",
    ),
    "viewer_removes_bad_fact_key": Case(
        "viewer", {**FACT, "key": "a b", "value": None}, "DELETE /facts/a%20b", None, "invalid"
    ),
    "viewer_two_line_fact": Case(
        "viewer", {**FACT, "value": "a\nb"}, "PUT /facts/k", {"value": "a\nb"}, "invalid"
    ),
    "viewer_fact_not_a_string": Case(
        "viewer", {**FACT, "value": 5}, "PUT /facts/k", {"value": 5}, "invalid"
    ),
    "viewer_fact_lone_surrogate": Case(
        "viewer", {**FACT, "value": "\ud800"}, "PUT /facts/k", b'{"value": "\\ud800"}', "invalid"
    ),
    "viewer_pins_long_id": Case(
        "viewer",
        {"type": "pin", "entry_id": LONG_ID},
        "POST /pins",
        {"entry_id": LONG_ID},
        "invalid",
    ),
    "viewer_pins_empty_id": Case(
        "viewer", {"type": "pin", "entry_id": ""}, "POST /pins", {"entry_id": ""}, "invalid"
    ),
    "viewer_sets_unknown_policy": Case(
        "viewer",
        {"type": "set_policy", "policy": "lottery"},
        "PATCH ",
        {"policy": "lottery"},
        "invalid",
    ),
    # Form before the session's state: an entry id no entry can have is not looked for.
    "editor_unpins_long_id": Case(
        "editor", {"type": "unpin", "entry_id": LONG_ID}, f"DELETE /pins/{LONG_ID}", None, "invalid"
    ),
    # Unknown fields: refused at both doors (docs/websocket.md: "Unknown fields").
    "editor_prompt_unknown_field": Case(
        "editor",
        {"type": "prompt", "text": "hi", "colour": "red"},
        "POST /prompts",
        {"text": "hi", "colour": "red"},
        "invalid",
    ),
    "viewer_prompt_unknown_field": Case(
        "viewer",
        {"type": "prompt", "text": "hi", "colour": "red"},
        "POST /prompts",
        {"text": "hi", "colour": "red"},
        "invalid",
    ),
    "editor_message_unknown_field": Case(
        "editor",
        {"type": "message", "text": "hi", "to": "bob"},
        "POST /messages",
        {"text": "hi", "to": "bob"},
        "invalid",
    ),
    "editor_cancel_unknown_field": Case(
        "editor",
        {"type": "cancel", "prompt_id": "nope", "force": True},
        "POST /prompts/nope/cancel",
        {"force": True},
        "invalid",
    ),
    "editor_fact_unknown_field": Case(
        "editor",
        {**FACT, "value": "v", "ttl": 5},
        "PUT /facts/k",
        {"value": "v", "ttl": 5},
        "invalid",
    ),
    "viewer_pin_unknown_field": Case(
        "viewer",
        {"type": "pin", "entry_id": "e1", "note": "x"},
        "POST /pins",
        {"entry_id": "e1", "note": "x"},
        "invalid",
    ),
    "editor_thread_open_unknown_field": Case(
        "editor",
        {"type": "thread_open", "title": "t", "model": "m"},
        "POST /threads",
        {"title": "t", "model": "m"},
        "invalid",
    ),
    # Every field's form before any field's size: REST's body models judge the anchor's
    # and the turn ids' form before the door reads the title's length or the ids' count.
    "editor_thread_open_long_title_bad_anchor": Case(
        "editor",
        {"type": "thread_open", "title": "t" * 201, "anchor": LONG_ID},
        "POST /threads",
        {"title": "t" * 201, "anchor": LONG_ID},
        "invalid",
    ),
    "editor_shares_too_many_turns_one_malformed": Case(
        "editor",
        {"type": "thread_share", "thread_id": "t1", "turn_ids": [*TURNS, ""]},
        "POST /threads/t1/share-replies",
        {"turn_ids": [*TURNS, ""]},
        "invalid",
    ),
}


async def _socket_code(server: Any, sid: str, user: str, case: Case) -> str:
    client = await server.connect(sid, user)
    reply = await client.command({**case.frame, "id": "c1"})
    assert reply["type"] == "error", reply
    return str(reply["code"])


async def _rest_code(server: Any, sid: str, user: str, case: Case) -> str:
    return await _rest_call(server.base_url, await server.token(sid, user), sid, case)


async def _rest_call(base_url: str, token: str, sid: str, case: Case) -> str:
    """The code REST answers ``case`` with, sent with ``token`` to ``base_url``."""
    method, _, path = case.route.partition(" ")
    headers = {"Authorization": f"Bearer {token}"}
    if isinstance(case.body, bytes):  # what a dict cannot say (a lone surrogate)
        headers["Content-Type"] = "application/json"
    raw = case.body if isinstance(case.body, bytes) else None
    body = None if isinstance(case.body, bytes) else case.body
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=20) as rest:
        url = f"/api/v1/sessions/{sid}{path}"
        response = await rest.request(method, url, json=body, content=raw)
    assert response.status_code >= 400, response.text
    return str(response.json()["error"]["code"])


@pytest.mark.parametrize("name", sorted(CASES))
async def test_both_doors_refuse_a_bad_command_with_one_code(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **WINDOW)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": case.role, "bob": case.role})
        socket_code = await _socket_code(server, sid, "alice", case)
        rest_code = await _rest_code(server, sid, "bob", case)
    assert (socket_code, rest_code) == (case.code, case.code)


async def test_both_doors_refuse_a_pin_that_leaves_no_room_for_prompts(tmp_path: Path) -> None:
    """Review B2: a pin was accepted whatever its size, and pins past the window failed
    every member's prompt. One past the share is refused to the one who pins, at both
    doors, and nothing is pinned."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **WINDOW)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        posted = await alice.command({"type": "message", "text": CLAUSES, "id": "m1"})
        pin = {"type": "pin", "entry_id": posted["message_id"], "id": "p1"}
        socket = await alice.command(pin)
        headers = {"Authorization": f"Bearer {await server.token(sid, 'bob')}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as bob:
            pins = f"/api/v1/sessions/{sid}/pins"
            rest = await bob.post(pins, json={"entry_id": posted["message_id"]})
            after = (await bob.get(pins)).json()["pins"]
    assert (socket["type"], socket["code"]) == ("error", "too_large")
    assert "unpin" in socket["message"]
    assert (rest.status_code, rest.json()["error"]["code"]) == (413, "too_large")
    assert after == []


# Malformed commands at a route that answers resends past the rate (a prompt) and at one
# that refuses its body unparsed there (a fact).
MALFORMED = ("editor_prompt_unknown_field", "editor_fact_unknown_field")


def _two_commands(tmp_path: Path) -> Settings:
    """Settings where each member has two commands to spend, and no more (their socket's
    own budget is not the one that binds: each socket here sends one command)."""
    return make_settings(
        sqlite_url(tmp_path), tmp_path / "data", commands_burst=1, user_commands_per_second=0.001
    )


async def _messages(server: RunningServer, sid: str, user: str, count: int) -> list[int]:
    """The statuses of ``count`` messages ``user`` posts over REST (each spends a command)."""
    headers = {"Authorization": f"Bearer {await server.token(sid, user)}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=20) as rest:
        url = f"/api/v1/sessions/{sid}/messages"
        return [(await rest.post(url, json={"text": f"m{n}"})).status_code for n in range(count)]


@pytest.mark.parametrize("name", MALFORMED)
async def test_past_the_command_rate_both_doors_refuse_a_malformed_command_alike(
    name: str, tmp_path: Path
) -> None:
    """The member's command rate is judged before the command's form at every door
    (docs/websocket.md: the order of checks)."""
    case = CASES[name]
    async with serve_in_process(_two_commands(tmp_path)) as server:
        sid = await server.new_session({"alice": case.role, "bob": case.role})
        for user in ("alice", "bob"):
            assert await _messages(server, sid, user, 2) == [202, 202]
        socket_code = await _socket_code(server, sid, "alice", case)
        rest_code = await _rest_code(server, sid, "bob", case)
    assert (socket_code, rest_code) == ("rate_limited", "rate_limited")


@pytest.mark.parametrize("name", MALFORMED)
async def test_a_malformed_command_spends_a_command_at_both_doors(
    name: str, tmp_path: Path
) -> None:
    """A malformed frame spends a command on a socket; a malformed body spends one over
    REST too, so the member's next commands are answered alike whichever door the
    malformed one came through."""
    case = CASES[name]
    async with serve_in_process(_two_commands(tmp_path)) as server:
        sid = await server.new_session({"alice": case.role, "bob": case.role})
        socket_code = await _socket_code(server, sid, "alice", case)
        rest_code = await _rest_code(server, sid, "bob", case)
        after = {user: await _messages(server, sid, user, 2) for user in ("alice", "bob")}
    assert (socket_code, rest_code) == (case.code, case.code)
    assert after == {"alice": [202, 429], "bob": [202, 429]}


async def test_past_the_command_rate_a_body_that_cannot_pass_is_not_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cost: past the rate a fact's body could only be refused, so it is refused before
    it is parsed (a prompt's is parsed there, to find a resend, as a socket's frame is)."""
    parsed: list[bytes] = []
    parse = FactPut.model_validate_json

    def counted(raw: bytes, *args: Any, **kwargs: Any) -> FactPut:
        parsed.append(raw)
        return parse(raw, *args, **kwargs)

    monkeypatch.setattr(FactPut, "model_validate_json", counted)
    async with serve_in_process(_two_commands(tmp_path)) as server:
        sid = await server.new_session({"ed": "editor"})
        headers = {"Authorization": f"Bearer {await server.token(sid, 'ed')}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as ed:
            fact, message = f"/api/v1/sessions/{sid}/facts/k", f"/api/v1/sessions/{sid}/messages"
            assert (await ed.put(fact, json={"value": "v"})).status_code == 200
            assert (await ed.post(message, json={"text": "m"})).status_code == 202
            refused = await ed.put(fact, json={"value": "w"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limited")
    assert parsed == [b'{"value":"v"}']


@pytest.mark.postgres
async def test_a_node_that_forwards_answers_as_the_node_that_runs(tmp_path: Path) -> None:
    """Every case through the doors of a node that does not run the session: its socket's
    commands and its REST changes are forwarded to the node that does, and answered there
    with the same code as at that node's own doors (docs/cluster.md)."""
    env = {"PARLEY_CLUSTER_POLL_S": "60", "PARLEY_COMMANDS_BURST": "500"}
    env |= {f"PARLEY_{key.upper()}": str(value) for key, value in WINDOW.items()}
    async with cluster(tmp_path, 2, **env) as nodes:
        sid = await nodes.new_session(
            {"v1": "viewer", "v2": "viewer", "e1": "editor", "e2": "editor"}
        )
        await nodes.connect(nodes.nodes[0], sid, "e1")  # the session runs on a node now
        _, other = await nodes.running_and_other(sid)
        sockets = {
            role: await nodes.connect(other, sid, f"{role[0]}1") for role in ("viewer", "editor")
        }
        outcomes = {}
        for name, case in sorted(CASES.items()):
            reply = await sockets[case.role].command({**case.frame, "id": f"c-{name}"})
            token = await nodes.token(other, sid, f"{case.role[0]}2")
            rest = await _rest_call(other.base_url, token, sid, case)
            outcomes[name] = (reply.get("code"), rest)
    assert outcomes == {name: (case.code, case.code) for name, case in CASES.items()}


async def test_both_doors_refuse_a_key_given_twice(tmp_path: Path) -> None:
    """A command or a body that repeats a key is ``invalid`` at both doors, and nothing is
    stored (review: the second ``text`` was, and ``{"role":"viewer","role":"owner"}`` made
    an owner)."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        client = await server.connect(sid, "alice")
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        client.replies["dk1"] = reply
        await client.send_raw('{"type":"message","text":"one","text":"two","id":"dk1"}')
        async with asyncio.timeout(10):
            socket_code = (await reply).get("code")
        body = b'{"text": "one", "text": "two"}'
        message = Case("editor", {}, "POST /messages", body, "invalid")
        rest_code = await _rest_call(server.base_url, await server.token(sid, "bob"), sid, message)
        member = await server.http.put(
            f"/api/v1/sessions/{sid}/members/carol",
            content=b'{"role": "viewer", "role": "owner"}',
            headers={"Content-Type": "application/json"},
        )
        transcript = (await server.http.get(f"/api/v1/sessions/{sid}/transcript")).json()
    assert (socket_code, rest_code, member.status_code) == ("invalid", "invalid", 422)
    assert member.json()["error"]["code"] == "invalid"
    assert [m for m in transcript["messages"] if m["kind"] == "message"] == []


async def test_both_doors_refuse_nan_and_infinity_as_malformed_json(tmp_path: Path) -> None:
    """Review I3: REST parsed ``NaN`` and ``Infinity`` (not JSON) where the socket refuses
    the frame: ``"id": NaN`` was judged a wrong type, a tool's ``"maximum": Infinity`` was
    stored and served as ``null``. Both doors now give one answer, malformed JSON."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        client = await server.connect(sid, "alice")
        await client.send_raw('{"type":"message","text":"x","id":"n1","n":NaN}')
        async with asyncio.timeout(10):  # unparsed: its error names no command
            while not client.unsolicited:
                await client.changed.wait()
                client.changed.clear()
        socket_answer = client.unsolicited[0]
        body = b'{"text": "x", "id": NaN}'
        message = Case("editor", {}, "POST /messages", body, "invalid")
        rest_code = await _rest_call(server.base_url, await server.token(sid, "bob"), sid, message)
        tool = await server.http.post(
            "/api/v1/tools",
            content=b'{"name": "t", "description": "d", "url": "https://example.com/t",'
            b' "parameters": {"type": "object", "properties": {"n": {"type": "number",'
            b' "maximum": Infinity, "minimum": -Infinity, "default": NaN}}}}',
            headers={"Content-Type": "application/json"},
        )
        tools = (await server.http.get("/api/v1/tools")).json()["tools"]
    assert socket_answer["code"] == rest_code == "invalid"
    assert tool.status_code == 422 and tool.json()["error"]["code"] == "invalid", tool.text
    assert tool.json()["error"]["details"][0]["at"] == "body"
    assert "Invalid JSON" in tool.json()["error"]["message"] and tools == []
