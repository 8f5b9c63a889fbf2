"""What a person or a crawler finds without reading the docs first: the root says what
this is and where to go, ``/api/v1/docs`` is an interactive page of the API (Swagger UI
from the pinned ``swagger-ui-bundle-v2`` package, served from here: no CDN), and
``GET /api/v1/models`` lists the models a session may use."""

from __future__ import annotations

from typing import Literal

import swagger_ui_bundle  # type: ignore[import-untyped]
from pydantic import Field
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from parley.authz.roles import Capability
from parley.server.http.models import Strict
from parley.server.http.rest import Operation
from parley.server.state import AppState
from parley.server.version import version

OPENAPI = "/api/v1/openapi.json"
DOCS = "/api/v1/docs"
ASSETS = f"{DOCS}/assets"

DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Parley API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
</head>
<body>
<div id="swagger"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{url: "{OPENAPI}", dom_id: "#swagger", deepLinking: true,
  persistAuthorization: false, tryItOutEnabled: false}});
</script>
</body>
</html>
"""


async def root(_: Request) -> Response:
    return JSONResponse(
        {
            "name": "parley",
            "version": version(),
            "about": "A server for shared, multi-user AI sessions.",
            "links": {
                "demo": "/demo/",
                "api": OPENAPI,
                "api_docs": DOCS,
                "health": "/healthz",
                "ready": "/readyz",
                "websocket": "/ws/sessions/{session_id}",
            },
        }
    )


async def docs(_: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


class ModelOut(Strict):
    name: str
    kind: Literal["openai", "anthropic", "offline"]
    model: str = Field(description="The upstream model id (empty for the offline model)")
    context_window_tokens: int
    reserved_output_tokens: int
    default: bool = Field(description="Sessions without a model of their own use this one")


class ModelList(Strict):
    models: list[ModelOut]


async def list_models(state: AppState) -> ModelList:
    """The models configured (``PARLEY_MODELS``) that a session's ``model`` may name."""
    default = state.settings.model_spec(None).name
    return ModelList(
        models=[
            ModelOut(
                name=spec.name,
                kind=spec.kind,
                model=spec.model,
                context_window_tokens=spec.context_window_tokens,
                reserved_output_tokens=spec.reserved_output_tokens,
                default=spec.name == default,
            )
            for spec in state.settings.catalog().values()
        ]
    )


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/models",
        list_models,
        "The models a session may use (admin key, or any member's client token)",
        capability=Capability.READ_SESSION,
        own_session=True,
        response=ModelList,
    ),
]

ROUTES: list[BaseRoute] = [
    Route("/", root, methods=["GET"]),
    Route(DOCS, docs, methods=["GET"]),
    Mount(ASSETS, app=StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="api-docs"),
]
