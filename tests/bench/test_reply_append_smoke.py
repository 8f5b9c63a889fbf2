"""The reply-append benchmark runs (tiny lengths), so it cannot rot; its figures are not
judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.reply_append import main, table


def test_the_append_benchmark_times_both_ways_at_each_length(tmp_path: Path) -> None:
    out = tmp_path / "append.json"
    result = main(["--lengths", "40,20", "--window", "10", "--rounds", "1", "--json", str(out)])
    assert [row["appends"] for row in result["rows"]] == [20, 40]
    for row in result["rows"]:
        assert row["us_per_append_blocks"] >= 0 and row["us_per_append_one_block"] >= 0
    assert json.loads(out.read_text()) == result
    assert table(result).count("\n") == 3


def test_a_length_shorter_than_the_window_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--lengths", "5", "--window", "10"])
