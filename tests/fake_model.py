"""The one fake model of the tests: an ``httpx.MockTransport`` that speaks the OpenAI Chat
Completions streaming wire, behind Parley's real ``OpenAIProvider``.

Each request is parsed and kept (``FakeModel.requests``), then answered as the test's
script says: text pieces and tool calls streamed as ``chat.completion.chunk`` events with a
usage chunk and ``[DONE]``, or an HTTP error. A stream can wait on an ``asyncio.Event`` or
any awaitable between its pieces, drop the connection, or never end until it is cancelled.
Everything of Parley's, the provider's rendering and parsing included, is the real thing;
what a test checks about a model call is what went over the wire.

    fake = FakeModel(lambda sent: ["hello ", call("search_documents", {"query": "x"})])
    async with serve_in_process(settings, fake) as server: ...
    fake.requests_for("alice")[0].messages[-1]["content"]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from parley.server.settings import ModelSpec, Settings
from parley.session.model import ToolCall
from parley.session.summary import SUMMARY_SYSTEM

NAME = "fake"  # the model's name in the settings, and so the author of its replies
BASE_URL = "http://fake-model.invalid/v1"

_MEMBER = r'"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.@+-]{1,64}'
_MEMBERS = rf"(?:{_MEMBER})(?: and (?:{_MEMBER}))*"
# The attribution line of a prompt being asked (``session.attribution.attribution_line``).
_ASKS = re.compile(rf"\[(?:{_MEMBERS} (?:each )?wrote, )?(?P<askers>{_MEMBERS}) asks? you\]")
# A request the server wrote for members (``session.attribution.server_request_line``: a
# side-thread's summary instruction), asked by them.
_SERVER_ASKS = re.compile(rf"\[the server asks you, for (?P<askers>{_MEMBERS})\]")


@dataclass(frozen=True, slots=True)
class Status:
    """An HTTP error answer (``retry_after_s``: sent as ``Retry-After``)."""

    code: int
    message: str = "the fake model refused"
    retry_after_s: float | None = None


class Drop:
    """A stream step: the connection drops here (a retryable failure for the provider)."""


class Forever:
    """A stream step: nothing more comes until the caller closes the stream."""


Step = str | ToolCall | asyncio.Event | Callable[[], Awaitable[object]] | Drop | Forever
Answer = Status | Iterable[Step]  # a stream's steps may go on for ever


def repeating(*steps: Step) -> Iterator[Step]:
    """``steps`` over and over: a stream that ends only when the caller closes it."""
    return itertools.chain.from_iterable(itertools.repeat(steps))


def call(name: str, arguments: dict[str, Any] | str, call_id: str = "call-1") -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(call_id, name, text)


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def askers(content: str) -> list[str]:
    """Who asks the model a user message's content (its attribution line), in order."""
    first = content.split("\n", 1)[0]
    match = _ASKS.fullmatch(first) or _SERVER_ASKS.fullmatch(first)
    if match is None:
        return []
    names = re.findall(rf"({_MEMBER})(?: and |$)", match["askers"])
    return [json.loads(n) if n.startswith('"') else n for n in names]


@dataclass(slots=True)
class Sent:
    """One request the model received: its JSON body, and when the caller closed the
    answer's stream (``closed_at``, ``time.monotonic()``; None while it is open)."""

    body: dict[str, Any]
    closed_at: float | None = None

    @property
    def system(self) -> str:
        first = self.body["messages"][0] if self.body["messages"] else {}
        return str(first["content"]) if first.get("role") == "system" else ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation without the system message."""
        return [m for m in self.body["messages"] if m["role"] != "system"]

    @property
    def tools(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools", [])]

    @property
    def purpose(self) -> str:
        return "summary" if self.system == SUMMARY_SYSTEM else "reply"

    @property
    def asked(self) -> list[dict[str, Any]]:
        """The user messages this call answers: those whose attribution line asks."""
        return [m for m in self.messages if m["role"] == "user" and askers(m["content"])]

    @property
    def issuers(self) -> tuple[str, ...]:
        """The members asking, each once, as the attribution lines name them."""
        return tuple(dict.fromkeys(a for m in self.asked for a in askers(m["content"])))

    def asked_text(self) -> str:
        """What the call was asked: the prompts' text after their attribution line."""
        return " ".join(m["content"].split("\n", 1)[-1] for m in self.asked)

    def everything(self) -> str:
        """Every string the request carried: system, messages, tool calls, tool specs."""
        return "\n".join(_strings(self.body))


Script = Callable[[Sent], Answer]


