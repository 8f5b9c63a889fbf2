"""``python -m bench.run --isolate``: the server under test on a CPU of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.isolation import IsolationError, split
from bench.report import _placement

SHOW_AFFINITY = "import os; print(sorted(os.sched_getaffinity(0)))"


def test_the_lowest_cpu_is_the_servers_and_the_rest_the_clients() -> None:
    assert split({0, 1}).describe() == {"server_cpus": [0], "client_cpus": [1]}
    isolation = split({7, 2, 5})
    assert isolation.server_cpus == {2}
    assert isolation.client_cpus == {5, 7}


def test_one_cpu_cannot_be_split() -> None:
    with pytest.raises(IsolationError, match="at least 2 CPUs"):
        split({3})


def test_a_pinned_server_runs_on_its_cpu_alone() -> None:
    available = os.sched_getaffinity(0)
    if len(available) < 2:  # this machine cannot isolate: the run refuses
        with pytest.raises(IsolationError):
            split()
        return
    isolation = split()
    child = subprocess.run(
        [sys.executable, "-c", SHOW_AFFINITY],
        preexec_fn=isolation.pin_server(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == str([min(available)])


def test_the_report_says_where_each_side_ran() -> None:
    shared = {"sizes": {"shards": 4}}
    assert _placement(shared) == "Server and clients share the cores (clients in 4 processes)."
    isolated = {**shared, "isolation": split({0, 1, 2}).describe()}
    assert _placement(isolated) == (
        "Each server on CPU 0 alone; the clients (4 processes) and the driver on CPU 1, 2 "
        "(`--isolate`)."
    )
