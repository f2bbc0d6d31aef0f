"""The one policy cache of the worker and the serving path: bounded (a full cache evicts the least recently used
tenant, only it), a time-to-live on reads, and the last known policy served while the store is down."""

from __future__ import annotations

import threading

import pytest

from aegis_online.policy import TenantPolicy
from aegis_online.serve.resilience import DependencyHealth
from aegis_online.state import CachedPolicyStore, MemoryPolicyStore, PolicyStore, StoreUnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStore(PolicyStore):
    """Counts reads per tenant; raises as an unreachable Redis does while ``down``."""

    def __init__(self, policies: list[TenantPolicy]) -> None:
        self.inner = MemoryPolicyStore(policies)
        self.reads: dict[str, int] = {}
        self.down = False

    def get(self, tenant: str) -> TenantPolicy | None:
        self.reads[tenant] = self.reads.get(tenant, 0) + 1
        if self.down:
            raise StoreUnavailableError("redis: Connection refused")
        return self.inner.get(tenant)

    def put(self, policy: TenantPolicy) -> None:
        if self.down:
            raise StoreUnavailableError("redis: Connection refused")
        self.inner.put(policy)


def policies(*tenants: str) -> list[TenantPolicy]:
    return [TenantPolicy(tenant=t) for t in tenants]


def test_a_full_cache_evicts_the_least_recently_used_tenant_only() -> None:
    store = CountingStore(policies("a", "b", "c", "d"))
    cache = CachedPolicyStore(store, ttl_s=60.0, max_tenants=3, clock=Clock())
    for tenant in ("a", "b", "c"):
        cache.get(tenant)
    cache.get("a")  # a is now the most recently used; b the least
    cache.get("d")  # one tenant too many: b goes, nobody else
    assert store.reads == {"a": 1, "b": 1, "c": 1, "d": 1}
    for tenant in ("a", "c", "d"):
        assert cache.get(tenant).tenant == tenant
    assert store.reads == {"a": 1, "b": 1, "c": 1, "d": 1}  # still hits
    cache.get("b")
    assert store.reads["b"] == 2  # the evicted one is read again


def test_many_new_tenants_never_make_the_hot_tenants_miss() -> None:
    """The old caches were cleared whole at their bound: every tenant missed at once."""
    store = CountingStore(policies("hot"))
    cache = CachedPolicyStore(store, ttl_s=3600.0, max_tenants=100, clock=Clock())
    for i in range(1000):
        cache.get("hot")
        cache.get(f"new-{i}")  # a miss ("no policy") is cached too, and evicted like any other
    assert store.reads["hot"] == 1


def test_an_entry_older_than_the_ttl_is_read_again_and_a_change_is_seen() -> None:
    clock = Clock()
    store = CountingStore(policies("a"))
    cache = CachedPolicyStore(store, ttl_s=5.0, clock=clock)
    assert cache.get("a").strictness == "balanced" and cache.get("missing") is None
    store.inner.put(TenantPolicy(tenant="a", strictness="strict"))  # another replica's write
    clock.now += 4.9
    assert cache.get("a").strictness == "balanced" and store.reads == {"a": 1, "missing": 1}
    clock.now += 0.2
    assert cache.get("a").strictness == "strict" and cache.get("missing") is None
    assert store.reads == {"a": 2, "missing": 2}


def test_a_write_through_the_cache_is_read_back_at_once() -> None:
    store = CountingStore(policies("a"))
    cache = CachedPolicyStore(store, ttl_s=60.0, clock=Clock())
    cache.get("a")
    cache.put(TenantPolicy(tenant="a", strictness="lenient"))
    assert cache.get("a").strictness == "lenient" and store.reads == {"a": 1}
    assert store.inner.get("a").strictness == "lenient"


def test_with_health_the_last_known_policy_is_served_while_the_store_is_down() -> None:
    clock = Clock()
    health = DependencyHealth(retry_after_s=1.0, clock=clock)
    store = CountingStore(policies("a"))
    cache = CachedPolicyStore(store, ttl_s=5.0, health=health, clock=clock)
    assert cache.get("a").tenant == "a"
    store.down = True
    clock.now += 60  # long expired
    assert cache.get("a").tenant == "a" and health.degraded  # stale, but served
    assert cache.get("never-seen") is None  # the default policy applies
    reads = dict(store.reads)
    for _ in range(20):
        assert cache.get("a").tenant == "a"
    assert store.reads == reads  # the circuit is open: no call (no timeout) per request
    with pytest.raises(StoreUnavailableError):
        cache.put(TenantPolicy(tenant="b"))
    store.down = False
    clock.now += 1.5
    assert cache.get("a").tenant == "a" and not health.degraded and store.reads["a"] == reads["a"] + 1


def test_without_health_a_store_error_is_raised() -> None:
    """The feedback worker's case: it retries the whole batch with backoff; a stale policy would not help it."""
    clock = Clock()
    store = CountingStore(policies("a"))
    cache = CachedPolicyStore(store, ttl_s=5.0, clock=clock)
    cache.get("a")
    store.down = True
    assert cache.get("a").tenant == "a"  # fresh: no read
    clock.now += 6
    with pytest.raises(StoreUnavailableError):
        cache.get("a")


def test_concurrent_readers_and_evictions_keep_the_cache_consistent() -> None:
    store = CountingStore(policies(*(f"t{i}" for i in range(50))))
    cache = CachedPolicyStore(store, ttl_s=3600.0, max_tenants=10)
    errors: list[BaseException] = []

    def read(offset: int) -> None:
        try:
            for i in range(2000):
                tenant = f"t{(i + offset) % 50}"
                assert cache.get(tenant).tenant == tenant
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)

    threads = [threading.Thread(target=read, args=(k * 7,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_max_tenants_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tenants"):
        CachedPolicyStore(MemoryPolicyStore(), max_tenants=0)
