"""Redis store fields no other test changed (issue 12, section 4): ``store.policy_cache_s`` and ``store.cluster``,
against the real Redis of ``tests/state/services.py``. The rest of the audit: ``test_config_effects.py``."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from aegis_online.policy import TenantPolicy
from aegis_online.serve.app import create_app
from tests.state.services import Services, services, unique

from .helpers import ACME_KEY, bearer, make_service

ACME = bearer(ACME_KEY)


@pytest.fixture(scope="module")
def servers() -> Services:
    return services()


@pytest.mark.parametrize(("policy_cache_s", "sees_the_change"), [(0, True), (3600, False)])
def test_policy_cache_s_is_how_long_a_policy_changed_elsewhere_goes_unseen(
    servers: Services, policy_cache_s: float, sees_the_change: bool
) -> None:
    prefix = unique("cfg") + ":"
    store = {"kind": "redis", "redis_url": servers.redis_url, "prefix": prefix, "policy_cache_s": policy_cache_s}
    with TestClient(create_app(make_service(store=store)), raise_server_exceptions=False) as client:
        assert client.get("/v1/tenants/acme/policy", headers=ACME).json()["strictness"] == "balanced"
        # another replica (or an operator's script) changes the policy in Redis
        changed = TenantPolicy(tenant="acme", strictness="strict").model_dump_json()
        redis.Redis.from_url(servers.redis_url).set(f"{prefix}policy:{{acme}}", changed)
        seen = client.get("/v1/tenants/acme/policy", headers=ACME).json()["strictness"]
    assert (seen == "strict") is sees_the_change


def test_cluster_makes_the_store_speak_the_cluster_protocol(servers: Services) -> None:
    store = {"kind": "redis", "redis_url": servers.redis_url, "prefix": unique("cfg") + ":"}
    make_service(store=store)  # a plain server: fine as it is
    with pytest.raises(redis.exceptions.RedisClusterException, match="Cluster mode is not enabled"):
        make_service(store=store | {"cluster": True})  # asks the server for its cluster slots, which it has not
