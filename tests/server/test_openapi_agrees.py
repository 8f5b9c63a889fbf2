"""The OpenAPI document and the server agree on a sample of requests the review found they
judged apart (review I3): each request is judged by the served document (its body and path
parameters, with ``jsonschema``, not Parley's code) and sent; one the document allows is
not refused as invalid (422) or too large (413), and one it forbids is refused (4xx)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from parley.server.http.cursor import make_cursor
from tests.conftest import make_settings, serve_in_process, sqlite_url

SESSION = "/api/v1/sessions/{session_id}"


def _allows(
    document: dict[str, Any],
    method: str,
    template: str,
    path: str,
    body: Any,
    query: dict[str, str] | None = None,
) -> bool:
    """Whether ``document`` allows ``body`` (None: no body) and ``query`` to ``path`` of
    ``template``."""
    operation = document["paths"][template][method.lower()]
    names = re.findall(r"{(\w+)}", template)
    pattern = re.escape(template)
    for name in names:
        pattern = pattern.replace(re.escape(f"{{{name}}}"), "([^/]+)")
    values = re.fullmatch(pattern, path)
    assert values is not None, (template, path)
    schemas = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "path"}
    checks: list[tuple[Any, dict[str, Any]]] = list(
        zip(values.groups(), (schemas[n] for n in names), strict=True)
    )
    takes = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"}
    for name, value in (query or {}).items():
        if name not in takes:
            return False
        checks.append((value, takes[name]))
    request_body = operation.get("requestBody")
    if body is None:
        if request_body is not None and request_body["required"]:
            return False
    else:
        ref = request_body["content"]["application/json"]["schema"]
        checks.append((body, {**ref, "components": document["components"]}))
    for value, schema in checks:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return False
    return True


async def test_the_document_allows_what_the_server_takes_and_forbids_what_it_refuses(
    tmp_path: Path,
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", webhook_allow_private=True)
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        hook = await http.post(
            "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["run.failed"]}
        )
        webhook = f"/api/v1/webhooks/{hook.json()['id']}"
        webhooks = ("/api/v1/webhooks/{webhook_id}", webhook)
        threads = (f"{SESSION}/threads", f"{at}/threads")
        documents = (f"{SESSION}/documents", f"{at}/documents")
        facts = f"{SESSION}/facts/{{key}}"
        roles = "/api/v1/roles/{name}"
        document = {"title": "d", "text": "x"}
        cases: list[tuple[str, str, str, Any]] = [
            ("PATCH", *webhooks, {"events": None}),
            ("PATCH", *webhooks, {"status": None}),
            ("PATCH", *webhooks, {"sessions": None}),
            ("PATCH", *webhooks, None),
            ("POST", *threads, {"title": "t" * 201, "as_user": "alice"}),
            ("POST", *threads, {"title": "t" * 200, "as_user": "alice"}),
            ("POST", *documents, {**document, "readers": {}}),
            ("POST", *documents, {**document, "readers": {"users": []}}),
            ("POST", *documents, {**document, "readers": {"users": [], "roles": ["editor"]}}),
            ("POST", "/api/v1/sessions", "/api/v1/sessions", None),
            ("PATCH", SESSION, at, None),
            ("DELETE", f"{SESSION}/pins/{{entry_id}}", f"{at}/pins/{'e' * 65}", None),
            ("PUT", facts, f"{at}/facts/a%20b", {"value": "v"}),
            ("PUT", facts, f"{at}/facts/{'k' * 101}", {"value": "v"}),
            ("PUT", facts, f"{at}/facts/{'k' * 100}", {"value": "v"}),
            ("PUT", f"{SESSION}/members/{{user_id}}", f"{at}/members/a%20b", {"role": "viewer"}),
            ("PUT", roles, "/api/v1/roles/Auditor", {"capabilities": ["prompt"]}),
            ("PUT", roles, "/api/v1/roles/auditor", {"capabilities": ["prompt"]}),
            # Review RP-1: a NUL, which no column stores, refused and not said so.
            ("POST", "/api/v1/sessions", "/api/v1/sessions", {"title": "a\u0000b"}),
            ("POST", *documents, {**document, "readers": {"users": ["a\u0000b"]}}),
        ]
        disagree = []
        for method, template, path, body in cases:
            allowed = _allows(served, method, template, path.replace("%20", " "), body)
            sent = {} if body is None else {"json": body}
            answer = await http.request(method, path, **sent)
            refused = answer.status_code in (413, 422) if allowed else answer.status_code >= 400
            if (allowed and refused) or (not allowed and not refused):
                disagree.append((method, path[-40:], body, allowed, answer.status_code))
        assert disagree == [], disagree
        nul = await http.post("/api/v1/sessions", json={"title": "a\u0000b"})
        assert nul.json()["error"]["message"] == "body: title contains a NUL character"


async def test_a_bound_left_to_a_setting_is_the_served_documents_maximum(
    tmp_path: Path,
) -> None:
    """Review RB-1: a token's lifetime and a document's text were refused past a setting's
    bound that the document did not state; RC-1: the description named the setting, but a
    client built from the document still sent past it. The served document gives this
    server's setting as the bound (and the description names the setting)."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "data", token_ttl_max_s=7200, max_document_chars=50
    )
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        cases = [
            ("TokenCreate", "ttl_seconds", "PARLEY_TOKEN_TTL_MAX_S", f"{SESSION}/tokens",
             f"{at}/tokens", lambda n: {"user_id": "alice", "ttl_seconds": 7200 + n}),
            ("InviteCreate", "token_ttl_seconds", "PARLEY_TOKEN_TTL_MAX_S", f"{SESSION}/invites",
             f"{at}/invites", lambda n: {"user_id": "alice", "token_ttl_seconds": 7200 + n}),
            ("DocumentCreate", "text", "PARLEY_MAX_DOCUMENT_CHARS", f"{SESSION}/documents",
             f"{at}/documents",
             lambda n: {"title": "d", "text": "x" * (50 + n), "readers": {"users": ["alice"]}}),
        ]  # fmt: skip
        for schema, field, setting, template, path, body in cases:
            assert _allows(served, "POST", template, path, body(0)), schema
            assert (await http.post(path, json=body(0))).status_code == 201, schema
            assert not _allows(served, "POST", template, path, body(1)), schema
            answer = await http.post(path, json=body(1))
            assert answer.status_code in (413, 422), (schema, answer.status_code)
            described = served["components"]["schemas"][schema]["properties"][field]
            assert setting in described.get("description", ""), (schema, described)


