"""Per-tenant rate limits and quotas: 429 with Retry-After for the tenant over its limit, nobody else slowed; shared
by every replica on the Redis store (issue 11, item 5)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aegis_online.serve.app import create_app
from tests.state.services import Services, services, unique

from .helpers import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, bearer, conversation, make_service

LIMITS = {
    "default": {"moderate": [{"rate": 1000, "per": "second"}]},
    "tenants": {
        "acme": {
            "moderate": [{"rate": 3, "per": "minute"}, {"rate": 1000, "per": "day"}],
            "feedback": [{"rate": 2, "per": "hour"}],
        }
    },
}


def _moderate(client: TestClient, key: str) -> Any:
    return client.post("/v1/moderate", json=conversation("hi"), headers=bearer(key))


def test_a_tenant_over_its_limit_gets_429_with_retry_after_and_no_one_else_does(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(rate_limits=LIMITS)
    assert [_moderate(client, ACME_KEY).status_code for _ in range(3)] == [200, 200, 200]
    refused = _moderate(client, ACME_KEY)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one token back every 20 s
    assert _moderate(client, GLOBEX_KEY).status_code == 200  # another tenant, its own (default) buckets
    assert _moderate(client, ADMIN_KEY).status_code == 200  # operators are not limited
    openai = client.post("/v1/moderations", json={"input": "hi"}, headers=bearer(ACME_KEY))
    assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limited"


def test_an_openai_call_costs_one_unit_per_input_and_one_larger_than_the_burst_is_413(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(rate_limits=LIMITS)
    two = client.post("/v1/moderations", json={"input": ["a", "b"]}, headers=bearer(ACME_KEY))
    assert two.status_code == 200
    assert _moderate(client, ACME_KEY).status_code == 200
    assert _moderate(client, ACME_KEY).status_code == 429
    four = client.post("/v1/moderations", json={"input": ["a", "b", "c", "d"]}, headers=bearer(ACME_KEY))
    assert four.status_code == 413 and four.json()["error"]["code"] == "exceeds_burst"


def test_feedback_is_limited_per_event(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(rate_limits=LIMITS)
    ids = [_moderate(client, ACME_KEY).json()["request_id"] for _ in range(3)]
    events = [{"request_id": r, "label": "safe"} for r in ids[:2]]
    assert client.post("/v1/feedback", json={"events": events}, headers=bearer(ACME_KEY)).status_code == 202
    late = client.post("/v1/feedback", json={"request_id": ids[2], "label": "safe"}, headers=bearer(ACME_KEY))
    assert late.status_code == 429 and int(late.headers["Retry-After"]) >= 1


@pytest.fixture(scope="module")
def servers() -> Services:
    return services()


@pytest.fixture()
def two_replicas(servers: Services) -> Iterator[tuple[TestClient, TestClient]]:
    """Two ingress apps on one Redis, as two replicas of a deployment are."""
    sections = {"store": {"kind": "redis", "redis_url": servers.redis_url, "prefix": unique("rl") + ":"}}
    with (
        TestClient(create_app(make_service(rate_limits=LIMITS, **sections)), raise_server_exceptions=False) as one,
        TestClient(create_app(make_service(rate_limits=LIMITS, **sections)), raise_server_exceptions=False) as two,
    ):
        yield one, two


def test_replicas_on_one_redis_share_a_tenants_buckets(two_replicas: tuple[TestClient, TestClient]) -> None:
    one, two = two_replicas
    codes = [_moderate(client, ACME_KEY).status_code for client in (one, two, one, two)]
    assert codes == [200, 200, 200, 429]
