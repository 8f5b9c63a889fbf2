"""An HTTP response read as a stream, freed as soon as it closes.

httpx's response and the stream it reads from point at each other (the stream records
the response's elapsed time on it; encode/httpx#3733), so every streamed call, a model's
reply or a webhook's, left about 40 objects to the cyclic garbage collector, whose passes
stop the event loop for every session. Once the response is closed its stream is never
read again: replacing it breaks the cycle, and the call's objects go at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

_CLOSED = httpx.ByteStream(b"")


@asynccontextmanager
async def streamed(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """``client.stream(method, url, **kwargs)``, its response let go of its stream on close."""
    response: httpx.Response | None = None
    try:
        async with client.stream(method, url, **kwargs) as response:
            yield response
    finally:
        if response is not None:
            response.stream = _CLOSED
