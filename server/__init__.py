"""Parley's I/O shell: the Starlette app, WebSocket and REST endpoints, persistence, CLI."""
