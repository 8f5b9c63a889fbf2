"""Test helpers: several real ``parley serve`` processes on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import conftest
from tests.conftest import ADMIN_KEY, ServerProcess, free_port, postgres_database
from tests.fake_model import FakeModel
from tests.fake_upstream import FakeUpstream, Reply, openai_chunk, sse
from tests.yclient import YClient


@dataclass
class Cluster:
    url: str
    nodes: list[ServerProcess]
    http: httpx.AsyncClient  # the admin API, through the first node
    upstream: FakeUpstream | None = None  # the model (``upstream_cluster``)

    def node(self, node_id: str) -> ServerProcess:
        return next(n for n in self.nodes if n.env["PARLEY_NODE_ID"] == node_id)

    async def new_session(self, members: dict[str, str], **body: Any) -> str:
        response = await self.http.post("/api/v1/sessions", json=body)
        assert response.status_code == 201, response.text
        sid = str(response.json()["id"])
        for user, role in members.items():
            put = await self.http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": role})
            assert put.status_code == 200, put.text
        return sid

    async def token(self, node: ServerProcess, sid: str, user: str) -> str:
        """A client token of ``user``, made through ``node``."""
        response = await self.http.post(  # from the node itself: any node may be down
            f"{node.base_url}/api/v1/sessions/{sid}/tokens", json={"user_id": user}
        )
        if response.status_code != 201:  # a node shutting down, say: try another
            raise ConnectionError(f"{response.status_code}: {response.text}")
        return str(response.json()["token"])

    async def connect(
        self,
        node: ServerProcess,
        sid: str,
        user: str,
        *,
        commands: str | None = None,
        keepalive: bool = True,
        synced_s: float = 20,
    ) -> YClient:
        """A client of ``user`` on ``node``, synced within ``synced_s`` (``keepalive``:
        ``YClient.connect``'s)."""
        token = await self.token(node, sid, user)
        client = await YClient.connect(
            node.ws_url, sid, token, commands=commands, keepalive=keepalive
        )
        await asyncio.wait_for(client.synced.wait(), synced_s)
        return client

    async def holder(self, sid: str) -> tuple[str, int] | None:
        """The node running ``sid`` and its lease epoch; None when nobody holds it."""
        connection = await asyncpg.connect(self.url.replace("+asyncpg", ""))
        try:
            row = await connection.fetchrow(
                "SELECT holder, epoch FROM session_leases "
                "WHERE session_id = $1 AND expires_at >= clock_timestamp()",
                sid,
            )
        finally:
            await connection.close()
        return None if row is None else (str(row["holder"]), int(row["epoch"]))

    async def wait_holder(
        self, sid: str, timeout_s: float = 20, *, not_: str | None = None
    ) -> tuple[str, int]:
        """The node running ``sid`` (other than ``not_``), polled every 50 ms."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = await self.holder(sid)
            if found is not None and found[0] != not_:
                return found
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no node (other than {not_}) runs {sid}")

    async def running_and_other(self, sid: str) -> tuple[ServerProcess, ServerProcess]:
        """The node running ``sid`` and one that does not (two nodes or more)."""
        holder, _ = await self.wait_holder(sid)
        running = self.node(holder)
        return running, next(n for n in self.nodes if n is not running)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, count: int, **env: str) -> AsyncIterator[Cluster]:
    # Migrated before the nodes start (a clone of the worker's template), so they start
    # together: each finds the schema current, as the later nodes of a rolling start do.
    async with postgres_database(migrated=True) as url:
        nodes = [
            ServerProcess(
                url,
                tmp_path / "data",
                free_port(),
                PARLEY_CLUSTER="1",
                PARLEY_NODE_ID=f"n{i}",
                **env,
            )
            for i in range(count)
        ]
        http = httpx.AsyncClient(
            base_url=nodes[0].base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )
        try:
            await asyncio.gather(*(node.start() for node in nodes))
            yield Cluster(url, nodes, http)
        except BaseException:
            # The nodes' logs go with the test's temporary folder (CI's whole clone): a
            # failure shows their ends, the only account of what the nodes did.
            for node in nodes:
                with contextlib.suppress(OSError):
                    print(f"--- {node.log.name} (node {node.env['PARLEY_NODE_ID']}):")
                    print(node.log.read_text(errors="replace")[-4000:])
            raise
        finally:
            await http.aclose()
            await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))


def module_cluster(count: int = 2, **env: str) -> Any:
    """A module-scoped fixture: one cluster of ``count`` nodes (``env`` as ``cluster``'s)
    for the module's tests that neither kill, pause, drain, cut off nor reconfigure a node.
    Starting the nodes was most of such a test's time. Each test makes its own sessions
    (``Cluster.new_session``), so none sees another's; each is marked ``on_module_cluster``."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
        async with cluster(tmp_path_factory.mktemp("cluster"), count, **env) as nodes:
            yield nodes

    return shared


def on_module_cluster(module: str) -> Callable[[Any], Any]:
    """Marks a test of ``module_cluster``'s: run on the module's event loop (the one its
    nodes' admin client lives on), and on one xdist worker with the module's other such
    tests (``--dist loadgroup``), so the module starts its nodes once, not once a worker."""

    def marked(test: Any) -> Any:
        return pytest.mark.xdist_group(f"cluster:{module}")(
            pytest.mark.asyncio(loop_scope="module")(test)
        )

    return marked


async def stop_lease_round(node: Any) -> None:
    """Stop ``node``'s (a ``ClusterNode``'s) lease round, as a frozen node's stops."""
    for task in node._tasks:
        if task.get_name() == "cluster-leases":
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def lapse_lease(node: Any, url: str, sid: str) -> None:
    """Freeze ``node``'s lease round and let its lease of ``sid`` run out now (``url``: the
    cluster's database), so another node may take the session over."""
    await stop_lease_round(node)
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "UPDATE session_leases SET expires_at = clock_timestamp() - interval '1 s'"
            " WHERE session_id = $1",
            sid,
        )
    finally:
        await connection.close()


def forwarded_stored(monkeypatch: pytest.MonkeyPatch, node: Any) -> asyncio.Event:
    """An event set once ``node`` (a ``ClusterNode``) has stored a command it forwards."""
    stored = asyncio.Event()
    submit = node.relay.table.submit

    async def submitted(*args: Any) -> int:
        command_id = await submit(*args)
        stored.set()
        return int(command_id)

    monkeypatch.setattr(node.relay.table, "submit", submitted)
    return stored


@contextlib.contextmanager
def failing_statements(
    engine: AsyncEngine,
    failed_as: Callable[[str, Any], str | None],
    error: Callable[[], BaseException],
    times: int = 1_000_000,
) -> Iterator[list[str]]:
    """The first ``times`` statements sent through ``engine`` that ``failed_as(statement,
    parameters)`` names (not None) fail with ``error()``; yields those names, in order."""
    failed: list[str] = []

    def fail(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        name = failed_as(statement, parameters)
        if name is not None and len(failed) < times:
            failed.append(name)
            raise error()

    event.listen(engine.sync_engine, "before_cursor_execute", fail)
    try:
        yield failed
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", fail)


@contextlib.asynccontextmanager
async def in_process(
    tmp_path: Path, names: list[str], model: FakeModel | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, list[conftest.RunningServer]]]:
    """Nodes named ``names`` served in this process (their insides at hand, answered by
    ``model`` if given) on a new migrated database: its URL and the nodes, in that order."""
    async with postgres_database(migrated=True) as url, contextlib.AsyncExitStack() as stack:
        nodes = []
        for name in names:
            settings = conftest.make_settings(
                url, tmp_path / name, cluster=True, node_id=name, **overrides
            )
            nodes.append(
                await stack.enter_async_context(conftest.serve_in_process(settings, model))
            )
        yield url, nodes


@contextlib.asynccontextmanager
async def two_in_process(
    tmp_path: Path, model: FakeModel | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, conftest.RunningServer, conftest.RunningServer]]:
    """Two nodes served in this process (``a`` and ``b``, their insides at hand, answered
    by ``model`` if given) on a new migrated database: its URL and the two."""
    async with in_process(tmp_path, ["a", "b"], model, **overrides) as (url, (first, second)):
        yield url, first, second


