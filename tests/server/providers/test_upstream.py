"""What an upstream or a webhook tool sends that is not what it should be: read without
failing the run in a way its documented codes do not say."""

from __future__ import annotations

import pytest
from httpx_sse import ServerSentEvent

from parley.server.providers.upstream import ProviderError, Upstream, error_message, event_json
from parley.server.runtime.tools import _webhook_result

# JSON nested past Python's recursion limit: ``json.loads`` raises RecursionError.
DEEP = b"[" * 50_000 + b"]" * 50_000


def test_json_nested_too_deep_is_read_as_what_it_is_not() -> None:
    """Review (stable codes): a tool answering 60 KB of ``[[[…]]]``, or an upstream's event
    or error body nested so, failed the run ``internal_error`` with a RecursionError. The
    tool's answer is its plain text; the event is a ``provider_error``; the error body's
    start is the message."""
    assert _webhook_result("crm", DEEP).content == DEEP.decode()
    upstream = Upstream("model 'm'", "http://127.0.0.1:9", "m")
    with pytest.raises(ProviderError, match="not JSON"):
        event_json(upstream, ServerSentEvent(data=DEEP.decode()))
    assert error_message(DEEP).startswith("[[[")
