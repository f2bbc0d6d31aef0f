"""One metric schema for the feedback counters: the embedded service's ``/metrics`` and a feedback worker's
``/metrics`` export the same families (names, types, labels, values) for the same ``WorkerStats``, and label values
are escaped by prometheus_client in both."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aegis_online.feedback.health import HealthServer, WorkerHealth
from aegis_online.serve.metrics import ServiceMetrics
from tests.helpers import wait_until

from .helpers import ACME_KEY, bearer, conversation

#: The families both modes export for the worker's counters (parser names: counters without ``_total``).
SHARED = {
    "aegis_feedback_applied",
    "aegis_feedback_dead_letters",
    "aegis_feedback_records",
    "aegis_feedback_batches",
    "aegis_feedback_store_retries",
    "aegis_feedback_commits_refused",
    "aegis_feedback_write_conflicts",
    "aegis_feedback_last_commit_timestamp_seconds",
}
#: What only a worker process has (its loop); the service's own ``aegis_feedback_events`` counts what the API took.
WORKER_ONLY = {
    "aegis_feedback_iterations",
    "aegis_feedback_heartbeat_age_seconds",
    "aegis_feedback_ready",
    "aegis_feedback_partitions_owned",
}
#: A label value with every character the text format escapes.
AWKWARD = 'a "quoted" reason\\with a backslash\nand a newline'

Family = tuple[str, str, list[Sample]]


def families(text: str) -> dict[str, Family]:
    """Family name -> (type, help, samples), through prometheus_client's own parser (the text must be valid)."""
    return {f.name: (f.type, f.documentation, list(f.samples)) for f in text_string_to_metric_families(text)}


def worker_metrics(health: WorkerHealth) -> str:
    """A feedback worker's ``/metrics`` over real HTTP: the server ``feedback-worker --health-port`` runs."""
    with HealthServer(health, "127.0.0.1", 0) as server, urllib.request.urlopen(server.url + "/metrics") as response:
        return response.read().decode()


def test_the_embedded_service_and_a_feedback_worker_export_the_same_feedback_families(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory()
    service = client.app.state.service
    headers = bearer(ACME_KEY)
    decision = client.post("/v1/moderate", json=conversation("kill"), headers=headers).json()
    queued = client.post(
        "/v1/feedback", json={"request_id": decision["request_id"], "label": "unsafe"}, headers=headers
    )
    assert queued.status_code == 202
    service.worker.queue.publish_raw(b"acme", b"not json")  # what a broken producer sends: a dead letter
    assert service.worker.drain(10) and wait_until(lambda: service.worker.stats.records == 2)

    embedded = families(client.get("/metrics").text)
    health = WorkerHealth()
    health.record(service.worker.worker)  # the hook the Kafka worker's loop calls after every round
    worker = families(worker_metrics(health))

    feedback = {name for name in embedded if name.startswith("aegis_feedback_")}
    assert feedback == SHARED | {"aegis_feedback_events"}
    assert set(worker) - WORKER_ONLY == SHARED  # partitions_owned: only a source that reports its assignment
    for name in SHARED:
        assert embedded[name] == worker[name], name  # type, help, sample names, labels and values
    applied = {s.labels["outcome"]: s.value for s in embedded["aegis_feedback_applied"][2]}
    assert applied == {"applied": 1.0, "duplicate": 0.0, "dead_letter": 1.0}
    reasons = {s.labels["reason"]: s.value for s in embedded["aegis_feedback_dead_letters"][2]}
    assert reasons["malformed"] == 1.0 and sum(reasons.values()) == applied["dead_letter"]
    assert embedded["aegis_feedback_applied"][0] == "counter"
    assert embedded["aegis_feedback_last_commit_timestamp_seconds"][0] == "gauge"


def test_label_values_are_escaped_by_the_library_and_parse_back_in_both_modes() -> None:
    stats = {"dead_letters": 3, "dead_letter_reasons": {AWKWARD: 3}}
    service_text = ServiceMetrics(feedback_stats=lambda: stats).render()[0].decode()
    health = WorkerHealth()
    health.update(stats, None)
    for text in (service_text, worker_metrics(health)):
        assert 'reason="a \\"quoted\\" reason\\\\with a backslash\\nand a newline"} 3.0' in text
        assert not any(line.startswith("and a newline") for line in text.splitlines())  # no line was split
        samples = families(text)["aegis_feedback_dead_letters"][2]
        assert [s.value for s in samples if s.labels["reason"] == AWKWARD] == [3.0]


def test_the_service_exports_no_feedback_counters_when_workers_apply_feedback() -> None:
    """With the Kafka bus the workers export them: the service's /metrics must not show zeros beside theirs."""
    text = ServiceMetrics(feedback_stats=None).render()[0].decode()
    assert set(families(text)) & (SHARED | WORKER_ONLY) == set()
