"""The built-in offline model: a deterministic reply, streamed word by word.

It needs no network and no weights. The reply says who asked and what the call was given,
so a demo (and a test) can see the mechanics: ordering, attribution, context.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from parley.session import tokens
from parley.session.model import Finish, ModelEvent, ModelMessage, ModelRequest, TextDelta, Usage
from parley.session.summary import bounded_text

_WORD = re.compile(r"\S+\s*")
EXCERPT_CHARS = 80


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "\u2026"


def _asked(message: ModelMessage, issuers: tuple[str, ...]) -> str:
    """Who asked what, in the member's words (never the server's attribution line), and
    who wrote the same before, when their message was folded into the prompt."""
    others = [a for a in message.authors if a not in issuers]
    also = f" ({' and '.join(others)} wrote much the same)" if others else ""
    return f"{message.author} asked: \u201c{_excerpt(message.body)}\u201d{also}"


def compose_reply(request: ModelRequest) -> str:
    answering = set(request.answering)
    history = [m for i, m in enumerate(request.messages) if i not in answering]
    people = sorted({m.author for m in history if m.role == "user" and m.author})
    replies = sum(1 for m in history if m.role == "assistant")
    asked = "; ".join(_asked(request.messages[i], request.issuers) for i in request.answering)
    who = ", ".join(people) if people else "nobody yet"
    return (
        f"Hello {' and '.join(request.issuers)}. {asked}. "
        f"I was given {len(history)} earlier messages ({len(history) - replies} from members: "
        f"{who}; {replies} replies of mine) plus "
        f"{'your prompt' if len(request.answering) == 1 else f'{len(answering)} prompts'}. "
        "I am Parley's offline model, so this reply is deterministic."
    )


SUMMARY_LINE_WORDS = 24
SUMMARY_LINE_TOKENS = 64  # a turn's line at most: a word of 25,000 characters is cut


def compose_summary(request: ModelRequest) -> str:
    """An extractive summary: the previous one's lines, then the opening words of each new
    message with its number and author, trimmed from the oldest line to the output limit,
    all counted as the server counts tokens (review RV38-F1: a line of 24 words, one of
    them 25,000 characters long, made a summary of 15,443 tokens for a limit of 768)."""
    content = request.messages[-1].content if request.messages else ""
    previous, _, new = content.partition("New messages:\n")
    lines = [
        line
        for line in previous.removeprefix("Previous summary:\n").strip().split("\n")
        if line.strip()
    ]
    for label, words in _turns(new):
        short = " ".join(words[:SUMMARY_LINE_WORDS])
        more = " \u2026" if len(words) > SUMMARY_LINE_WORDS else ""
        lines.append(bounded_text(f"{label}{short}{more}".rstrip(), SUMMARY_LINE_TOKENS))
    limit = request.max_output_tokens
    while len(lines) > 1 and tokens.count_tokens("\n".join(lines)) > limit:
        lines.pop(0)
    return bounded_text("\n".join(lines), limit)  # one line left, and still too long


# The server's line over each turn of a summary call (``session.summary.transcript_turn``).
_TURN = re.compile(r"\[(?P<who>.+), message #(?P<seq>\d+)\]")


def _turns(transcript: str) -> list[tuple[str, list[str]]]:
    """Each turn of a summary call's new messages: ``#12 alice wrote: `` and its words."""
    turns: list[tuple[str, list[str]]] = []
    for line in transcript.split("\n"):
        heading = _TURN.fullmatch(line)
        if heading is not None:
            turns.append((f"#{heading['seq']} {heading['who']}: ", []))
        elif line.split():
            if not turns:
                turns.append(("", []))
            turns[-1][1].extend(line.split())
    return turns


def count_tokens(text: str) -> int:
    return len(_WORD.findall(text))


class OfflineProvider:
    name = "parley-offline"

    def __init__(self, token_delay_s: float = 0.015) -> None:
        self.token_delay_s = token_delay_s

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        reply = compose_summary(request) if request.purpose == "summary" else compose_reply(request)
        tokens = _WORD.findall(reply)
        for token in tokens:
            if self.token_delay_s > 0:
                await asyncio.sleep(self.token_delay_s)
            else:
                await asyncio.sleep(0)
            yield TextDelta(token)
        # An estimate (four characters a token): counting words over the whole history
        # on every call would cost more than the rest of the call.
        chars = len(request.system) + sum(len(m.content) for m in request.messages)
        yield Usage(input_tokens=chars // 4 + 1, output_tokens=len(tokens))
        yield Finish("stop")
