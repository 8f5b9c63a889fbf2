"""The offline model: a deterministic reply, streamed word by word, stoppable mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any, cast

from parley.server.providers.offline import (
    EXCERPT_CHARS,
    SUMMARY_LINE_TOKENS,
    OfflineProvider,
    compose_reply,
    compose_summary,
    count_tokens,
)
from parley.session import tokens
from parley.session.model import Finish, ModelEvent, ModelMessage, ModelRequest, TextDelta, Usage


def request(*messages: ModelMessage, answering: tuple[int, ...] | None = None) -> ModelRequest:
    """A request answering the last message, or the messages at ``answering``."""
    answering = (len(messages) - 1,) if answering is None else answering
    issuers = tuple(dict.fromkeys(str(messages[i].author) for i in answering))
    return ModelRequest(
        session_id="s1",
        issuers=issuers,
        system="Be brief and kind.",
        messages=tuple(messages),
        answering=answering,
    )


HISTORY = (
    ModelMessage("user", "We ship Friday.", "bob"),
    ModelMessage("user", "Summarise please", "alice"),
    ModelMessage("assistant", "Shipping Friday."),
    ModelMessage("user", "And   no\n deploys.", "bob"),
)
PROMPT = ModelMessage("user", "What   did we\tdecide?", "carol")


def stream(provider: OfflineProvider, req: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
    return cast(AsyncGenerator[ModelEvent, None], provider.stream(req))


def test_reply_names_the_issuer_and_counts_what_it_was_given() -> None:
    reply = compose_reply(request(*HISTORY, PROMPT))
    assert reply == (
        "Hello carol. carol asked: \u201cWhat did we decide?\u201d. "
        "I was given 4 earlier messages (3 from members: alice, bob; 1 replies of mine) "
        "plus your prompt. I am Parley's offline model, so this reply is deterministic."
    )


def test_a_coalesced_reply_names_every_issuer_and_question() -> None:
    also = ModelMessage("user", "Any risks?", "alice")
    reply = compose_reply(request(*HISTORY, PROMPT, also, answering=(4, 5)))
    assert reply == (
        "Hello carol and alice. carol asked: \u201cWhat did we decide?\u201d; "
        "alice asked: \u201cAny risks?\u201d. "
        "I was given 4 earlier messages (3 from members: alice, bob; 1 replies of mine) "
        "plus 2 prompts. I am Parley's offline model, so this reply is deterministic."
    )


def test_reply_for_a_first_prompt() -> None:
    reply = compose_reply(request(ModelMessage("user", "hi", "dave")))
    assert reply.startswith("Hello dave. dave asked: \u201chi\u201d.")
    assert "0 earlier messages (0 from members: nobody yet; 0 replies of mine)" in reply


def test_long_prompts_are_cut_to_an_excerpt() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    reply = compose_reply(request(ModelMessage("user", words, "alice")))
    quoted = reply.split("\u201c")[1].split("\u201d")[0]
    assert len(quoted) == EXCERPT_CHARS
    assert quoted.endswith("…")
    assert words.startswith(quoted[:-1])


def test_reply_is_deterministic() -> None:
    assert compose_reply(request(*HISTORY, PROMPT)) == compose_reply(request(*HISTORY, PROMPT))
    assert compose_reply(request(*HISTORY, PROMPT)) != compose_reply(request(PROMPT))


def test_count_tokens_counts_words() -> None:
    assert count_tokens("") == 0
    assert count_tokens("  one two\n three  ") == 3


async def collect(req: ModelRequest) -> list[ModelEvent]:
    return [event async for event in OfflineProvider(token_delay_s=0).stream(req)]


async def test_stream_yields_the_reply_then_usage_then_finish() -> None:
    req = request(*HISTORY, PROMPT)
    events = await collect(req)
    *deltas, usage, finish = events
    assert all(isinstance(d, TextDelta) for d in deltas)
    text = "".join(cast(TextDelta, d).text for d in deltas)
    assert text == compose_reply(req)
    assert len(deltas) == len(text.split())  # one token per word
    chars_in = sum(len(m.content) for m in req.messages) + len(req.system)
    assert usage == Usage(input_tokens=chars_in // 4 + 1, output_tokens=len(deltas))
    assert finish == Finish("stop")


async def test_stream_is_deterministic() -> None:
    req = request(*HISTORY, PROMPT)
    assert await collect(req) == await collect(req)


async def test_aclose_mid_stream_stops_it() -> None:
    agen = stream(OfflineProvider(token_delay_s=0), request(*HISTORY, PROMPT))
    first = await anext(agen)
    second = await anext(agen)
    assert isinstance(first, TextDelta) and isinstance(second, TextDelta)
    await agen.aclose()
    events: list[Any] = [event async for event in agen]
    assert events == []


async def test_cancelling_a_consumer_while_it_waits_stops_the_stream() -> None:
    agen = stream(OfflineProvider(token_delay_s=10), request(PROMPT))
    task = asyncio.ensure_future(anext(agen))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await agen.aclose()
    assert [event async for event in agen] == []


def test_the_offline_summary_is_held_to_its_output_limit_in_the_servers_tokens() -> None:
    """Review RV38-F1: each turn's first 24 words, trimmed by lines while more than one was
    left, made a summary of 15,443 tokens of one 25,000-character word (its limit 768)."""
    turns = [f"[alice wrote, message #{n}]\nm{n} " + "y" * 25_000 for n in range(1, 31)]
    turns.append("[bob wrote, message #31]\nthe deploy moved to Friday, ticket PRJ-7")
    sent = ModelRequest(
        session_id="s1",
        issuers=(),
        system="Summarise.",
        messages=(ModelMessage("user", "New messages:\n" + "\n".join(turns)),),
        answering=(0,),
        max_output_tokens=200,
        purpose="summary",
    )
    summary = compose_summary(sent)
    lines = summary.split("\n")
    assert tokens.count_tokens(summary) <= 200
    assert lines[-1] == "#31 bob wrote: the deploy moved to Friday, ticket PRJ-7"  # the newest kept
    assert lines[0].startswith("#") and " alice wrote: m" in lines[0]
    assert all(tokens.count_tokens(line) <= SUMMARY_LINE_TOKENS for line in lines)
    one = compose_summary(replace(sent, max_output_tokens=20))  # not even a line fits
    assert tokens.count_tokens(one) <= 20 and one.startswith("#31 bob wrote: the deploy")
