"""Fixtures of the service tests: apps under Starlette's TestClient, and the one Ray session every Ray test shares
(started only when such a test runs; always shut down, even when a test fails)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aegis_online.experts import Expert
from aegis_online.serve.app import create_app

from .helpers import make_service, spare_port

#: A server script the restart tests run as a subprocess (it imports ``helpers`` as a top-level module), not tests.
collect_ignore = ["restart_server.py"]


@pytest.fixture
def service_factory() -> Iterator[Callable[..., TestClient]]:
    """Builds apps and opens their TestClient (lifespan included); closes them all at the end."""
    clients: list[TestClient] = []

    def build(experts: Sequence[Expert] | None = None, **kwargs: Any) -> TestClient:
        client = TestClient(create_app(make_service(experts, **kwargs)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(service_factory: Callable[..., TestClient]) -> TestClient:
    return service_factory()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[dict[str, Any]]:
    """One local Ray + Serve for every Ray test of the session, on 127.0.0.1 and a spare port; always shut down.

    ``start_ray`` closes it as the service's is (loopback only, token auth), so every Ray test runs that way."""
    from aegis_online.rayserve import sessions
    from aegis_online.rayserve.runtime import start_ray, start_serve, stop_ray

    temp_dir = sessions.create()
    port = spare_port()
    try:
        start_ray(address="local", temp_dir=temp_dir, num_cpus=os.cpu_count() or 2)
        start_serve("127.0.0.1", port)
        yield {"host": "127.0.0.1", "port": port, "url": f"http://127.0.0.1:{port}"}
    finally:
        stop_ray(temp_dir)
