"""Settings as they are read: a ``PARLEY_`` name that is no setting is refused (review
RY-9), except the names the project's own tests, benchmarks and examples read."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.server.settings import Settings
from parley.session.errors import ConfigurationError


def test_a_misspelled_name_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_MAX_PROMT_CHARS", "10")
    with pytest.raises(ConfigurationError) as caught:
        Settings()
    assert caught.value.message == (
        "PARLEY_MAX_PROMT_CHARS: not a setting (did you mean PARLEY_MAX_PROMPT_CHARS?)"
    )


def test_names_are_judged_as_pydantic_reads_them_whatever_their_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("parley_port", "8000")
    assert Settings().port == 8000
    monkeypatch.setenv("Parley_Prot", "1")
    with pytest.raises(
        ConfigurationError, match=r"^Parley_Prot: not a setting \(did you mean PARLEY_PORT\?\)"
    ):
        Settings()


def test_every_unknown_name_is_named_on_its_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = tmp_path / "parley.env"
    env.write_text("PARLEY_HOTS=0.0.0.0\nOPENAI_API_KEY=x\nPARLEY_PORT=9000\n")
    monkeypatch.setenv("PARLEY_QWERTY", "1")
    with pytest.raises(ConfigurationError) as caught:
        Settings(_env_file=env)  # type: ignore[call-arg]
    assert caught.value.message == (
        "PARLEY_QWERTY: not a setting; "
        f"PARLEY_HOTS (in {env}): not a setting (did you mean PARLEY_HOST?)"
    )


@pytest.mark.parametrize(
    "name",
    [
        "PARLEY_TEST_POSTGRES_URL",
        "PARLEY_TEST_ANYTHING_NEW",
        "PARLEY_BENCH_PROFILE",
        "PARLEY_LIVE_OPENAI_MODEL",
        "PARLEY_CONTRACT_EXAMPLES",
        "PARLEY_CONTRACT_NEGATIVE_EXAMPLES",
        "PARLEY_CONTRACT_SEED",
        "PARLEY_FUZZ_SEED",
        "PARLEY_URL",
    ],
)
def test_the_names_the_project_reads_outside_the_settings_are_let_through(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "1")
    assert Settings().port == 8765


def test_a_settings_object_made_in_code_ignores_no_unknown_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under another ASGI server the app reads its settings itself (``create_app()``):
    the same refusal holds there."""
    from parley.server.app import create_app

    monkeypatch.setenv("PARLEY_MAX_PROMT_CHARS", "10")
    with pytest.raises(ConfigurationError):
        create_app()
