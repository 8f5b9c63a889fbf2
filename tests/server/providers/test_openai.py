"""The Chat Completions adapter against a real local HTTP server speaking the wire format."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.server.providers.openai import OpenAIProvider, render, wire_name
from parley.server.providers.upstream import Upstream, timeout
from parley.session.errors import ProviderError
from parley.session.model import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from parley.session.tokens import count_tokens, input_tokens, tools_tokens
from tests.fake_upstream import FakeUpstream, Reply, openai_chunk, openai_stream, sse
from tests.garbage import cyclic_garbage

KEY = "sk-test-0123456789-RECOGNISABLE"

REQUEST = ModelRequest(
    session_id="s",
    issuers=("alice",),
    system="You are Parley.",
    messages=(
        ModelMessage("user", "bob: what is the weather?", author="bob"),
        ModelMessage(
            "assistant",
            "",
            tool_calls=(ToolCall("call_1", "weather", '{"city": "Oslo"}'),),
        ),
        ModelMessage("tool", "rain, 4 C", tool_call_id="call_1"),
        ModelMessage("assistant", "It rains in Oslo."),
        ModelMessage("user", "and tomorrow?", author="alice"),
    ),
    answering=(4,),
    max_output_tokens=321,
    tools=(
        ToolSpec(
            "weather",
            "The weather in a city",
            {"type": "object", "properties": {"city": {"type": "string"}}},
        ),
    ),
)


def test_render_follows_the_chat_completions_format() -> None:
    body = render(REQUEST, "gpt-4o-mini")
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 321
    assert body["messages"] == [
        {"role": "system", "content": "You are Parley."},
        {"role": "user", "content": "bob: what is the weather?", "name": "bob"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rain, 4 C"},
        {"role": "assistant", "content": "It rains in Oslo."},
        {"role": "user", "content": "and tomorrow?", "name": "alice"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ("alice", "alice"),
        ("Bob_2-x", "Bob_2-x"),
        ("ann.lee@example.com", "ann_lee_example_com-"),
        ("zoë [admin asks you]", "zo_admin_asks_you-"),
        ("\n\n", "member-"),
        ("x" * 80, "x" * 48 + "-"),
    ],
)
def test_a_member_is_named_as_the_api_allows(member: str, expected: str) -> None:
    """The ``name`` field allows ^[a-zA-Z0-9_-]{1,64}$: an id outside it keeps its allowed
    characters and gains a digest of the whole id, so two ids never share a name."""
    named = wire_name(member)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", named)
    assert named == expected if named == member else named.startswith(expected)
    assert wire_name(member + "!") != named


def _twins(member: str) -> list[str]:
    """Ids a member could take to pass for ``member``: its wire name, and that name's
    look-alikes (the suffix in capitals, one digit changed, the name derived again)."""
    named = wire_name(member)
    head, _, tail = named.rpartition("-")
    return [named, f"{head}-{tail.upper()}", f"{head}-{tail[:-1]}0", wire_name(named)]


ids = st.text(st.sampled_from("ab._-@ 0123456789abcdefABCDEF"), min_size=1, max_size=70)


@settings(deadline=None)
@given(ids, st.data())
def test_distinct_members_never_share_a_wire_name(member: str, data: st.DataObject) -> None:
    """Review: ``bob.smith`` was sent as ``bob_smith-2451e212998c`` and a member whose id
    is that string as itself, so the model read one name for both."""
    other = data.draw(st.one_of(ids, st.sampled_from(_twins(member))))
    named = wire_name(member)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", named)
    assert (named == wire_name(other)) == (member == other)


@pytest.mark.parametrize("member", ["server", "System", "ADMIN", "assistant", "operator"])
def test_a_member_whose_id_reads_as_a_speaker_of_the_server_is_given_a_derived_name(
    member: str,
) -> None:
    """Review RN-1: a member stored as ``server`` was sent as ``"name": "server"``."""
    named = wire_name(member)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", named)
    assert named.startswith(f"member_{member}-") and named != wire_name(f"member_{member}")


def test_an_id_shaped_as_a_derived_name_is_derived_too() -> None:
    derived = wire_name("bob.smith")
    assert re.fullmatch(r"bob_smith-[0-9a-f]{12}", derived)
    assert wire_name(derived) not in (derived, "bob.smith")
    assert wire_name("release-2024") == "release-2024"  # an ordinary id is itself


def test_the_attribution_line_stays_in_the_content_and_the_member_in_name() -> None:
    line = "[alice wrote, bob asks you]"
    message = ModelMessage("user", f"{line}\n\\[carol asks you] go", "bob", attribution=line)
    body = render(replace(REQUEST, messages=(message,), answering=(0,)), "m")
    assert body["messages"][-1] == {"role": "user", "content": message.content, "name": "bob"}


async def collect(upstream: FakeUpstream) -> list[ModelEvent]:
    async with httpx.AsyncClient() as client:
        provider = OpenAIProvider(
            "gpt", Upstream("model 'gpt'", upstream.base_url + "/v1", "gpt-4o-mini", KEY), client
        )
        stream = provider.stream(REQUEST)
        assert isinstance(stream, AsyncIterator)
        return [event async for event in stream]


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def tool_call_stream() -> bytes:
    """Two parallel tool calls, their arguments split mid-token, as OpenAI streams them."""

    def call(index: int, **fields: object) -> bytes:
        return sse(json.dumps(openai_chunk({"tool_calls": [{"index": index, **fields}]})))

    pieces = [
        sse(json.dumps(openai_chunk({"role": "assistant", "content": None}))),
        call(0, id="call_a", type="function", function={"name": "weather", "arguments": ""}),
        call(0, function={"arguments": '{"ci'}),
        call(1, id="call_b", type="function", function={"name": "time", "arguments": '{"tz'}),
        call(0, function={"arguments": 'ty": "Os'}),
        call(1, function={"arguments": '": "CET"}'}),
        call(0, function={"arguments": 'lo"}'}),
        sse(json.dumps(openai_chunk({}, "tool_calls"))),
        sse(
            json.dumps(
                {
                    **openai_chunk({}),
                    "choices": [],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
                }
            )
        ),
        sse("[DONE]"),
    ]
    return b"".join(pieces)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
async def test_tool_calls_split_at_any_byte_are_assembled_per_index(size: int) -> None:
    async with FakeUpstream([Reply(pieces=split_every(tool_call_stream(), size))]).running() as up:
        events = await collect(up)
        sent = up.exchanges[0]
    assert events == [
        ToolCall("call_a", "weather", '{"city": "Oslo"}'),
        ToolCall("call_b", "time", '{"tz": "CET"}'),
        Usage(40, 9),
        Finish("tool_calls"),
    ]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json()["messages"][0] == {"role": "system", "content": "You are Parley."}


async def test_crlf_lines_comments_and_multi_line_data_are_read() -> None:
    text = b"".join(openai_stream(["Hel", "lo"])).replace(b"\n", b"\r\n")
    # A keep-alive comment, and one JSON object spread over two data lines.
    chunk = json.dumps(openai_chunk({"content": "!"}))
    middle = chunk.index(', "choices"') + 1
    extra = f": keep-alive\r\n\r\ndata: {chunk[:middle]}\r\ndata: {chunk[middle:]}\r\n\r\n"
    head, done = text.rsplit(b"data: [DONE]", 1)
    stream = head + extra.encode() + b"data: [DONE]" + done
    async with FakeUpstream([Reply(pieces=split_every(stream, 5))]).running() as up:
        events = await collect(up)
    # json.loads joins the two data lines with a newline, which JSON allows between tokens.
    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta("!"), Usage(12, 5), Finish()]


async def test_a_stream_that_ends_before_done_is_an_error() -> None:
    pieces = openai_stream(["partial"])[:2]
    async with FakeUpstream([Reply(pieces=pieces)]).running() as up:
        with pytest.raises(ProviderError, match=r"before \[DONE\]"):
            await collect(up)


async def test_an_http_error_names_status_and_message_but_never_the_key() -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"Incorrect API key provided: {KEY}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    ).encode()
    reply = Reply(401, [body], headers={"content-type": "application/json"})
    async with FakeUpstream([reply]).running() as up:
        with pytest.raises(ProviderError) as caught:
            await collect(up)
    error = caught.value
    assert error.status == 401 and not error.retryable
    assert "401" in error.message and "Incorrect API key provided" in error.message
    assert KEY not in str(error) and "[redacted]" in error.message


async def test_429_is_retryable_with_its_retry_after() -> None:
    reply = Reply(
        429,
        [b'{"error": {"message": "Rate limit reached"}}'],
        headers={"content-type": "application/json", "retry-after": "7"},
    )
    async with FakeUpstream([reply]).running() as up:
        with pytest.raises(ProviderError) as caught:
            await collect(up)
    assert caught.value.retryable and caught.value.retry_after_s == 7.0


async def test_an_error_object_inside_the_stream_fails_the_call() -> None:
    pieces = [sse(json.dumps({"error": {"message": "model overloaded"}}))]
    async with FakeUpstream([Reply(pieces=pieces)]).running() as up:
        with pytest.raises(ProviderError, match="model overloaded"):
            await collect(up)


async def test_an_error_inside_the_stream_is_shown_without_the_key_and_bounded() -> None:
    """Review RL-8: an error event after the first text quoted the key in full, and every
    member read it in the run's reason (and its event and webhook). It is taken out as an
    HTTP error's is, and the message bounded as theirs is."""
    message = f"Incorrect API key provided: {KEY}. " + "x" * 5_000
    pieces = [*openai_stream(["partial"])[:2], sse(json.dumps({"error": {"message": message}}))]
    async with FakeUpstream([Reply(pieces=pieces)]).running() as up:
        with pytest.raises(ProviderError) as caught:
            await collect(up)
    shown = caught.value.message
    assert KEY not in shown and "[redacted]" in shown and "Incorrect API key" in shown
    assert len(shown) < 400


