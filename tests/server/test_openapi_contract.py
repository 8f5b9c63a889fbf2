"""The admin API against its own OpenAPI document, with schemathesis on a live server.

Every operation is called with generated requests, both ones the document allows
(positive) and ones it forbids (negative), authenticated with the admin key. Every response
must be no 5xx, have a documented status code and content type, and match the documented
body schema. In about half of the positive cases the ids in the path, the query and the body
(session, member, fact key, entry) are swapped for real ones, so the success paths are checked
too (a transcript with a prompt, a reply and a message, a fact, a pin, a context preview, a
prompt sent as a member, a running one cancelled), and the test insists that every operation
answered with a 2xx at least once. Deletions run last.

Schemathesis calls are synchronous (``requests``), so they run in a worker thread while the
server keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from parley.server.http.rest import NO_NUL
from tests.conftest import ADMIN_KEY, RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.yclient import all_replies_settled

MAX_EXAMPLES = int(os.environ.get("PARLEY_CONTRACT_EXAMPLES", "20"))
# Requests the document forbids: each must be refused with a documented 4xx. Generating
# them costs three times a valid one (mostly strings past a parameter's maxLength of 200,
# drawn character by character), and they reach only the validation, which every
# operation shares: fewer of them per operation.
NEGATIVE_EXAMPLES = int(os.environ.get("PARLEY_CONTRACT_NEGATIVE_EXAMPLES", "6"))
SEED = int(os.environ.get("PARLEY_CONTRACT_SEED", "20240611"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The operations are dealt over this many tests, each with its own server: they run in
# parallel, and none holds a worker for minutes.
PARTS = 6
# Routes that answer for the member of a client token (the admin key is refused there):
# called with bob's token instead.
MEMBER_ROUTES = {"/api/v1/me/sessions", "/api/v1/sessions/{session_id}/me"}
MEMBER_TOKEN = "_member_token"


def _script(sent: Sent) -> Answer:
    if "search" in sent.asked_text():
        return [call("search_documents", {"query": "vault"})]
    return ["fine"]


@pytest.fixture
async def contract_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server whose model searches documents when asked, so restricted items exist."""
    # Generated webhook URLs are taken as they are: no name is looked up in DNS.
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", webhook_allow_private=True)
    model = FakeModel(_script)
    model.gate = asyncio.Event()  # a "[wait]" prompt runs until it is cancelled
    async with serve_in_process(settings, model) as server:
        try:
            yield server
        finally:
            model.gate.set()


@pytest.mark.parametrize("part", range(PARTS))
async def test_every_operation_honours_its_documented_contract(
    contract_server: RunningServer, part: int
) -> None:
    """Part ``part`` of the operations (each part on a server of its own, so the parts
    run in parallel); together the parts call every operation."""
    server = contract_server
    real = await _seed(server)
    document = (await server.http.get("/api/v1/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(_sendable(document))
    # Schemathesis runs in a worker thread beside the server's loop: with the interpreter's
    # default 5 ms switch interval each request waited for the GIL on both sides.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        statuses = await asyncio.to_thread(_exercise, schema, document, server.base_url, real, part)
    finally:
        sys.setswitchinterval(interval)
    print(
        f"\ncontract: schemathesis {schemathesis.__version__}, "
        f"{sum(c.total() for c in statuses.values())} calls, statuses "
        + ", ".join(f"{op} {dict(sorted(c.items()))}" for op, c in sorted(statuses.items()))
    )
    assert (await server.http.get("/healthz")).status_code == 200
    unexercised = sorted(op for op, c in statuses.items() if not any(200 <= s < 300 for s in c))
    assert not unexercised, f"no success path reached for {unexercised}"


async def _seed(server: RunningServer) -> dict[str, Any]:
    """A session with members and a settled prompt and reply, for the success paths."""
    hook = await server.http.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["session.created"]}
    )
    assert hook.status_code == 201, hook.text
    sid = await server.new_session({"alice": "owner", "bob": "viewer"}, title="contract")
    alice = await server.connect(sid, "alice")
    document = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={
            "title": "Vault",
            "text": "The vault opens at nine.",
            "readers": {"users": ["alice"]},
        },
    )
    assert document.status_code == 201, document.text
    # Before anything restricted: a side-thread anchored here may share with everyone.
    before = await alice.command({"type": "message", "id": "m0", "text": "good morning"})
    ack = await alice.command({"type": "prompt", "id": "p", "text": "search the vault"})
    assert ack["type"] == "ack", ack
    await alice.command({"type": "message", "id": "m", "text": "and a message"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in alice.entries() if e["kind"] == "reply")
    restricted = await server.http.get(f"/api/v1/sessions/{sid}/entries/{reply['id']}/private")
    assert restricted.status_code == 200, restricted.text
    tool = await server.http.post(
        "/api/v1/tools",
        json={"name": "support", "description": "a tool", "url": "http://127.0.0.1:9/"},
    )
    assert tool.status_code == 201, tool.text
    fact = await server.http.put(f"/api/v1/sessions/{sid}/facts/account", json={"value": "7731"})
    assert fact.status_code == 200, fact.text
    pin = await server.http.post(f"/api/v1/sessions/{sid}/pins", json={"entry_id": reply["id"]})
    assert pin.status_code == 201, pin.text
    role = await server.http.put("/api/v1/roles/support", json={"capabilities": ["prompt"]})
    assert role.status_code == 200, role.text
    token = await server.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})
    assert token.status_code == 201, token.text
    # A side-thread of alice's with an answered turn, for the thread routes.
    # Anchored before the restricted reply, so what it shares may reach every member.
    opened = await alice.command(
        {"type": "thread_open", "id": "t", "title": "mine", "anchor": before["message_id"]}
    )
    thread_id = opened["thread_id"]
    asked = {"type": "thread_prompt", "id": "tp", "thread_id": thread_id, "text": "hello"}
    assert (await alice.command(asked))["type"] == "ack"
    await alice.wait_until(
        lambda c: any(
            f.get("type") == "thread"
            and len(f["thread"]["turns"]) == 2
            and not f["thread"]["running"]
            for f in c.unsolicited
        )
    )
    thread_reply = next(
        f["thread"]["turns"][1]["id"]
        for f in alice.unsolicited
        if f.get("type") == "thread" and len(f["thread"]["turns"]) == 2
    )
    # A prompt that runs until it is cancelled: the one the cancel route finds.
    held = await alice.command({"type": "prompt", "id": "h", "text": "[wait] hold on"})
    running = {"id": held["prompt_id"], "status": "running"}
    await alice.wait_until(lambda c: any(running.items() <= e.items() for e in c.entries()))
    # An invite that outlives the generated exchanges, and one for the revoke route.
    invite = await server.http.post(
        f"/api/v1/sessions/{sid}/invites", json={"user_id": "bob", "max_uses": 100}
    )
    assert invite.status_code == 201, invite.text
    listed = await server.http.get(f"/api/v1/webhooks/{hook.json()['id']}/deliveries")
    (delivery,) = listed.json()["deliveries"]
    return {
        "prompt_id": held["prompt_id"],
        "as_user": "alice",
        "webhook_id": hook.json()["id"],
        "delivery_id": str(delivery["id"]),
        "session_id": sid,
        "user_id": "alice",
        "key": "account",
        "entry_id": reply["id"],
        "document_id": document.json()["id"],
        "role": "editor",
        "name": "support",
        "jti": token.json()["jti"],
        "invite": invite.json()["secret"],
        "invite_id": invite.json()["id"],
        MEMBER_TOKEN: token.json()["token"],
        "thread_id": thread_id,
        "turn_ids": [thread_reply],
    }