def search_call(query: str) -> list[bytes]:
    """A Chat Completions stream that calls ``search_documents``."""
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "search_documents", "arguments": json.dumps({"query": query})},
    }
    return [
        sse(json.dumps(openai_chunk({"role": "assistant", "content": None}))),
        sse(json.dumps(openai_chunk({"tool_calls": [call]}))),
        sse(json.dumps(openai_chunk({}, "tool_calls"))),
        sse("[DONE]"),
    ]


async def attach_vault(http: httpx.AsyncClient, sid: str) -> str:
    """Attach to ``sid``, through ``http`` (an admin client of a node), a document bob
    alone may read, holding the vault code 7731; its id."""
    vault = {"title": "Vault", "text": "the vault code is 7731", "readers": {"users": ["bob"]}}
    made = await http.post(f"/api/v1/sessions/{sid}/documents", json=vault)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


@contextlib.asynccontextmanager
async def upstream_cluster(tmp_path: Path, replies: list[Reply]) -> AsyncIterator[Cluster]:
    """Two nodes whose one model is a real HTTP upstream playing ``replies`` in order."""
    async with (
        FakeUpstream(replies).running() as upstream,
        cluster(
            tmp_path,
            2,
            PARLEY_MODELS=json.dumps(
                [
                    {
                        "name": "up",
                        "kind": "openai",
                        "base_url": upstream.base_url + "/v1",
                        "model": "m",
                    }
                ]
            ),
            PARLEY_OFFLINE_TOKEN_DELAY_MS="0",
            PARLEY_SUMMARIES="false",
            PARLEY_SHUTDOWN_GRACE_S="0.5",
        ) as nodes,
    ):
        nodes.upstream = upstream
        yield nodes


def settled(client: YClient, prompt_ids: set[str]) -> bool:
    seen = 0
    for entry in client.entries():
        if entry["id"] in prompt_ids:
            seen += 1
        if entry["status"] in {"queued", "running", "streaming"}:
            return False
    return seen == len(prompt_ids)


def check_one_story(views: list[list[dict[str, Any]]], prompt_ids: set[str]) -> None:
    """Every view has the same entries in the same order; each prompt once, seqs without
    gaps, each reply right under the prompt it answers, no prompt answered twice."""
    order = [e["id"] for e in views[0]]
    for view in views[1:]:
        assert [e["id"] for e in view] == order
    assert len(set(order)) == len(order)
    view = views[0]
    prompts = [e for e in view if e["kind"] == "prompt"]
    assert {e["id"] for e in prompts} == prompt_ids
    assert [int(e["seq"]) for e in prompts] == list(range(1, len(prompts) + 1))
    by_id = {e["id"]: e for e in view}
    answered: list[str] = []
    for index, entry in enumerate(view):
        if entry["kind"] == "reply":
            assert view[index - 1]["id"] == entry["reply_to"]
            answered += list(entry["answers"])
            assert all(by_id[p]["reply_id"] == entry["id"] for p in entry["answers"])
    assert len(answered) == len(set(answered))  # no prompt ran twice
