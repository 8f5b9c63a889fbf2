"""The context benchmark runs (tiny sizes), so it cannot rot; its figures are not judged."""

from __future__ import annotations

from bench.context_build import generate, run


def test_the_context_benchmark_runs_and_reports_every_figure() -> None:
    result = run(messages=200, repeat=1)
    assert result["messages"] == 200
    assert 0 < result["tokens_after_dedup"] < result["tokens_before"]
    assert result["facts_retained"] == result["facts_planted"] == 20
    assert result["first_build_ms"] > 0 and result["incremental_build_ms"] > 0


def test_the_corpus_is_the_same_every_time() -> None:
    assert generate(100, seed=3) == generate(100, seed=3)