def _exercise(
    schema: BaseSchema, document: dict[str, Any], base_url: str, real: dict[str, Any], part: int
) -> dict[str, Counter[int]]:
    statuses: dict[str, Counter[int]] = {}
    with requests.Session() as http:
        operations: list[APIOperation[Any, Any, Any, Any]] = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise AssertionError(f"an operation schemathesis cannot use: {result.err()}")
            operations.append(result.ok())
        operations.sort(key=lambda op: op.label)
        operations = operations[part::PARTS]
        assert operations, f"part {part} has no operation"
        # Deletions last (members before sessions), so the other operations find the seed.
        operations.sort(key=lambda op: (op.method.upper() == "DELETE", -len(op.path)))
        for operation in operations:
            declared = document["paths"][operation.path][operation.method.lower()]
            modes = [GenerationMode.POSITIVE]
            if "parameters" in declared or "requestBody" in declared:
                modes.append(GenerationMode.NEGATIVE)  # nothing to get wrong otherwise
            seen = statuses.setdefault(operation.label, Counter())
            sends_as = "as_user" in _body_properties(document, declared)
            for mode in modes:
                _run_operation(operation, mode, http, base_url, real, seen, sends_as)
    return statuses


def _run_operation(
    operation: APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    http: requests.Session,
    base_url: str,
    real: dict[str, Any],
    seen: Counter[int],
    sends_as: bool = False,
) -> None:
    member = operation.path in MEMBER_ROUTES
    headers = {"Authorization": f"Bearer {real[MEMBER_TOKEN]}"} if member else AUTH

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES if mode is GenerationMode.POSITIVE else NEGATIVE_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(
        case=operation.as_strategy(generation_mode=mode, headers=headers), use_real=st.booleans()
    )
    def check(case: Case[Any], use_real: bool) -> None:
        if use_real and mode is GenerationMode.POSITIVE:
            if sends_as and not isinstance(case.body, dict):
                # A body that may be left out (a member's) is the admin key's only with
                # ``as_user``: the real one, to reach the success path.
                case.body, case.media_type = {}, "application/json"
            _point_at_real_resources(case, real)
            if sends_as and isinstance(case.body, dict):
                case.body.setdefault("as_user", real["as_user"])
        response = case.call(base_url=base_url, session=http, headers=headers, timeout=20)
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


def _sendable(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a path parameter's pattern of "no NUL" left out: the only values
    it forbids hold a NUL, which schemathesis never puts in a path, so its requests that
    break the document could not be drawn at all (``Unsatisfiable``). What a NUL in a path
    gets, and that the document forbids it, is ``test_openapi_agrees``'s."""
    copied: dict[str, Any] = copy.deepcopy(document)
    for item in copied["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["schema"].get("pattern") == NO_NUL:
                    del param["schema"]["pattern"]
    return copied


def _body_properties(document: dict[str, Any], declared: dict[str, Any]) -> set[str]:
    """The fields of an operation's request body, as the document names them."""
    if "requestBody" not in declared:
        return set()
    ref = declared["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return set(model.get("properties", {}))


def _point_at_real_resources(case: Case[Any], real: dict[str, Any]) -> None:
    for where in (case.path_parameters, case.query, case.body):
        if isinstance(where, dict):
            for name in real.keys() & where.keys():
                where[name] = real[name]
