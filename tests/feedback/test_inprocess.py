"""The embedded feedback path (in-process queue + worker thread): the same validation, waiting, dead letters and
exactly-once application as with Kafka, with no servers."""

from __future__ import annotations

import json
import time

import numpy as np

from aegis_online.feedback import loadgen
from aegis_online.feedback.inprocess import EmbeddedFeedbackWorker, InProcessFeedbackQueue
from aegis_online.schemas import FeedbackEvent
from aegis_online.state import MemoryLearnerStore, MemoryPredictionLog
from aegis_online.weights import FeedbackApplier

EXPERTS = ("a", "b", "c")


def engine() -> FeedbackApplier:
    return FeedbackApplier(EXPERTS, store=MemoryLearnerStore(), prediction_log=MemoryPredictionLog())


def test_queued_feedback_is_applied_as_if_applied_one_by_one() -> None:
    rng = np.random.default_rng(0)
    records = loadgen.predictions(300, ["t1", "t2", "t3"], EXPERTS, rng)
    events = loadgen.feedback(records, rng, labels_per_event=2)
    served, reference = engine(), engine()
    for r in records:
        served.prediction_log.put(r)
        reference.prediction_log.put(r)
    queue = InProcessFeedbackQueue(partitions=1)  # one partition: the global keys see the reference's order
    worker = EmbeddedFeedbackWorker(served, queue, batch_size=37).start()
    for e in events:
        queue.publish(e).wait()
        reference.apply(e)
    assert worker.drain(10)
    worker.stop()
    assert worker.stats.applied == len(events) and worker.stats.dead_letters == 0
    keys = reference.store.keys()
    for want, got in zip(reference.store.load(keys), served.store.load(keys), strict=True):
        assert got.state.tobytes() == want.state.tobytes() and got.updates == want.updates


def test_refused_events_become_dead_letters_with_a_reason_and_the_worker_carries_on() -> None:
    rng = np.random.default_rng(1)
    served = engine()
    records = loadgen.predictions(3, ["acme"], EXPERTS, rng)
    for r in records:
        served.prediction_log.put(r)
    queue = InProcessFeedbackQueue(partitions=2)
    worker = EmbeddedFeedbackWorker(served, queue, max_event_bytes=2048, wait_for_prediction_s=0.0).start()
    good = FeedbackEvent(request_id=records[0].request_id, tenant="acme", labels={"S1": 1.0})
    queue.publish_raw(b"acme", b"{not json")
    queue.publish_raw(b"acme", b'{"request_id": "x", "tenant": "acme"}')  # neither label nor labels
    queue.publish_raw(b"acme", b"x" * 5000)
    queue.publish(FeedbackEvent(request_id=records[1].request_id, tenant="other", label="safe"))
    queue.publish_raw(b"mallory", good.model_dump_json().encode())  # keyed as another tenant
    queue.publish(FeedbackEvent(request_id="never-logged", tenant="acme", label="safe"))
    queue.publish(FeedbackEvent(request_id=records[2].request_id, tenant="acme", labels={"S5": 1.0, "zzz": 0.0}))
    queue.publish(good)
    assert worker.drain(10)
    worker.stop()
    reasons = [letter.reason for letter in worker.dead_letters.letters]
    assert sorted(reasons) == sorted(
        ["malformed", "malformed", "oversized", "wrong_tenant", "wrong_tenant", "unknown_request", "invalid_feedback"]
    )
    assert worker.stats.applied == 1
    oversized = next(letter for letter in worker.dead_letters.letters if letter.reason == "oversized")
    body = json.loads(oversized.to_json(max_payload_bytes=2048))
    assert body["payload_truncated"] and body["payload_bytes"] == 5000 and "5000 bytes" in body["detail"]


def test_feedback_that_beats_its_prediction_waits_for_it_then_applies() -> None:
    rng = np.random.default_rng(2)
    served = engine()
    record = loadgen.predictions(1, ["acme"], EXPERTS, rng)[0]
    queue = InProcessFeedbackQueue()
    worker = EmbeddedFeedbackWorker(served, queue, wait_for_prediction_s=5.0).start()
    queue.publish(FeedbackEvent(request_id=record.request_id, tenant="acme", label="safe"))
    behind = FeedbackEvent(request_id=record.request_id, tenant="acme", labels={"S1": 1.0}, event_id="2nd")
    queue.publish(behind)  # queued behind the waiting one: its partition keeps its order
    time.sleep(0.5)
    assert worker.stats.applied == 0 and queue.pending() == 2
    served.prediction_log.put(record)
    assert worker.drain(5)
    worker.stop()
    assert worker.stats.applied == 2 and not worker.dead_letters.letters


def test_a_prediction_that_never_comes_is_dead_lettered_after_the_wait() -> None:
    served = engine()
    queue = InProcessFeedbackQueue()
    worker = EmbeddedFeedbackWorker(served, queue, wait_for_prediction_s=0.3).start()
    started = time.monotonic()
    queue.publish(FeedbackEvent(request_id="lost", tenant="acme", label="safe"))
    assert worker.drain(5)
    worker.stop()
    assert 0.25 <= time.monotonic() - started < 3
    (letter,) = worker.dead_letters.letters
    assert letter.reason == "unknown_request" and "waited 0.3 s" in letter.detail


def test_a_poisoned_record_is_set_aside_and_the_rest_of_its_batch_applies() -> None:
    rng = np.random.default_rng(3)
    served = engine()
    records = loadgen.predictions(20, ["acme"], EXPERTS, rng)
    corrupt = records[7].__class__(**{**records[7].__dict__, "outputs": records[7].outputs + 2.0})
    for r in [*records[:7], corrupt, *records[8:]]:
        served.prediction_log.put(r)
    queue = InProcessFeedbackQueue()
    for event in loadgen.feedback(records, rng):
        queue.publish(event)
    worker = EmbeddedFeedbackWorker(served, queue, batch_size=50).start()  # all 20 in one batch
    assert worker.drain(10)
    worker.stop()
    (letter,) = worker.dead_letters.letters
    assert letter.reason == "processing_error" and "not probabilities" in letter.detail
    assert letter.record.offset == 7 and worker.stats.applied == 19