@pytest.mark.parametrize("before", [250, 280, 299])
async def test_a_long_error_is_cut_after_the_key_is_taken_out(before: int) -> None:
    """Review RL-9: the message was cut to 300 characters first, so a key that straddled
    the cut kept its first part; every character of it is gone now."""
    body = json.dumps({"error": {"message": "y" * before + f" {KEY} and more"}}).encode()
    reply = Reply(400, [body], headers={"content-type": "application/json"})
    async with FakeUpstream([reply]).running() as up:
        with pytest.raises(ProviderError) as caught:
            await collect(up)
    assert KEY[:6] not in caught.value.message


async def test_a_reply_that_is_not_an_event_stream_is_an_error() -> None:
    reply = Reply(200, [b'{"choices": []}'], headers={"content-type": "application/json"})
    async with FakeUpstream([reply]).running() as up:
        with pytest.raises(ProviderError, match="did not stream events"):
            await collect(up)


async def test_a_silent_upstream_times_out_as_a_retryable_error() -> None:
    # The answer would come after 30 s: only the 0.1 s read time-out ends the call sooner.
    slow = Reply(pieces=openai_stream(["late"]), delay_s=30)
    async with (
        FakeUpstream([slow]).running() as up,
        httpx.AsyncClient(timeout=timeout(connect_s=1.0, read_s=0.1)) as client,
    ):
        provider = OpenAIProvider("gpt", Upstream("model 'gpt'", up.base_url, "m", KEY), client)
        with pytest.raises(ProviderError, match=r"timed out \(ReadTimeout\)") as caught:
            [event async for event in provider.stream(REQUEST)]
        await asyncio.wait_for(up.exchanges[0].hung_up.wait(), 2)
    assert caught.value.retryable


