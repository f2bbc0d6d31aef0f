"""The worker's health endpoints over real HTTP: liveness follows the loop's heartbeat (not its dependencies),
readiness names why the worker is not doing its job, metrics are valid Prometheus text."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from aegis_online.feedback import loadgen
from aegis_online.feedback.health import HealthServer, WorkerHealth
from aegis_online.feedback.inprocess import InProcessFeedbackQueue, MemoryDeadLetters
from aegis_online.feedback.processor import FeedbackProcessor
from aegis_online.feedback.worker import FeedbackWorker
from aegis_online.state import MemoryLearnerStore, MemoryPredictionLog, StoreUnavailableError
from aegis_online.weights import FeedbackApplier

EXPERTS = ("a", "b", "c")


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    """Status, content type and body of GET ``path``; error statuses too."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def get_json(server: HealthServer, path: str) -> tuple[int, dict]:
    status, content_type, body = get(server, path)
    assert content_type == "application/json"
    return status, json.loads(body)


def metric_values(text: str) -> dict[str, float]:
    """Sample -> value, through prometheus_client's own parser (the exposition must be valid); a labelled sample is
    named ``name{label="value",...}`` (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    def key(name: str, labels: dict[str, str]) -> str:
        return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")

    return {key(s.name, s.labels): s.value for family in text_string_to_metric_families(text) for s in family.samples}


APPLIED = 'aegis_feedback_applied_total{outcome="applied"}'


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class FlakyStore(MemoryLearnerStore):
    """A learner store that refuses writes as an unreachable Redis does, while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()

    def compare_and_set(self, writes, event_id=None):  # type: ignore[no-untyped-def]
        if self.down.is_set():
            raise StoreUnavailableError("redis: connection refused")
        return super().compare_and_set(writes, event_id)


@pytest.fixture()
def clock() -> list[float]:
    return [1000.0]


@pytest.fixture()
def served(clock: list[float]) -> Iterator[tuple[WorkerHealth, HealthServer]]:
    health = WorkerHealth(stall_s=60.0, clock=lambda: clock[0])
    with HealthServer(health, "127.0.0.1", 0) as server:
        yield health, server


def test_liveness_fails_once_the_heartbeat_is_older_than_the_stall_limit_and_recovers_with_the_next_beat(
    served: tuple[WorkerHealth, HealthServer], clock: list[float]
) -> None:
    health, server = served
    assert get_json(server, "/healthz") == (200, {"status": "ok", "heartbeat_age_s": 0.0})  # start-up counts
    health.update({"applied": 1}, None)
    clock[0] += 59.5
    assert get_json(server, "/healthz")[0] == 200
    clock[0] += 1.0
    status, body = get_json(server, "/healthz")
    assert status == 503 and body == {"status": "stalled", "heartbeat_age_s": 60.5, "stall_s": 60.0}
    status, body = get_json(server, "/readyz")
    assert status == 503 and body["reason"].startswith("stalled")  # a stuck loop is not ready either
    health.update({"applied": 1}, None)
    assert get_json(server, "/healthz")[0] == 200 and get_json(server, "/readyz")[0] == 200


def test_other_paths_are_404_json_and_query_strings_are_ignored(served: tuple[WorkerHealth, HealthServer]) -> None:
    _, server = served
    status, body = get_json(server, "/nope")
    assert status == 404 and body["status"] == "not_found" and "/healthz" in body["paths"]
    assert get_json(server, "/")[0] == 404
    assert get_json(server, "/healthz?probe=1")[0] == 200


def test_metrics_are_prometheus_text_with_the_worker_s_counters(served: tuple[WorkerHealth, HealthServer]) -> None:
    health, server = served
    stats = {"records": 12, "applied": 9, "duplicates": 1, "dead_letters": 2, "store_retries": 2, "last_commit_at": 5.0}
    health.update(stats | {"dead_letter_reasons": {"malformed": 2}}, None, 4)
    status, content_type, text = get(server, "/metrics")
    assert status == 200 and content_type == CONTENT_TYPE_LATEST  # the service's /metrics answers the same
    values = metric_values(text)
    assert values[APPLIED] == 9 and values['aegis_feedback_applied_total{outcome="duplicate"}'] == 1
    assert values['aegis_feedback_applied_total{outcome="dead_letter"}'] == 2
    assert values['aegis_feedback_dead_letters_total{reason="malformed"}'] == 2
    assert values['aegis_feedback_dead_letters_total{reason="unknown_request"}'] == 0  # known reasons start at 0
    assert values["aegis_feedback_records_total"] == 12 and values["aegis_feedback_store_retries_total"] == 2
    assert values["aegis_feedback_iterations_total"] == 1 and values["aegis_feedback_partitions_owned"] == 4
    assert values["aegis_feedback_heartbeat_age_seconds"] == 0 and values["aegis_feedback_ready"] == 1
    assert values["aegis_feedback_last_commit_timestamp_seconds"] == 5.0
    assert all(name.startswith("aegis_feedback_") for name in values)
    assert "# TYPE aegis_feedback_applied_total counter" in text
    assert "aegis_feedback_duplicates_total" not in text  # the old worker-only name: outcome="duplicate" now


def test_a_failing_store_makes_the_worker_not_ready_with_the_reason_while_it_stays_alive_and_ready_again_after() -> (
    None
):
    rng = np.random.default_rng(7)
    store = FlakyStore()
    engine = FeedbackApplier(EXPERTS, store=store, prediction_log=MemoryPredictionLog())
    records = loadgen.predictions(20, ["acme"], EXPERTS, rng)
    for record in records:
        engine.prediction_log.put(record)
    queue = InProcessFeedbackQueue(partitions=1)
    health = WorkerHealth(stall_s=60.0)
    worker = FeedbackWorker(
        queue,
        FeedbackProcessor(engine),
        MemoryDeadLetters(),
        poll_timeout_s=0.01,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        on_iteration=health.record,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    with HealthServer(health, "127.0.0.1", 0) as server:
        status, body = get_json(server, "/readyz")
        assert status == 503 and body["reason"] == "starting: no poll completed yet"
        store.down.set()
        for event in loadgen.feedback(records, rng):
            queue.publish(event)
        thread.start()
        try:
            wait_for(lambda: worker.stats.store_retries >= 3)
            status, body = get_json(server, "/readyz")
            assert status == 503 and body["status"] == "not_ready"
            assert "StoreUnavailableError: redis: connection refused" in body["reason"]
            assert get_json(server, "/healthz")[0] == 200  # the loop backs off and goes round: alive, not ready
            assert metric_values(get(server, "/metrics")[2])["aegis_feedback_ready"] == 0

            store.down.clear()
            wait_for(lambda: worker.stats.applied == 20)
            wait_for(lambda: health.snapshot().stats.get("applied") == 20)
            status, body = get_json(server, "/readyz")
            assert status == 200 and body["status"] == "ready" and body["applied"] == 20
            values = metric_values(get(server, "/metrics")[2])
            assert values[APPLIED] == 20 and values["aegis_feedback_store_retries_total"] >= 3
        finally:
            stop.set()
            thread.join(timeout=10)
    with pytest.raises(OSError):  # closed with the worker
        urllib.request.urlopen(server.url + "/healthz", timeout=1)