async def test_a_facts_value_and_an_entrys_text_past_their_bound_are_refused_by_the_document(
    tmp_path: Path,
) -> None:
    """Review RJ-2: a fact's value past 2,000 characters, and a prompt's or a message's text
    past PARLEY_MAX_PROMPT_CHARS, were answered ``413 too_large`` though the served document
    gave them no ``maxLength``. It now gives each (the setting's value on this server), and
    one at the bound is taken."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_prompt_chars=50)
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        thread = await http.post(f"{at}/threads", json={"as_user": "alice"})
        in_thread = f"{at}/threads/{thread.json()['thread_id']}"
        cases = [
            ("PUT", f"{SESSION}/facts/{{key}}", f"{at}/facts/k", "value", 2000, {}),
            ("POST", f"{SESSION}/messages", f"{at}/messages", "text", 50, {"as_user": "alice"}),
            ("POST", f"{SESSION}/prompts", f"{at}/prompts", "text", 50, {"as_user": "alice"}),
            ("POST", f"{SESSION}/threads/{{thread_id}}/prompts", f"{in_thread}/prompts", "text",
             50, {"as_user": "alice"}),
        ]  # fmt: skip
        wrong = []
        for method, template, path, field, bound, rest in cases:
            for length in (bound, bound + 1):
                body = {field: "v" * length, **rest}
                allowed = _allows(served, method, template, path, body)
                answer = await http.request(method, path, json=body)
                code = answer.json()["error"]["code"] if answer.is_error else None
                if allowed != (length == bound) or (allowed and answer.is_error):
                    wrong.append((method, path[-20:], length, allowed, answer.status_code))
                if not allowed and (answer.status_code, code) != (413, "too_large"):
                    wrong.append((method, path[-20:], length, answer.status_code, code))
        assert wrong == [], wrong
        entry = served["components"]["schemas"]["EntryPost"]["properties"]["text"]
        assert "PARLEY_MAX_PROMPT_CHARS" in entry["description"], entry


async def test_the_document_refuses_each_form_the_review_found_it_admitted(
    tmp_path: Path,
) -> None:
    """Review RC-1 (schemathesis' positive-data check): a cursor not of this server's form
    (``0``), a URL holding a control character, a display name of one, a NUL in a query
    parameter, a malformed ``?last_event_id=`` on the JSON pages: each admitted by the
    document and refused for its form. Now the document refuses each, and what it admits
    beside each is taken."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", webhook_allow_private=True)
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        await server.new_session({})
        page = (await http.get("/api/v1/sessions", params={"limit": 1})).json()
        assert page["next_cursor"]
        hook = {"url": "http://127.0.0.1:9/", "events": ["run.failed"]}
        made = await http.post("/api/v1/webhooks", json=hook)
        deliveries = f"/api/v1/webhooks/{made.json()['id']}/deliveries"
        tool = {"name": "t1", "description": "d", "url": "http://127.0.0.1:9/"}
        alice = {"Authorization": f"Bearer {await server.token(sid, 'alice')}"}
        cases: list[tuple[str, str, str, Any, dict[str, str], dict[str, str]]] = [
            ("GET", "/api/v1/sessions", "/api/v1/sessions", None, {"cursor": "0"}, {}),
            ("GET", "/api/v1/sessions", "/api/v1/sessions", None,
             {"cursor": page["next_cursor"]}, {}),
            ("GET", "/api/v1/sessions", "/api/v1/sessions", None,
             {"cursor": make_cursor(0, "x")}, {}),
            ("GET", "/api/v1/me/sessions", "/api/v1/me/sessions", None, {"cursor": "0"}, alice),
            ("GET", f"{SESSION}/audit", f"{at}/audit", None, {"cursor": "0"}, {}),
            ("GET", f"{SESSION}/audit", f"{at}/audit", None, {"cursor": "WzAsMF0"}, {}),
            ("GET", "/api/v1/webhooks/{webhook_id}/deliveries", deliveries, None,
             {"cursor": "0"}, {}),
            ("POST", "/api/v1/webhooks", "/api/v1/webhooks", {**hook, "url": "http://a\u001ab/"},
             {}, {}),
            ("POST", "/api/v1/webhooks", "/api/v1/webhooks", {**hook, "url": "http://a\u007fb/"},
             {}, {}),
            ("POST", "/api/v1/tools", "/api/v1/tools", {**tool, "url": "http://a\u0003b/"}, {}, {}),
            ("POST", "/api/v1/tools", "/api/v1/tools", tool, {}, {}),
            ("PATCH", f"{SESSION}/me", f"{at}/me", {"display_name": "\x85"}, {}, alice),
            ("PATCH", f"{SESSION}/me", f"{at}/me", {"display_name": "a\u200bb"}, {}, alice),
            ("PATCH", f"{SESSION}/me", f"{at}/me", {"display_name": "Zo\u00eb \u2764\ufe0f"},
             {}, alice),
            ("GET", f"{SESSION}/context", f"{at}/context", None, {"user_id": "a\u0000b"}, {}),
            ("GET", f"{SESSION}/context", f"{at}/context", None, {"user_id": "alice"}, {}),
            ("GET", f"{SESSION}/events", f"{at}/events", None, {"last_event_id": "\u00d7"}, {}),
            ("GET", f"{SESSION}/events", f"{at}/events", None, {"last_event_id": "03"}, {}),
            ("GET", f"{SESSION}/events", f"{at}/events", None, {"last_event_id": "1"}, {}),
        ]  # fmt: skip
        disagree = []
        for method, template, path, body, query, headers in cases:
            allowed = _allows(served, method, template, path, body, query)
            sent = {} if body is None else {"json": body}
            answer = await http.request(method, path, params=query, headers=headers, **sent)
            refused = answer.status_code in (400, 413, 422)
            if allowed == refused:
                disagree.append((method, path[-30:], body, query, allowed, answer.status_code))
        assert disagree == [], disagree


