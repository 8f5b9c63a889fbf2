"""A failed test of a module's shared cluster (``nodes.module_cluster``) shows its nodes'
logs, as a failure inside ``nodes.cluster`` prints them: the nodes outlive the test, so
their ``except`` never sees its failure."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import pytest

from tests.server.cluster.nodes import Cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed and report.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Cluster):
                for node in value.nodes:
                    with contextlib.suppress(OSError):
                        tail = node.log.read_text(errors="replace")[-4000:]
                        report.sections.append(
                            (f"{node.log.name} (node {node.env['PARLEY_NODE_ID']})", tail)
                        )
    return report
