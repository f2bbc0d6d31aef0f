"""Fixtures shared by the test packages that need the real servers (state, feedback): the servers themselves
(``tests/state/services.py``: from ``.ci/services.sh``'s environment, or started once per session), a Redis client
on them, and a key prefix no other test uses. Nothing here starts a server until a test asks for one.

Also how ``make test`` runs the suite: first every test but the ``serial`` ones on two pytest-xdist workers, a file
at a time and the files that hold ``slow`` tests first (so that no worker is left alone with a long file at the
end); then the ``serial`` tests on their own, in one process. They are the tests that start Ray (on two cores beside
another worker Ray misses its own start-up checks: Serve's proxy must answer within 5 s; the files of
``ray_session`` share one cluster), and schemathesis's, whose items all have one node id (xdist would run one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.state.services import Services, services, unique

#: Files whose every test runs in the serial phase: those that start Ray (the shared ``ray_session`` of
#: tests/serve/conftest.py, or a service of their own) and schemathesis's.
SERIAL_FILES = frozenset(
    f"tests/serve/{name}.py"
    for name in (
        "test_ray_serve",
        "test_kuberay",
        "test_ray_cascade",
        "test_ray_exposure",
        "test_serve_signals",
        "test_schemathesis",
    )
)


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the tests of ``SERIAL_FILES`` ``serial``; puts the files that hold ``slow`` tests first (a stable sort:
    each file keeps its own order). Under xdist, two parallel items with one node id are an error: the scheduler
    knows items by node id, and would run one of them."""
    for item in items:
        if file_of(item.nodeid) in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
    if hasattr(config, "workerinput"):
        ids = Counter(item.nodeid for item in items if not item.get_closest_marker("serial"))
        if twice := sorted(nodeid for nodeid, n in ids.items() if n > 1):
            raise pytest.UsageError(f"tests sharing a node id cannot run under xdist (mark them serial): {twice}")
    slow = {file_of(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: file_of(item.nodeid) not in slow)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        """A file at a time, in collection order (xdist's own file scheduling reorders files by their number of
        tests, which puts the few long tests last)."""

        def _split_scope(self, nodeid: str) -> str:
            return file_of(nodeid)

    config.option.loadscopereorder = False
    return ByFile(config, log)


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