def _ecma_matches(pattern: str, texts: list[str]) -> list[bool]:
    """Whether each of ``texts`` matches ``pattern`` read as JSON Schema 2020-12 reads it:
    an ECMA-262 regular expression (with the ``u`` flag), judged by Node's ``RegExp``."""
    script = (
        "const re = new RegExp(process.argv[1], 'u');"
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(texts.map((t) => re.test(t))));"
    )
    node = shutil.which("node") or "node"
    done = subprocess.run(
        [node, "-e", script, pattern],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
    )
    matched: list[bool] = json.loads(done.stdout)
    return matched


@pytest.mark.node
async def test_a_url_is_judged_by_the_pattern_the_document_gives_read_as_ecma_or_python(
    tmp_path: Path,
) -> None:
    """Review RJ-3: the server judged a webhook's or a tool's URL by ``[^\\s]`` (Python's or
    Rust's ``\\s``), the document published another class read by ECMA-262's ``\\s``:
    U+0085 was allowed by the document and refused, U+FEFF refused by it and taken, U+0080
    taken by both though a URL holds no control character. One explicit class now serves
    both, with no ``\\s``: each such character is refused by the document (read as ECMA-262
    and as Python) and by the server (``422 invalid``), on both routes; a letter is taken."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", webhook_allow_private=True)
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        schemas = served["components"]["schemas"]
        refused = ["\x80", "\x85", "\x9f", "\xa0", "\xad", "\u1680", "\u200b", "\u2028",
                   "\u202f", "\u3000", "\ufeff", "\U000e0001", "\x1c", "\x7f", " "]  # fmt: skip
        taken = ["e", "\xe9", "\u4e2d", "\U0001f600"]
        wrong = []
        for route, schema, body in (
            ("/api/v1/webhooks", "WebhookCreate", {"events": ["run.failed"]}),
            ("/api/v1/tools", "ToolCreate", {"name": "t", "description": "d"}),
        ):
            pattern = schemas[schema]["properties"]["url"]["pattern"]
            if "\\s" in pattern:
                wrong.append((schema, pattern))
            urls = [f"http://127.0.0.1:9/a{char}b" for char in refused + taken]
            for url, by_ecma in zip(urls, _ecma_matches(pattern, urls), strict=True):
                by_python = _allows(served, "POST", route, route, {**body, "url": url})
                answer = await http.post(route, json={**body, "url": url})
                code = answer.json()["error"]["code"] if answer.is_error else None
                if answer.status_code == 201:
                    location = answer.headers["location"]
                    await http.delete(location if schema == "WebhookCreate" else f"{route}/t")
                expected = url[-2] in taken
                got = (by_ecma, by_python, code is None)
                if got != (expected, expected, expected) or code not in (None, "invalid"):
                    wrong.append((schema, f"U+{ord(url[-2]):04X}", got, answer.status_code))
        assert wrong == [], wrong


@pytest.mark.node
async def test_a_display_name_refused_wherever_a_character_stands_is_refused_by_the_pattern(
    tmp_path: Path,
) -> None:
    """Review RJ-4: the display name's pattern covered the Basic Multilingual Plane only:
    private use of planes 15-16, noncharacters and format characters above it were refused
    ``422 invalid`` at the start, middle and end of a name, and admitted by the pattern.
    Now the pattern (read as ECMA-262 and as Python) refuses each, on both routes; an
    unassigned code point, which depends on the server's Unicode version, is said to be
    judged after it."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        alice = {"Authorization": f"Bearer {await server.token(sid, 'alice')}"}
        points = [0xF0000, 0x10FFFD, 0x10FFFF, 0x2FFFE, 0x1FFFF, 0x13430, 0x1BCA0, 0x1D173,
                  0xE0001, 0xE0020, 0xE0000, 0xE0FFF]  # fmt: skip
        names = [n for p in points for n in (f"{chr(p)}Name", f"Na{chr(p)}me", f"Name{chr(p)}")]
        names += ["Zo\u00eb \u2764\ufe0f", "\U0001f600 \U00020000", "a\U000e0100"]
        wrong = []
        for schema, method, template, path, headers in (
            ("MemberPut", "PUT", f"{SESSION}/members/{{user_id}}", f"{at}/members/bob", {}),
            ("MePatch", "PATCH", f"{SESSION}/me", f"{at}/me", alice),
        ):
            field = served["components"]["schemas"][schema]["properties"]["display_name"]
            form = next(f for f in field.get("anyOf", [field]) if "pattern" in f)
            if "unassigned code points are judged after" not in form["description"]:
                wrong.append((schema, form["description"]))
            for name, by_ecma in zip(names, _ecma_matches(form["pattern"], names), strict=True):
                body = {
                    "display_name": name,
                    **({"role": "viewer"} if schema == "MemberPut" else {}),
                }
                by_python = _allows(served, method, template, path, body)
                answer = await http.request(method, path, json=body, headers=headers)
                taken = answer.status_code not in (413, 422)
                if not by_ecma == by_python == taken:
                    wrong.append((schema, ascii(name), by_ecma, by_python, answer.status_code))
        assert wrong == [], wrong