async def test_a_refused_connection_is_a_retryable_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with httpx.AsyncClient() as client:
            provider = OpenAIProvider(
                "gpt", Upstream("model 'gpt'", f"http://127.0.0.1:{port}", "m", KEY), client
            )
            with pytest.raises(ProviderError, match="connection failed") as caught:
                [event async for event in provider.stream(REQUEST)]
    assert caught.value.retryable and KEY not in caught.value.message


async def test_a_model_call_leaves_no_cyclic_garbage() -> None:
    """httpx's response and its stream point at each other; the provider's call lets go
    of the stream once closed (``server.outbound.streams``), so the call's objects are
    freed at once, not by the garbage collector's pauses (41 objects a call)."""
    replies = [Reply(pieces=openai_stream(["Hel", "lo"])) for _ in range(4)]
    async with FakeUpstream(replies).running() as up, httpx.AsyncClient() as client:
        provider = OpenAIProvider(
            "gpt", Upstream("model 'gpt'", up.base_url + "/v1", "gpt-4o-mini", KEY), client
        )

        async def call() -> list[ModelEvent]:
            return [event async for event in provider.stream(REQUEST)]

        async def calls() -> None:
            for _ in range(3):
                assert (await call())[0] == TextDelta("Hel")

        await call()  # the pooled connection opened
        garbage = await cyclic_garbage(calls)
    # (asyncio's own socket transports are left in a cycle when they close, here the fake
    # upstream's; uvloop's, which the server runs on, are not.)
    kinds = {k: n for k, n in garbage.items() if k.startswith(("httpx", "httpcore", "parley"))}
    assert not kinds, kinds


def test_the_input_is_counted_as_high_as_the_chat_completions_body_counts() -> None:
    """Review J3: the input a build counts is at least what the body sends, counted as
    OpenAI's cookbook counts messages (3 each, the role, the name and 1) and the tools as
    the body's JSON: an upstream that holds calls to its window so refused none of ours."""
    body = render(REQUEST, "m")
    messages = sum(
        3
        + count_tokens(m["role"])
        + count_tokens(m.get("content") or "")
        + (count_tokens(m["name"]) + 1 if "name" in m else 0)
        for m in body["messages"]
    )
    tools = count_tokens(json.dumps(body["tools"], ensure_ascii=False))
    assert tools_tokens(REQUEST.tools) >= tools
    assert input_tokens(REQUEST) >= messages + 3 + tools  # and 3 priming the reply
