"""``FeedbackApplier.apply_batch`` (the worker's path) equals ``FeedbackApplier.apply`` event by event, applies
each stream position once however it is redelivered. (The SQLite store's survival of a restart:
test_sqlite_store.py.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aegis_online.feedback import loadgen
from aegis_online.learn import DEFAULT_LEARNER
from aegis_online.schemas import FeedbackEvent
from aegis_online.state import LearnerRecord, MemoryLearnerStore, MemoryPredictionLog
from aegis_online.weights import FeedbackApplier, keyspace
from aegis_online.weights.keyspace import personalised_states

EXPERTS = ("a", "b", "c", "d")


def make_engine(learner: str = DEFAULT_LEARNER, store=None) -> FeedbackApplier:
    return FeedbackApplier(EXPERTS, learner, store=store or MemoryLearnerStore(), prediction_log=MemoryPredictionLog())


def mixed_events(records, rng: np.random.Generator) -> list[FeedbackEvent]:
    """Per-category labels, 'safe' over every category, and 'unsafe' verdicts, in random order."""
    events = []
    for i, r in enumerate(records):
        kind = rng.integers(3)
        if kind == 0:
            events.append(loadgen.feedback([r], rng, labels_per_event=int(rng.integers(1, 4)), first_id=i)[0])
        else:
            label = "safe" if kind == 1 else "unsafe"
            trusted = bool(rng.integers(2))  # half train the global weights too, half only the tenant's
            events.append(
                FeedbackEvent(request_id=r.request_id, tenant=r.tenant, label=label, event_id=f"e{i}", trusted=trusted)
            )
    return events


def scenario(seed: int, n: int = 400, bandit: bool = False):
    rng = np.random.default_rng(seed)
    records = loadgen.predictions(n, [f"t{i}" for i in range(7)], EXPERTS, rng, categories=("S1", "S2", "S8", "S12"))
    if bandit:
        records = [r.__class__(**{**r.__dict__, "propensities": rng.uniform(0.2, 1.0, len(EXPERTS))}) for r in records]
    return records, mixed_events(records, rng)


def assert_same_states(expected: FeedbackApplier, actual: FeedbackApplier) -> None:
    keys = expected.store.keys()
    assert sorted(keys) == sorted(actual.store.keys())
    for key, want, got in zip(keys, expected.store.load(keys), actual.store.load(keys), strict=True):
        assert got.updates == want.updates, key
        np.testing.assert_array_equal(got.state, want.state, err_msg=key)  # bit for bit, not approximately


@pytest.mark.parametrize(
    ("learner", "seed"),
    [("default", 1), (DEFAULT_LEARNER, 2), ("hedge", 3), ("adanormalhedge", 4), ("hedge+adaptive", 5)],
)
def test_a_batch_equals_the_events_applied_one_by_one(learner: str, seed: int) -> None:
    records, events = scenario(seed)
    one, batch = make_engine(learner), make_engine(learner)
    for r in records:
        one.prediction_log.put(r)
        batch.prediction_log.put(r)
    for event in events:
        one.apply(event)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(events)), size=6, replace=False))
    planned = [(batch.plan(e, batch.prediction_log.get(e.request_id)), "topic:0", i) for i, e in enumerate(events)]
    for part in np.split(np.arange(len(events)), cuts):
        result = batch.apply_batch([planned[i] for i in part])
        assert all(result.applied)
    assert_same_states(one, batch)


def test_a_bandit_batch_equals_the_events_applied_one_by_one() -> None:
    records, events = scenario(5, n=200, bandit=True)
    one, batch = make_engine("exp3-ix"), make_engine("exp3-ix")
    for r in records:
        one.prediction_log.put(r)
        batch.prediction_log.put(r)
    for event in events:
        one.apply(event)
    batch.apply_batch([(batch.plan(e, r), "t:0", i) for i, (e, r) in enumerate(zip(events, records, strict=True))])
    assert_same_states(one, batch)


def test_redelivered_positions_change_nothing_and_new_ones_still_apply() -> None:
    records, events = scenario(6)
    engine = make_engine()
    planned = [(engine.plan(e, r), "topic:3", 100 + i) for i, (e, r) in enumerate(zip(events, records, strict=True))]
    assert all(engine.apply_batch(planned[:250]).applied)
    before = {
        k: r.state.copy() for k, r in zip(engine.store.keys(), engine.store.load(engine.store.keys()), strict=True)
    }
    again = engine.apply_batch(planned[100:250])  # a redelivery after a crash before the commit
    assert not any(again.applied)
    for key, record in zip(before, engine.store.load(list(before)), strict=True):
        np.testing.assert_array_equal(record.state, before[key])
    overlap = engine.apply_batch(planned[200:])  # part seen, part new
    assert overlap.applied == [False] * 50 + [True] * (len(planned) - 250)
    reference = make_engine()
    for e, r in zip(events, records, strict=True):
        reference.prediction_log.put(r)
        reference.apply(e)
    assert_same_states(reference, engine)


def test_watermarks_are_per_stream_so_partitions_do_not_shadow_each_other() -> None:
    records, events = scenario(7, n=20)
    engine = make_engine()
    plans = [engine.plan(e, r) for e, r in zip(events, records, strict=True)]
    assert all(engine.apply_batch([(p, "topic:0", 50) for p in plans[:1]]).applied)
    assert all(engine.apply_batch([(p, "topic:1", 3) for p in plans[1:2]]).applied)  # lower offset, other stream
    marks = engine.store.load([engine.keyspace.key("global", next(iter(plans[0].labels)))])[0].marks
    assert marks["topic:0"] == 50


def test_a_state_of_another_layout_is_read_as_no_state_and_replaced_by_the_next_update(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A learner's state that an older version wrote with fewer statistics (the cascade's grew) fails no request
    and no event: it reads as no state yet, with one warning however often it is read, and the next update writes
    the current layout."""
    monkeypatch.setattr(keyspace, "_warned", set())
    records, events = scenario(7, n=80)
    engine = make_engine("default+cascade-2-3+adaptive")
    for event, record in zip(events[:40], records[:40], strict=True):
        engine.prediction_log.put(record)
        engine.apply(event)
    store, size = engine.store, engine.learner.state_size
    written = store.keys()
    for key, old in zip(written, store.load(written), strict=True):  # as an older version wrote them
        store._records[key] = LearnerRecord(old.state[:-2], old.updates, old.marks)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            states, _ = personalised_states(store, engine.keyspace, engine.learner, "t0", ["S1", "S8"], 1)
    np.testing.assert_array_equal(states, engine.learner.init_states(2))
    assert caplog.text.count(f"does not fit {engine.learner.name}'s layout of {size}") == 1
    for event, record in zip(events[40:], records[40:], strict=True):
        engine.prediction_log.put(record)
        engine.apply(event)
    sizes = [r.state.size for r in store.load(store.keys())]
    assert size in sizes and set(sizes) <= {size, size - 2}  # rewritten keys hold the current layout
