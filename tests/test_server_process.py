"""The test harness's ``ServerProcess``: it talks to its own server, never to another test's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx

from tests.conftest import (
    ServerProcess,
    free_port,
    listens,
    make_settings,
    serve_in_process,
    sqlite_url,
)


async def test_a_server_process_whose_port_was_taken_listens_on_another(tmp_path: Path) -> None:
    # Another test's server holds the port the process was given (as when two workers' free
    # ports collide): that server answers /healthz, and the process must not count it.
    stranger_settings = make_settings(sqlite_url(tmp_path), tmp_path / "stranger")
    async with serve_in_process(stranger_settings) as stranger:
        taken = int(stranger.base_url.rsplit(":", 1)[1])
        node = ServerProcess(sqlite_url(tmp_path, "node.db"), tmp_path / "node", taken)
        try:
            await node.start()
            assert node.port != taken
            assert node.process is not None and listens(node.process.pid, node.port)
            async with httpx.AsyncClient(base_url=node.base_url) as http:
                assert (await http.get("/healthz")).status_code == 200
        finally:
            node.stop()


def test_listens_tells_whose_socket_a_port_is() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert listens(os.getpid(), port)
    assert not listens(os.getpid(), port)  # closed
    assert not listens(os.getpid(), free_port())


def test_free_port_never_hands_out_a_port_twice() -> None:
    # The kernel gives a port just closed again now and then (2 in 20,000 binds in a row
    # here): two nodes of one cluster were given one port, and shared it and its log.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
