"""The cost-per-run benchmark runs (tiny sizes), so it cannot rot; its figures are not
judged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.run_cost import main, run, table


def test_the_cost_benchmark_grows_the_session_and_times_each_run() -> None:
    result = asyncio.run(run([12, 30], runs=2))
    rows = result["rows"]
    assert [row["size"] for row in rows] == [12, 30]
    for row in rows:
        # Grown through the door to the size asked, then two runs: a prompt and a reply each.
        assert row["size"] + 4 <= row["entries"] <= row["size"] + 6
        assert row["runs"] == 2 and row["context_builds"] >= 2
        assert row["cpu_ms_per_run_median"] > 0 and row["settled_ms_median"] > 0
    assert table(result).count("\n") == 3


def test_the_results_go_to_the_file_named(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    main(["--sizes", "10", "--runs", "1", "--json", str(out)])
    assert json.loads(out.read_text())["rows"][0]["size"] == 10
