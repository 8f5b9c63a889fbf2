"""Running the tools a run may use: the built-in ``search_documents`` and integrator webhooks.

Whatever goes wrong in a tool (a timeout, an HTTP error, an oversized or malformed answer)
becomes an error result the model reads; it never fails the run. Each result carries the
``Restriction`` of what it read, so what is derived from it inherits its readers.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from parley.authz.policy import Readers, Restriction, restrict
from parley.authz.roles import Capability
from parley.authz.scope import RunScope, ToolDef
from parley.authz.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    new_delivery_id,
    sign,
)
from parley.server.outbound.targets import (
    NoAnswer,
    OutboundClient,
    OutboundError,
    RefusedTarget,
    Resolver,
    system_resolver,
)
from parley.server.runtime.document_search import DocumentSearch
from parley.server.settings import Settings
from parley.server.store.access_rows import DocumentRow, ToolRow
from parley.server.store.port import RuntimeAccess
from parley.session.commands import storable
from parley.session.documents import SEARCH_DOCUMENTS, render
from parley.session.model import ToolSpec


@dataclass(frozen=True, slots=True)
class Executed:
    content: str
    is_error: bool = False
    restriction: Restriction = ()


def tool_defs(webhooks: Sequence[ToolRow]) -> list[ToolDef]:
    """Every tool Parley can run; a run's scope picks those its issuers may use."""
    defs = [ToolDef(SEARCH_DOCUMENTS, Capability.SEARCH_DOCUMENTS)]
    defs += [ToolDef(ToolSpec(t.name, t.description, t.parameters), t.capability) for t in webhooks]
    return defs


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class ToolRunner:
    def __init__(
        self,
        settings: Settings,
        access: RuntimeAccess,
        clock: Callable[[], float],
        document_search: DocumentSearch,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.access = access
        self.document_search = document_search
        self.clock = clock  # the room's: signatures are dated by it
        self.resolver = resolver  # the seam tests use to stand in for DNS

    @staticmethod
    def leaves_the_server(name: str, webhooks: Sequence[ToolRow]) -> bool:
        """Whether a call of tool ``name`` goes out (a registered webhook): it is stored
        before it goes (``SessionRunner``); the built-in search reads only the store."""
        return name != SEARCH_DOCUMENTS.name and any(t.name == name for t in webhooks)

    async def run(
        self,
        session_id: str,
        name: str,
        call_id: str,
        arguments: dict[str, Any],
        scope: RunScope,
        webhooks: Sequence[ToolRow],
    ) -> Executed:
        """The result of tool ``name`` called with ``arguments``, its text as a database can
        store it (``storable``): a tool's answer is stored and shown, and a NUL or a lone
        surrogate in it made every later read of the transcript fail."""
        if name == SEARCH_DOCUMENTS.name:
            executed = await self._search(session_id, arguments, scope)
        elif (hook := next((t for t in webhooks if t.name == name), None)) is None:
            executed = Executed(f"error: tool {name!r} is no longer registered", is_error=True)
        else:
            executed = await self._webhook(session_id, hook, call_id, arguments, scope)
        return replace(executed, content=storable(executed.content))

    async def _search(
        self, session_id: str, arguments: dict[str, Any], scope: RunScope
    ) -> Executed:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return Executed("error: 'query' must be a non-empty string", is_error=True)
        # Without their texts: those the run may read are indexed once (``DocumentSearch``).
        rows = await self.access.list_documents(session_id, texts=False)
        readable: list[DocumentRow] = [r for r in rows if scope.withheld((r.readers,)) is None]
        found = await self.document_search.find(
            self.access, session_id, rows, readable, query[:1000]
        )
        drawn = {p.document_id for p in found}
        restriction = restrict(*((r.readers,) for r in readable if r.id in drawn))
        return Executed(render(found), restriction=restriction)

    async def _webhook(
        self,
        session_id: str,
        hook: ToolRow,
        call_id: str,
        arguments: dict[str, Any],
        scope: RunScope,
    ) -> Executed:
        issuers = [
            {"user_id": s.user_id, "role": s.role, "capabilities": sorted(s.capabilities)}
            for s in scope.issuers
        ]
        body = json.dumps(
            {
                "tool": hook.name,
                "call_id": call_id,
                "session_id": session_id,
                "arguments": arguments,
                # The one member who asked; none for a run answering several members'
                # prompts (review: it named the first, an owner, with an owner's rights,
                # for a tool call an editor's prompt asked for): act on ``capabilities``.
                "issuer": issuers[0] if len(issuers) == 1 else None,
                "issuers": issuers,
                "capabilities": sorted(scope.capabilities),
            },
            separators=(",", ":"),
        ).encode()
        timestamp = int(self.clock())
        delivery = new_delivery_id()  # one per request: the tool server accepts it once
        headers = {
            "content-type": "application/json",
            DELIVERY_HEADER: delivery,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(hook.secret, timestamp, delivery, body),
        }
        limit = self.settings.max_tool_result_bytes
        timeout = hook.timeout_ms / 1000
        # Private, loopback and link-local targets only with PARLEY_WEBHOOK_ALLOW_PRIVATE,
        # checked on the addresses it connects to (``server.outbound``).
        http = OutboundClient(
            allow_private=self.settings.webhook_allow_private,
            resolver=self.resolver,
            max_connections=1,
        )
        try:
            answer = await http.post(
                hook.url, body, headers, timeout_s=timeout, max_body_bytes=limit
            )
        except RefusedTarget as exc:
            return Executed(f"error: the tool's URL is refused ({exc})", is_error=True)
        except NoAnswer:
            return Executed(f"error: the tool did not answer within {timeout:g} s", is_error=True)
        except OutboundError as exc:
            reason = str(exc).split(":", 1)[0]
            return Executed(f"error: the tool could not be reached ({reason})", True)
        finally:
            await http.aclose()
        if answer.too_large:
            return Executed(f"error: the tool's answer exceeds {limit} bytes", is_error=True)
        if not 200 <= answer.status_code < 300:
            return Executed(f"error: the tool answered HTTP {answer.status_code}", True)
        data = answer.body
        return _webhook_result(hook.name, data)


INVALID_TOOL_ANSWER = "invalid_tool_answer"
"""The code an error result for a tool's answer out of its documented form opens with."""

ANSWER_KEYS = frozenset({"content", "readers"})
READERS_KEYS = frozenset({"users", "roles"})


class _KeyTwice(ValueError):
    pass


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (``json.loads`` keeps the last)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _KeyTwice
    return found


def _invalid(problem: str) -> Executed:
    return Executed(f"error: {INVALID_TOOL_ANSWER}: {problem}", is_error=True)


def _webhook_result(name: str, data: bytes) -> Executed:
    """The result of a tool's answer ``data``: the answer object ``{"content": str,
    "readers"?: {"users": [str], "roles": [str]}}`` (docs/permissions.md), or plain text
    any member may read: a body that does not open with ``{`` (blanks and a byte-order
    mark aside).

    A body that opens with ``{`` in any other form (not JSON, a key twice, content not a
    string, another key, ``readers`` of another form or null) is an error result
    (``invalid_tool_answer``) that names what is wrong and quotes nothing of it: it may
    say who may read it in a way not read here (content as a list of parts beside
    ``readers``, a misspelt ``readers``), and read as plain text it went to every member."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    if not text.lstrip().startswith("{"):
        return Executed(text)
    try:
        parsed = json.loads(text, object_pairs_hook=_once_each)
    except _KeyTwice:
        return _invalid("the tool's answer names a key twice")
    except (ValueError, RecursionError):
        return _invalid("the tool's answer opens as a JSON object but is not one")
    if not parsed.keys() <= ANSWER_KEYS:
        return _invalid("the tool's answer may hold only 'content' and 'readers'")
    content = parsed.get("content")
    if not isinstance(content, str):
        return _invalid("the tool's 'content' must be a string")
    if "readers" not in parsed:
        return Executed(content)
    readers = parsed["readers"]
    if not (
        isinstance(readers, dict)
        and readers.keys() == READERS_KEYS
        and all(
            isinstance(v, list) and all(isinstance(i, str) for i in v) for v in readers.values()
        )
    ):
        return _invalid("the tool's 'readers' must list 'users' and 'roles' (strings), no more")
    users, roles = (frozenset(map(storable, readers[k])) for k in ("users", "roles"))
    readable = Readers(f"tool:{name}", users, roles)
    return Executed(content, restriction=(readable,))
