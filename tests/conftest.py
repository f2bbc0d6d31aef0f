"""Fixtures shared by the test packages that need the real servers (state, feedback): the servers themselves
(``tests/state/services.py``: from ``.ci/services.sh``'s environment, or started once per session), a Redis client
on them, and a key prefix no other test uses. Nothing here starts a server until a test asks for one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.state.services import Services, services, unique


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
    """A fresh key prefix; its keys are deleted afterwards (never FLUSHDB: the server may be shared)."""
    name = unique("t") + ":"
    yield name
    keys = list(redis_client.scan_iter(match=name + "*", count=1000))
    for start in range(0, len(keys), 1000):
        redis_client.delete(*keys[start : start + 1000])
