"""The configured models, by name: one provider each, chosen per call by ``request.model``.

``open_models`` builds them from the settings and owns the one HTTP client they share
(its connection pool, its time-outs); leaving it closes every upstream connection.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx

from parley.server.providers.anthropic import AnthropicProvider
from parley.server.providers.offline import OfflineProvider
from parley.server.providers.openai import OpenAIProvider
from parley.server.providers.retry import RetryingProvider, RetryPolicy, close_events
from parley.server.providers.upstream import Upstream, timeout
from parley.server.settings import ModelSpec, Settings, missing_key_message
from parley.session.errors import MissingApiKey, ProviderError
from parley.session.model import ModelEvent, ModelProvider, ModelRequest


@functools.cache
def provider_tls() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``),
    built once per process: building one reads every CA (about 20-30 ms)."""
    return httpx.create_ssl_context()


class ModelRegistry:
    """A ``ModelProvider`` that hands each call to the provider of the model it names
    (None: the default model). Its ``name`` is the default provider's."""

    def __init__(self, providers: Mapping[str, ModelProvider], default: str) -> None:
        self.providers = dict(providers)
        self.default = default
        self.name = self.providers[default].name

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        name = request.model or self.default
        provider = self.providers.get(name)
        if provider is None:
            raise ProviderError(f"model {name!r} is not configured on this server")
        events = provider.stream(request)
        try:
            async for event in events:
                yield event
        finally:
            await close_events(events)


def _api_key(spec: ModelSpec) -> str | None:
    if spec.api_key_env is None:
        return None
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise MissingApiKey(missing_key_message(spec))
    return key


def build_provider(spec: ModelSpec, settings: Settings, client: httpx.AsyncClient) -> ModelProvider:
    if spec.kind == "offline":
        return OfflineProvider(settings.offline_token_delay_ms / 1000)
    upstream = Upstream(
        label=f"model {spec.name!r}",
        base_url=spec.base_url,
        model=spec.model,
        api_key=_api_key(spec),
    )
    inner: ModelProvider
    if spec.kind == "openai":
        inner = OpenAIProvider(spec.name, upstream, client)
    else:
        inner = AnthropicProvider(spec.name, upstream, client)
    policy = RetryPolicy(
        max_attempts=settings.provider_max_attempts,
        base_delay_s=settings.provider_retry_base_s,
        max_delay_s=settings.provider_retry_max_s,
        max_retry_after_s=settings.provider_retry_after_max_s,
    )
    return RetryingProvider(inner, policy)


@asynccontextmanager
async def open_models(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[ModelRegistry]:
    """The registry of ``settings.catalog()``; raises ``MissingApiKey`` before any call.
    ``transport``: where the HTTP calls go (None: the network, as httpx does by default)."""
    limits = timeout(settings.provider_connect_timeout_s, settings.provider_read_timeout_s)
    client = httpx.AsyncClient(
        timeout=limits, follow_redirects=False, transport=transport, verify=provider_tls()
    )
    async with client:
        catalog = settings.catalog()
        providers = {name: build_provider(spec, settings, client) for name, spec in catalog.items()}
        yield ModelRegistry(providers, settings.model_spec(None).name)
