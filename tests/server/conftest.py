"""Fixtures of the server's tests: the worker's Chromium (``tests.server.demo_browser``)."""

from tests.server.demo_browser import browser, chromium_process

__all__ = ["browser", "chromium_process"]