def echo_tool_results(sent: Sent) -> Answer | None:
    """After a tool step, answer with what the tool returned (so the reply carries it)."""
    last = sent.messages[-1] if sent.messages else {}
    if last.get("role") == "tool":
        return [f"The tool said: {last['content']}"]
    return None


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": choices}
    return b"data: " + json.dumps({**body, **extra}).encode() + b"\n\n"


def _call_chunks(index: int, tool: ToolCall) -> list[bytes]:
    """A tool call in pieces, as the API streams it: id and name, then the arguments in
    two halves."""
    head = {"index": index, "id": tool.id, "type": "function"}
    half = len(tool.arguments) // 2
    return [
        _chunk({"tool_calls": [{**head, "function": {"name": tool.name, "arguments": ""}}]}),
        *(
            _chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            for part in (tool.arguments[:half], tool.arguments[half:])
            if part
        ),
    ]


async def _events(steps: Iterable[Step], usage: tuple[int, int]) -> AsyncGenerator[bytes, None]:
    """The server-sent events of a streamed answer: its steps, the finish, usage, [DONE]."""
    calls = 0
    for step in steps:
        await asyncio.sleep(0)  # as over a socket, the reader waits for each piece
        if isinstance(step, str):
            yield _chunk({"role": "assistant", "content": step})
        elif isinstance(step, ToolCall):
            for piece in _call_chunks(calls, step):
                yield piece
            calls += 1
        elif isinstance(step, asyncio.Event):
            await step.wait()
        elif isinstance(step, Drop):
            raise httpx.RemoteProtocolError("the fake model dropped the connection")
        elif isinstance(step, Forever):
            await asyncio.Event().wait()
        else:
            await step()
    yield _chunk({}, "tool_calls" if calls else "stop")
    input_tokens, output_tokens = usage
    yield _chunk(None, usage={"prompt_tokens": input_tokens, "completion_tokens": output_tokens})
    yield b"data: [DONE]\n\n"


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


class _Body(httpx.AsyncByteStream):
    """A response body; closing it notes when in its request's ``closed_at``."""

    def __init__(self, sent: Sent, chunks: AsyncGenerator[bytes, None]) -> None:
        self.sent = sent
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        if self.sent.closed_at is None:
            self.sent.closed_at = time.monotonic()
        await self.chunks.aclose()


class FakeModel:
    """A model reached over (mock) HTTP. ``script`` answers each request; after a tool
    step the tool's result is echoed first unless ``echo_tools`` is off. A request whose
    prompt says ``[wait]`` waits for ``gate`` when one is set."""

    def __init__(
        self,
        script: Script = lambda sent: ["answered"],
        *,
        echo_tools: bool = True,
        usage: tuple[int, int] = (100, 10),
    ) -> None:
        self.script = script
        self.echo_tools = echo_tools
        self.usage = usage
        self.requests: list[Sent] = []
        self.gate: asyncio.Event | None = None
        self.transport = httpx.MockTransport(self.handle)

    def configure(self, settings: Settings) -> Settings:
        """``settings`` with this model as the only one, with the window and output budget
        they give the built-in model."""
        window = settings.context_window_tokens
        spec = ModelSpec(
            name=NAME,
            kind="openai",
            base_url=BASE_URL,
            model="fake-model",
            context_window_tokens=window,
            reserved_output_tokens=min(settings.max_output_tokens, window - 1),
        )
        return settings.model_copy(update={"models": [spec], "default_model": None})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        sent = Sent(json.loads(request.content))
        self.requests.append(sent)
        answer = (echo_tool_results(sent) if self.echo_tools else None) or self.script(sent)
        if isinstance(answer, Status):
            headers = {"content-type": "application/json"}
            if answer.retry_after_s is not None:
                headers["retry-after"] = str(answer.retry_after_s)
            error = json.dumps({"error": {"message": answer.message}}).encode()
            return httpx.Response(answer.code, headers=headers, stream=_Body(sent, _once(error)))
        steps: Iterable[Step] = answer
        if self.gate is not None and "[wait]" in sent.asked_text():
            steps = itertools.chain([self.gate], answer)
        body = _Body(sent, _events(steps, self.usage))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    @classmethod
    def answering(cls, *answers: Answer) -> FakeModel:
        """A model whose n-th call gets the n-th of ``answers``."""
        queue = iter(answers)
        return cls(lambda sent: next(queue))

    def requests_for(self, user_id: str) -> list[Sent]:
        """The calls asked by ``user_id`` alone."""
        return [r for r in self.requests if r.issuers == (user_id,)]
