"""What the HTTP providers share: one streamed POST read as server-sent events, and the
mapping of every way it can fail to a ``ProviderError`` that names no credential.

The providers never retry here; ``server.providers.retry`` decides that, from
``ProviderError.retryable`` and ``retry_after_s``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from parley.server.outbound.streams import streamed
from parley.session.errors import ProviderError

ERROR_BODY_BYTES = 4096
ERROR_MESSAGE_CHARS = 300
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where one model lives: the API's base URL, its key (never shown) and its model id."""

    label: str
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def redact(self, text: str) -> str:
        """``text`` with the API key taken out (upstreams quote keys in their errors)."""
        if self.api_key:
            text = text.replace(self.api_key, REDACTED)
        return text

    def shown(self, text: str) -> str:
        """What an upstream's error text may show a session's members: the key taken out
        first, then cut to ``ERROR_MESSAGE_CHARS`` (cut first, a key that straddled the cut
        kept its start: review RL-9)."""
        text = " ".join(self.redact(text).split())
        if len(text) > ERROR_MESSAGE_CHARS:
            text = text[: ERROR_MESSAGE_CHARS - 1] + "\u2026"
        return text or "no details given"

    def scrubbed(self, error: ProviderError) -> ProviderError:
        """``error`` as its message may be shown (``shown``): for what the provider read
        from the stream, an upstream's own error event (review RL-8: it quoted the key in
        full, and every member read it in the run's reason, event and webhook)."""
        return ProviderError(
            self.shown(error.message),
            retryable=error.retryable,
            status=error.status,
            retry_after_s=error.retry_after_s,
        )


def retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The wait an upstream asked for: ``retry-after-ms``, or ``Retry-After`` as seconds or
    as an HTTP date. None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def error_message(body: bytes) -> str:
    """The human part of an error body: ``error.message`` of OpenAI's and Anthropic's JSON,
    else the text (``Upstream.shown`` bounds it, once the key is out)."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
    return text


async def _bounded_body(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return bytes(body[:ERROR_BODY_BYTES])


async def post_events(
    client: httpx.AsyncClient,
    upstream: Upstream,
    path: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
) -> AsyncGenerator[ServerSentEvent, None]:
    """POST ``body`` and yield the response's server-sent events.

    Closing the iterator closes the HTTP stream. Raises ``ProviderError``: retryable for
    429, 5xx, time-outs and dropped connections, with the upstream's ``Retry-After``."""
    try:
        async with streamed(
            client,
            "POST",
            upstream.url(path),
            json=body,
            headers={"accept": "text/event-stream", **headers},
        ) as response:
            if response.status_code >= 400:
                detail = upstream.shown(error_message(await _bounded_body(response)))
                raise ProviderError(
                    f"{upstream.label} answered {response.status_code}: {detail}",
                    retryable=retryable_status(response.status_code),
                    status=response.status_code,
                    retry_after_s=retry_after_s(response.headers),
                )
            async for event in EventSource(response).aiter_sse():
                yield event
    except SSEError as exc:
        raise ProviderError(f"{upstream.label} did not stream events: {exc}") from None
    except httpx.TimeoutException as exc:
        raise ProviderError(
            f"{upstream.label} timed out ({type(exc).__name__})", retryable=True
        ) from None
    except httpx.TransportError as exc:
        detail = upstream.shown(str(exc))
        raise ProviderError(
            f"{upstream.label} connection failed ({type(exc).__name__}: {detail})",
            retryable=True,
        ) from None


def event_json(upstream: Upstream, event: ServerSentEvent) -> dict[str, Any]:
    """The JSON object an event carries; ``ProviderError`` when it carries anything else."""
    try:
        data = json.loads(event.data)
    except (ValueError, RecursionError):
        raise ProviderError(f"{upstream.label} sent an event that is not JSON") from None
    if not isinstance(data, dict):
        raise ProviderError(f"{upstream.label} sent an event that is not a JSON object")
    return data


def timeout(connect_s: float, read_s: float) -> httpx.Timeout:
    """Connect within ``connect_s``; between two pieces of the stream at most ``read_s``."""
    return httpx.Timeout(connect=connect_s, read=read_s, write=connect_s, pool=connect_s)
