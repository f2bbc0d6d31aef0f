"""With the store unreachable the service keeps answering from cached weights and says it is degraded; weights are
never older than the staleness bound while the store answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient

from aegis_online.policy import TenantPolicy
from aegis_online.serve.resilience import (
    CachedLearnerStore,
    DependencyHealth,
    ResilientPredictionLog,
)
from aegis_online.state import (
    WRITTEN,
    CachedPolicyStore,
    GroupWrite,
    LearnerRecord,
    LearnerStore,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    StoreUnavailableError,
)
from tests.helpers import wait_until

from .helpers import ACME_KEY, KeywordExpert, bearer, conversation


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Switch:
    """Breaks every call of the wrapped store while ``down``."""

    down = False
    calls = 0

    def check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailableError("redis: Connection refused")


class FlakyLearnerStore(LearnerStore):
    def __init__(self, inner: LearnerStore, switch: Switch) -> None:
        self.inner, self.switch = inner, switch

    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        self.switch.check()
        return self.inner.load(keys)

    def compare_and_set(self, writes: Sequence[GroupWrite], event_id: str | None = None) -> list[str]:
        self.switch.check()
        return self.inner.compare_and_set(writes, event_id)


class FlakyPolicies(PolicyStore):
    def __init__(self, inner: PolicyStore, switch: Switch) -> None:
        self.inner, self.switch = inner, switch

    def get(self, tenant: str) -> TenantPolicy | None:
        self.switch.check()
        return self.inner.get(tenant)

    def put(self, policy: TenantPolicy) -> None:
        self.switch.check()
        self.inner.put(policy)


class FlakyLog(PredictionLog):
    def __init__(self, inner: PredictionLog, switch: Switch) -> None:
        self.inner, self.switch = inner, switch

    def put(self, record: PredictionRecord) -> None:
        self.switch.check()
        self.inner.put(record)

    def get(self, request_id: str) -> PredictionRecord | None:
        self.switch.check()
        return self.inner.get(request_id)


def record(value: float) -> LearnerRecord:
    return LearnerRecord(state=np.array([value]))


def put(store: LearnerStore, event_id: str, new: LearnerRecord) -> None:
    """Write key ``k`` as a feedback event does: compare-and-set on the version just read."""
    (current,) = store.load(["k"])
    write = GroupWrite(("k",), (None if current is None else current.updates,), (new,))
    assert store.compare_and_set([write], event_id) == [WRITTEN]


def test_cached_weights_are_served_within_the_staleness_bound() -> None:
    clock, switch = Clock(), Switch()
    inner = MemoryLearnerStore()
    put(inner, "e1", record(1.0))
    store = CachedLearnerStore(FlakyLearnerStore(inner, switch), DependencyHealth(clock=clock), 1.0, clock=clock)
    assert store.load(["k"])[0].state[0] == 1.0 and switch.calls == 1
    put(inner, "e2", record(2.0))  # another process writes
    clock.now += 0.3
    assert store.load(["k"])[0].state[0] == 1.0 and switch.calls == 1  # fresh enough: no round trip
    clock.now += 0.8  # older than the bound: loaded before answering
    assert store.load(["k"])[0].state[0] == 2.0 and switch.calls == 2


def test_ageing_weights_are_refreshed_in_the_background() -> None:
    clock, switch = Clock(), Switch()
    inner = MemoryLearnerStore()
    put(inner, "e1", record(1.0))
    store = CachedLearnerStore(FlakyLearnerStore(inner, switch), DependencyHealth(clock=clock), 1.0, clock=clock)
    store.load(["k"])
    put(inner, "e2", record(2.0))
    clock.now += 0.6  # past half the bound: answered from cache, refreshed behind
    assert store.load(["k"])[0].state[0] == 1.0
    assert wait_until(lambda: store.load(["k"])[0].state[0] == 2.0, 5)


def test_an_unreachable_store_is_answered_from_cache_and_retried_sparingly() -> None:
    clock, switch = Clock(), Switch()
    inner = MemoryLearnerStore()
    put(inner, "e1", record(1.0))
    health = DependencyHealth(retry_after_s=1.0, clock=clock)
    store = CachedLearnerStore(FlakyLearnerStore(inner, switch), health, 0.5, clock=clock)
    store.load(["k"])
    switch.down = True
    clock.now += 10
    assert store.load(["k", "never-seen"])[0].state[0] == 1.0
    assert store.load(["never-seen"]) == [None]  # the learner's prior
    assert health.degraded and "Connection refused" in health.describe()
    calls = switch.calls
    for _ in range(50):
        store.load(["k"])
    assert switch.calls == calls  # the circuit is open: no call per request
    switch.down = False
    clock.now += 1.5
    assert store.load(["k"])[0].state[0] == 1.0 and not health.degraded


def test_writes_go_through_and_invalidate_the_cached_keys() -> None:
    clock = Clock()
    inner = MemoryLearnerStore()
    store = CachedLearnerStore(inner, DependencyHealth(clock=clock), 60.0, clock=clock)
    assert store.load(["k"]) == [None]
    put(store, "e1", record(3.0))
    assert store.load(["k"])[0].state[0] == 3.0


def test_policies_survive_an_outage_and_failed_writes_raise() -> None:
    clock, switch = Clock(), Switch()
    health = DependencyHealth(clock=clock)
    store = CachedPolicyStore(
        FlakyPolicies(MemoryPolicyStore([TenantPolicy(tenant="a")]), switch), 5.0, health=health, clock=clock
    )
    assert store.get("a").tenant == "a"
    switch.down = True
    clock.now += 60
    assert store.get("a").tenant == "a" and health.degraded
    with pytest.raises(StoreUnavailableError):
        store.put(TenantPolicy(tenant="b"))


def test_prediction_writes_that_fail_are_counted_not_raised() -> None:
    switch = Switch()
    health = DependencyHealth()
    log = ResilientPredictionLog(FlakyLog(MemoryPredictionLog(), switch), health)
    switch.down = True
    log.put(PredictionRecord("r", "t", "prompt", 0.0, ("a",), ("S1",), np.zeros((1, 1)), np.zeros(1)))
    assert log.dropped == 1 and health.degraded
    with pytest.raises(StoreUnavailableError):
        log.get("r")


def test_the_service_answers_from_cache_and_reports_degraded_while_the_store_is_down(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory([KeywordExpert("a", {"S1": ("kill",)}), KeywordExpert("b", {"S1": ("kill",)})])
    service = client.app.state.service
    switch, health = Switch(), DependencyHealth(retry_after_s=0.2)
    engine = service.engine
    engine.store = CachedLearnerStore(FlakyLearnerStore(engine.store, switch), health, 0.01)
    engine.prediction_log = ResilientPredictionLog(FlakyLog(engine.prediction_log, switch), health)
    engine.policies = CachedPolicyStore(FlakyPolicies(engine.policies, switch), 0.01, health=health)
    service.health.store = health
    headers = bearer(ACME_KEY)
    before = client.post("/v1/moderate", json=conversation("kill"), headers=headers)
    assert before.status_code == 200
    switch.down = True
    for _ in range(3):
        response = client.post("/v1/moderate", json=conversation("kill"), headers=headers)
        assert response.status_code == 200 and response.json()["action"] == "block"
    ready = client.get("/readyz").json()
    assert ready["status"] == "degraded" and "answering from cached weights" in ready["checks"]["store"]["detail"]
    assert "aegis_store_degraded 1.0" in client.get("/metrics").text
    # feedback is queued unverified (the worker checks it again); a policy write is refused with 503
    logged = before.json()["request_id"]  # logged before the outage (those during it were not)
    queued = client.post("/v1/feedback", json={"request_id": logged, "label": "unsafe"}, headers=headers)
    assert queued.status_code == 202
    refused = client.put("/v1/tenants/acme/policy", json={}, headers=bearer("test-admin-key-0000000000000001"))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    switch.down = False  # the store is back: the queued event is applied
    assert wait_until(lambda: service.worker.stats.applied == 1, 10)
