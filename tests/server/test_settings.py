"""Settings as they are read: a ``PARLEY_`` name that is no setting is refused (review
RY-9), except the names the project's own tests, benchmarks and examples read."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.server.settings import Settings
from parley.session.context import fixed_tokens
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


def test_a_models_key_variable_and_kubernetes_service_links_are_let_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A model's key may sit in a ``PARLEY_`` variable of the operator's naming (the
    environment's or the env file's models name it), and a Kubernetes Service named
    ``parley`` adds ``PARLEY_SERVICE_*`` and ``PARLEY_PORT_*`` to every pod: not settings,
    not refused."""
    models = '[{"name": "gpt", "kind": "openai", "base_url": "https://api.example.com/v1", '
    models += '"model": "m", "api_key_env": "PARLEY_OPENAI_KEY"}]'
    monkeypatch.setenv("PARLEY_MODELS", models)
    monkeypatch.setenv("PARLEY_OPENAI_KEY", "sk-x")
    for name in ("PARLEY_SERVICE_HOST", "PARLEY_SERVICE_PORT", "PARLEY_PORT_8765_TCP_ADDR"):
        monkeypatch.setenv(name, "10.0.0.1")
    assert Settings().models[0].api_key_env == "PARLEY_OPENAI_KEY"
    monkeypatch.delenv("PARLEY_MODELS")
    env = tmp_path / "parley.env"
    env.write_text(f"PARLEY_MODELS={models}\n")
    assert Settings(_env_file=env).models[0].name == "gpt"  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"^PARLEY_OPENAI_KEY: not a setting"):
        Settings()  # no model names it


def test_a_settings_object_made_in_code_ignores_no_unknown_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under another ASGI server the app reads its settings itself (``create_app()``):
    the same refusal holds there."""
    from parley.server.app import create_app

    monkeypatch.setenv("PARLEY_MAX_PROMT_CHARS", "10")
    with pytest.raises(ConfigurationError):
        create_app()


def test_every_window_a_session_may_use_leaves_a_prompt_room_beside_the_largest_summary() -> None:
    """Review RV39-F1b: each model's window (the offline one's from
    PARLEY_CONTEXT_WINDOW_TOKENS) is judged by the context settings a session using it
    builds with: accepted, the instructions, the largest summary and a prompt fit it;
    refused, the reason names the window."""
    seen = set()
    for window in range(1_800, 2_200, 25):
        spec = {"name": "m", "kind": "offline", "context_window_tokens": window}
        for given in ({"context_window_tokens": window}, {"models": [spec]}):
            try:
                settings = Settings(max_output_tokens=1_024, **given)
            except ValueError as refused:
                assert f"a window of {window} tokens less 1024 reserved" in str(refused)
                seen.add("refused")
                continue
            context = settings.context_settings(settings.model_spec(None))
            assert context.window_problem() is None
            assert context.max_fixed_tokens >= fixed_tokens({}, ())
            seen.add("accepted")
    assert seen == {"refused", "accepted"}
    lowered = Settings(context_window_tokens=1_400, summary_max_output_tokens=16)
    assert lowered.context_settings(lowered.model_spec(None)).window_problem() is None
