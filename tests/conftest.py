"""Fixtures shared by the suites that use the app: its module, a launched server, a client."""

from __future__ import annotations

import pytest
from _app_server import import_app, served
from gradio_client import Client


@pytest.fixture(scope="module")
def app():
    """The app module, imported once per test module (the tiny offline model)."""
    return import_app()


@pytest.fixture(scope="module")
def url(app):
    """The app launched on a free port of 127.0.0.1, for the test module's duration."""
    with served(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)
