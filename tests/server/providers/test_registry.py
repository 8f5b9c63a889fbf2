"""Configured models: validation of PARLEY_MODELS and routing by ``ModelRequest.model``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from parley.server.providers.registry import ModelRegistry, open_models
from parley.server.settings import ModelSpec, Settings
from parley.session.errors import ProviderError
from parley.session.model import ModelMessage, ModelRequest, TextDelta
from tests.fake_model import FakeModel

REQUEST = ModelRequest("s", ("alice",), "", (ModelMessage("user", "hi", author="alice"),), (0,))


def spec(**fields: Any) -> dict[str, Any]:
    return {
        "name": "m",
        "kind": "openai",
        "base_url": "http://127.0.0.1:1/v1",
        "model": "x",
        **fields,
    }


@pytest.mark.parametrize(
    ("models", "default", "problem"),
    [
        ([spec(base_url="")], None, "base_url and model are required"),
        ([spec(model="")], None, "base_url and model are required"),
        ([spec(context_window_tokens=1000, reserved_output_tokens=1000)], None, "below"),
        ([spec(), spec()], None, "must be unique"),
        ([spec()], "other", "'other' is not configured"),
        ([spec(kind="gemini")], None, "kind"),
        ([spec(name="has space")], None, "name"),
        ([spec(api_key="sk-inline")], None, "api_key"),  # keys come from the environment only
    ],
)
def test_bad_model_configuration_is_refused(
    models: list[dict[str, Any]], default: str | None, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(models=models, default_model=default, data_dir=tmp_path)


def test_without_models_the_offline_model_is_the_only_choice(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, context_window_tokens=9000, max_output_tokens=700)
    assert list(settings.catalog()) == ["offline"]
    offline = settings.model_spec(None)
    assert (offline.context_window_tokens, offline.reserved_output_tokens) == (9000, 700)


def test_the_default_is_the_first_model_unless_named(tmp_path: Path) -> None:
    two = [spec(name="a"), spec(name="b", kind="anthropic")]
    assert Settings(models=two, data_dir=tmp_path).model_spec(None).name == "a"
    chosen = Settings(models=two, default_model="b", data_dir=tmp_path)
    assert chosen.model_spec(None).name == "b"
    assert chosen.model_spec("a").name == "a"
    assert chosen.model_spec("gone").name == "b"  # sizes only; the call itself fails


async def test_the_registry_routes_by_model_and_refuses_unknown_ones(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        offline_token_delay_ms=0,
        models=[ModelSpec(name="quick", kind="offline"), ModelSpec(name="other", kind="offline")],
    )
    async with open_models(settings) as registry:
        assert isinstance(registry, ModelRegistry)
        assert registry.default == "quick" and set(registry.providers) == {"quick", "other"}
        for model in (None, "quick", "other"):
            events = [e async for e in registry.stream(replace(REQUEST, model=model))]
            assert any(isinstance(e, TextDelta) for e in events)
        with pytest.raises(ProviderError, match="'gone' is not configured"):
            [
                e
                async for e in registry.stream(
                    ModelRequest(**{**_fields(REQUEST), "model": "gone"})
                )
            ]


def _fields(request: ModelRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__slots__}  # type: ignore[attr-defined]


async def test_the_configured_models_call_through_the_given_transport(tmp_path: Path) -> None:
    model = FakeModel(lambda sent: [f"{sent.body['model']} here"])
    settings = Settings(
        data_dir=tmp_path, models=[spec(name="a", model="id-a"), spec(name="b", model="id-b")]
    )
    async with open_models(settings, model.transport) as registry:
        events = [e async for e in registry.stream(replace(REQUEST, model="b"))]
    assert TextDelta("id-b here") in events
    [sent] = model.requests
    assert sent.messages == [{"role": "user", "content": "hi", "name": "alice"}]
