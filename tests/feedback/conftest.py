"""Fixtures of the feedback tests: the real servers (``tests/state/services.py``), a Redis client, key prefixes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from state.services import Services, services, unique  # tests/ is on sys.path: tests/feedback is a package


@pytest.fixture(scope="session")
def servers() -> Services:
    return services()


@pytest.fixture()
def redis_client(servers: Services) -> Iterator[object]:
    from aegis_online.state.redis_store import connect

    client = connect(servers.redis_url)
    yield client
    client.close()


@pytest.fixture()
def prefix(redis_client: object) -> Iterator[str]:
    name = unique("fb") + ":"
    yield name
    keys = list(redis_client.scan_iter(match=name + "*", count=1000))
    for start in range(0, len(keys), 1000):
        redis_client.delete(*keys[start : start + 1000])
