"""The Redis stores against a real redis-server: same results as the memory store, exact doubles, one hash slot per
script call, NOSCRIPT after a restart handled, races between writers resolved, TTLs, and clean failures."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from aegis_online.feedback import loadgen
from aegis_online.policy import TenantPolicy
from aegis_online.state import (
    WRITTEN,
    GroupWrite,
    LearnerRecord,
    MemoryLearnerStore,
    MemoryPredictionLog,
    StoreUnavailableError,
)
from aegis_online.state.redis_store import RedisLearnerStore, RedisPolicyStore, RedisPredictionLog, connect
from aegis_online.weights import FeedbackApplier

from .test_batch_apply import EXPERTS, assert_same_states, make_engine, scenario


def applier_on(client, prefix: str, **store_options) -> FeedbackApplier:
    return FeedbackApplier(
        EXPERTS,
        store=RedisLearnerStore(client, prefix, **store_options),
        prediction_log=RedisPredictionLog(client, prefix),
        policies=RedisPolicyStore(client, prefix),
    )


def plans_for(engine: FeedbackApplier, records, events, stream: str = "topic:0"):
    return [(engine.plan(e, r), stream, i) for i, (e, r) in enumerate(zip(events, records, strict=True))]


def test_batches_in_redis_equal_the_memory_store_bit_for_bit(redis_client, prefix) -> None:
    records, events = scenario(11)
    memory, redis = make_engine(), applier_on(redis_client, prefix)
    for batch_start in range(0, len(events), 90):
        part = slice(batch_start, batch_start + 90)
        memory.apply_batch(plans_for(memory, records, events)[part])
        redis.apply_batch(plans_for(redis, records, events)[part])
    expected = memory.store.keys()
    for key, want, got in zip(expected, memory.store.load(expected), redis.store.load(expected), strict=True):
        assert got is not None and got.updates == want.updates and dict(got.marks) == dict(want.marks), key
        assert got.state.tobytes() == want.state.tobytes(), key


def test_the_direct_path_is_idempotent_per_event_id_and_equals_memory(redis_client, prefix) -> None:
    records, events = scenario(12, n=60)
    memory, redis = make_engine(), applier_on(redis_client, prefix)
    redis.prediction_log.put_many(records)
    for r in records:
        memory.prediction_log.put(r)
    for event in events:
        assert memory.apply(event).applied and redis.apply(event).applied
        assert not redis.apply(event).applied  # a retried send
    for key, want, got in zip(
        memory.store.keys(), memory.store.load(memory.store.keys()), redis.store.load(memory.store.keys()), strict=True
    ):
        assert got.state.tobytes() == want.state.tobytes() and got.updates == want.updates, key


def test_special_doubles_round_trip_exactly_through_redis(redis_client, prefix) -> None:
    store = RedisLearnerStore(redis_client, prefix)
    state = np.array([0.1, 1 / 3, -0.0, 5e-324, np.inf, -np.inf, np.nan, 1.7976931308623157e308])
    write = GroupWrite(("k:{t}:S1",), (None,), (LearnerRecord(state=state, updates=1),))
    assert store.compare_and_set([write], "e1") == [WRITTEN]
    (back,) = store.load(["k:{t}:S1"])
    assert back.state.tobytes() == state.tobytes()


def test_every_script_call_touches_one_hash_slot_and_keys_carry_the_tenant_tag(
    redis_client, prefix, monkeypatch
) -> None:
    from redis.crc import key_slot

    from aegis_online.state import redis_store

    calls = []
    original = redis_store._Script.run_many

    def spy(self, batch):
        calls.extend(batch)
        return original(self, batch)

    monkeypatch.setattr(redis_store._Script, "run_many", spy)
    records, events = scenario(13, n=120)
    engine = applier_on(redis_client, prefix)
    engine.apply_batch(plans_for(engine, records, events))
    engine.prediction_log.put_many(records[:5])
    for e in events[:5]:
        engine.apply(e.model_copy(update={"event_id": "direct-" + e.request_id}))
    assert calls
    tags = set()
    for keys, _ in calls:
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        tags.add(keys[0].split("{")[1].split("}")[0])
    assert "global" in tags and {r.tenant for r in records} <= tags


def test_a_flushed_script_cache_is_reloaded_noscript(redis_client, prefix) -> None:
    records, events = scenario(14, n=40)
    engine = applier_on(redis_client, prefix)
    engine.apply_batch(plans_for(engine, records, events)[:20])
    redis_client.script_flush()  # what a restart or a failover leaves
    assert all(engine.apply_batch(plans_for(engine, records, events)[20:]).applied)
    redis_client.script_flush()
    engine.prediction_log.put(records[0])
    assert engine.apply(events[0].model_copy(update={"event_id": "after-flush"})).applied


def test_racing_writers_of_the_same_keys_lose_nothing(redis_client, prefix, servers) -> None:
    """Two workers with different partitions write the same global keys; each loses races and recomputes."""
    records, events = scenario(15, n=600)
    plans = plans_for(applier_on(redis_client, prefix), records, events)
    results = []

    def writer(stream: str, part) -> None:
        engine = applier_on(connect(servers.redis_url), prefix)
        conflicts = 0
        for start in range(0, len(part), 25):
            conflicts += engine.apply_batch([(p, stream, i) for p, _, i in part[start : start + 25]]).conflicts
        results.append(conflicts)

    threads = [threading.Thread(target=writer, args=(f"topic:{n}", plans[n::2])) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine = applier_on(redis_client, prefix)
    counts: dict[str, int] = {}
    for plan, _, _ in plans:
        for key in plan.trained_keys:
            counts[key] = counts.get(key, 0) + 1
    loaded = engine.store.load(list(counts))
    assert {k: r.updates for k, r in zip(counts, loaded, strict=True)} == counts  # every update landed, once
    assert sum(results) > 0, "the writers never raced: the test proves nothing"


def test_a_batch_cut_off_between_its_tenant_and_global_writes_completes_once(redis_client, prefix, monkeypatch) -> None:
    records, events = scenario(16, n=200)
    engine = applier_on(redis_client, prefix)
    store = engine.store
    phases_seen = []
    real_run = type(store._cas).run_many

    def crash_before_global(self, calls):
        if any("{global}" in keys[0] for keys, _ in calls):
            phases_seen.append("global")
            raise __import__("redis").exceptions.ConnectionError("connection lost mid-batch")
        return real_run(self, calls)

    monkeypatch.setattr(type(store._cas), "run_many", crash_before_global)
    with pytest.raises(StoreUnavailableError):
        engine.apply_batch(plans_for(engine, records, events))
    monkeypatch.setattr(type(store._cas), "run_many", real_run)
    assert phases_seen  # the tenant groups were written, the global group was not
    engine.apply_batch(plans_for(engine, records, events))  # the redelivery: tenant keys skip, global ones apply
    reference = make_engine()
    for e, r in zip(events, records, strict=True):
        reference.prediction_log.put(r)
        reference.apply(e)
    keys = reference.store.keys()
    for key, want, got in zip(keys, reference.store.load(keys), engine.store.load(keys), strict=True):
        assert got.updates == want.updates and got.state.tobytes() == want.state.tobytes(), key


def test_predictions_expire_and_come_back_in_bulk(redis_client, prefix) -> None:
    log = RedisPredictionLog(redis_client, prefix, ttl_s=0.3)
    records = loadgen.predictions(3, ["acme"], EXPERTS, np.random.default_rng(1))
    log.put(records[0])
    log.put_many(records[1:])
    got = log.get_many([r.request_id for r in records] + ["never-logged"])
    assert [g.request_id for g in got[:3]] == [r.request_id for r in records] and got[3] is None
    assert 0 < redis_client.pttl(log.key(records[0].request_id)) <= 300
    time.sleep(0.45)
    assert log.get(records[0].request_id) is None


def test_policies_round_trip(redis_client, prefix) -> None:
    store = RedisPolicyStore(redis_client, prefix)
    assert store.get("acme") is None
    policy = TenantPolicy(tenant="acme", strictness="strict", categories={"violence": {"threshold": 0.3}})
    store.put(policy)
    assert store.get("acme") == policy
    assert store.key("acme").endswith("{acme}")


def test_an_unreachable_server_is_a_retryable_error_not_a_crash() -> None:
    from .services import spare_port

    client = connect(f"redis://127.0.0.1:{spare_port()}/0", timeout_s=0.5)
    engine = applier_on(client, "down:")
    records, events = scenario(17, n=3)
    with pytest.raises(StoreUnavailableError):
        engine.prediction_log.get_many(["x"])
    with pytest.raises(StoreUnavailableError):
        engine.apply_batch([(make_engine().plan(events[0], records[0]), "t:0", 1)])


def test_the_memory_and_redis_prediction_logs_agree(redis_client, prefix) -> None:
    records = loadgen.predictions(20, ["a", "b"], EXPERTS, np.random.default_rng(2))
    records = [dataclasses.replace(r, input_digest=f"digest-{i}") for i, r in enumerate(records)]
    memory, redis = MemoryPredictionLog(), RedisPredictionLog(redis_client, prefix)
    for r in records:
        memory.put(r)
        redis.put(r)
    for want, got in zip(
        memory.get_many([r.request_id for r in records]), redis.get_many([r.request_id for r in records]), strict=True
    ):
        np.testing.assert_equal(dataclasses.asdict(got), dataclasses.asdict(want))  # NaN (asleep) equals NaN
    assert MemoryLearnerStore().load(["x"]) == [None]
    assert_same_states(make_engine(), make_engine())


def test_a_write_no_replica_acknowledged_is_not_confirmed_but_completes_once_on_retry(redis_client, prefix) -> None:
    records, events = scenario(18, n=30)
    strict = applier_on(redis_client, prefix, wait_replicas=1, wait_timeout_ms=50)  # the test server has none
    plans = plans_for(strict, records, events)
    with pytest.raises(StoreUnavailableError, match="replicas acknowledged"):
        strict.apply_batch(plans)  # the worker would not commit; Kafka re-delivers
    relaxed = applier_on(redis_client, prefix)
    relaxed.apply_batch(plans)  # the redelivery completes what was written, once
    reference = make_engine()
    reference.apply_batch(plans_for(reference, records, events))
    keys = reference.store.keys()
    for want, got in zip(reference.store.load(keys), relaxed.store.load(keys), strict=True):
        assert got.updates == want.updates and got.state.tobytes() == want.state.tobytes()
