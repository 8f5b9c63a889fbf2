"""The load-stall benchmark runs (tiny sizes), so it cannot rot; its figures are not
judged."""

from __future__ import annotations

import asyncio

from bench.load_stall import run, table


def test_the_load_benchmark_loads_each_size_and_times_its_stalls() -> None:
    result = asyncio.run(run([12, 30], rounds=2))
    rows = result["rows"]
    assert [row["size"] for row in rows] == [12, 30]
    for row in rows:
        assert row["size"] <= row["entries"] <= row["size"] + 6
        assert row["rounds"] == 2
        assert row["load_ms_median"] > 0 and row["longest_stall_ms_max"] > 0
        assert row["first_build_ms_median"] > 0
    assert table(result).count("\n") == 3