# A body of the right form for each route under an id that takes one.
_BODIES = {"prompts": {"text": "hi"}, "share": {"text": "hi"}, "share-replies": {"turn_ids": ["t"]}}


async def test_a_path_id_past_its_bound_is_invalid_on_every_route_and_one_within_not_found(
    tmp_path: Path,
) -> None:
    """Review RL-2: the document gave a prompt's and a side-thread's id up to 200
    characters; cancel and the side-thread routes refused one past 64 (``invalid``), and
    the GETs answered the same id ``not_found``. Every path parameter has one form, the
    document's, on every route: one past its ``maxLength`` is ``422 invalid`` (judged
    before the handler), one at it that names nothing is ``404 not_found``."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"bob": "owner"})
        as_bob = {"Authorization": f"Bearer {await server.token(sid, 'bob')}"}
        checked, wrong = 0, []
        for template, item in served["paths"].items():
            for method, operation in item.items():
                params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
                for param in params:
                    bound, name = param["schema"]["maxLength"], param["name"]
                    others = {p["name"]: sid for p in params if p["name"] != name}
                    for length in (bound, bound + 1):
                        path = template.format(**others, **{name: "e" * length})
                        # The admin key's: a member's is let in (or not) first, and a
                        # stranger to the path's session, or to an admin route, is
                        # ``forbidden`` whatever its form (review FX36).
                        answer = await http.request(method, path)
                        code = answer.json()["error"]["code"] if answer.is_error else None
                        if length > bound and code != "invalid":
                            wrong.append((method, template, name, length, answer.status_code))
                    checked += 1
                    if name in ("prompt_id", "thread_id", "entry_id"):
                        # An entry's id as a socket takes it (docs/api.md).
                        if bound != 64:
                            wrong.append((method, template, name, "maxLength", bound))
                        path = template.format(**others, **{name: "e" * bound}).replace(
                            "{session_id}", sid
                        )
                        body = _BODIES.get(path.rsplit("/", 1)[1])
                        answer = await http.request(method, path, headers=as_bob, json=body)
                        if answer.status_code != 404:
                            wrong.append((method, template, name, bound, answer.text))
        streamed = await http.get(
            SESSION.format(session_id="e" * 201) + "/events",
            headers={"Accept": "text/event-stream"},
        )
        if streamed.status_code != 422:
            wrong.append(("stream", streamed.status_code))
        assert checked > 30 and wrong == [], "\n".join(map(str, wrong))


async def test_a_nul_in_a_path_parameter_is_refused_by_the_document_and_invalid_on_every_route(
    tmp_path: Path,
) -> None:
    """FX54: the document gave every query parameter a pattern that admits no NUL (the
    server refuses one ``422 invalid``: no database can be asked about it), and path
    parameters none, though the server refuses one there alike. Each path parameter's
    schema now refuses it, and every route answers it ``422 invalid``, the event stream
    too."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"bob": "owner"})
        checked, admitted, answered = 0, [], []
        for template, item in served["paths"].items():
            for method, operation in item.items():
                params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
                for param in params:
                    name = param["name"]
                    try:
                        jsonschema.validate("a\u0000b", param["schema"])
                        admitted.append((method, template, name))
                    except jsonschema.ValidationError:
                        pass
                    others = {p["name"]: sid for p in params if p["name"] != name}
                    answer = await http.request(
                        method, template.format(**others, **{name: "a%00b"})
                    )
                    code = answer.json()["error"]["code"] if answer.is_error else None
                    if (answer.status_code, code) != (422, "invalid"):
                        answered.append((method, template, name, answer.status_code, code))
                    checked += 1
        streamed = await http.get(
            SESSION.format(session_id="a%00b") + "/events",
            headers={"Accept": "text/event-stream"},
        )
        assert (streamed.status_code, streamed.json()["error"]["code"]) == (422, "invalid")
        assert checked > 30 and admitted == [] and answered == [], (admitted, answered)
