"""The real service for the client's tests: ``serve.app.create_app`` over instant keyword experts, under uvicorn on
a loopback port (no Ray), with the API keys of ``tests/serve/helpers.py``; one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aegis_online.serve.app import create_app
from tests.serve.helpers import make_service, uvicorn_server


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with uvicorn_server(create_app(make_service())) as url:
        yield url
