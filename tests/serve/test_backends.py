"""The service on its production backends (Redis stores, Kafka feedback bus), through the FastAPI app: predictions
and policies in Redis, feedback on Kafka applied by a feedback worker, and a Redis outage ridden out from cache.

The servers come from ``tests/state/services.py`` (``.ci/services.sh``), like the state and feedback tests'.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aegis_online.serve.app import create_app
from tests.helpers import wait_until
from tests.state.services import Services, services, spare_port, unique

from .helpers import ACME_KEY, ADMIN_KEY, KeywordExpert, bearer, conversation, make_service

EXPERTS = ("right", "wrong")
# kafka-python reads its protocol files with importlib APIs deprecated in 3.11: not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]


def experts() -> list[KeywordExpert]:
    return [KeywordExpert("right", {"S1": ("kill",)}), KeywordExpert("wrong", {"S1": ("kill",)}, high=0.1, low=0.8)]


@pytest.fixture(scope="module")
def servers() -> Services:
    return services()


@pytest.fixture()
def redis_service(servers: Services) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    from aegis_online.feedback.kafka import ensure_topics

    prefix, topic = unique("srv") + ":", unique("srv-feedback")
    ensure_topics(servers.kafka, {topic: 1})
    sections = {
        "store": {"kind": "redis", "redis_url": servers.redis_url, "prefix": prefix, "weights_max_staleness_s": 0.2},
        "bus": {"kind": "kafka", "bootstrap_servers": servers.kafka, "topic": topic},
        "policies": [{"tenant": "acme", "personalise_after": 0}],
    }
    with TestClient(create_app(make_service(experts(), **sections)), raise_server_exceptions=False) as client:
        yield client, {"prefix": prefix, "topic": topic}


def test_predictions_and_policies_live_in_redis(redis_service: tuple[TestClient, dict[str, Any]]) -> None:
    client, setup = redis_service
    decision = client.post("/v1/moderate", json=conversation("kill"), headers=bearer(ACME_KEY)).json()
    log = client.app.state.service.engine.prediction_log.inner
    assert log.get(decision["request_id"]).tenant == "acme"
    assert client.get("/v1/tenants/acme/policy", headers=bearer(ACME_KEY)).json()["personalise_after"] == 0
    assert client.put("/v1/tenants/acme/policy", json={"threshold": 0.4}, headers=bearer(ADMIN_KEY)).status_code == 200
    raw = log.client.get(f"{setup['prefix']}policy:{{acme}}")
    assert b'"threshold":0.4' in raw


def test_feedback_goes_to_kafka_and_a_worker_applies_it(
    servers: Services, redis_service: tuple[TestClient, dict[str, Any]]
) -> None:
    from aegis_online.feedback.inprocess import MemoryDeadLetters
    from aegis_online.feedback.kafka import KafkaFeedbackSource
    from aegis_online.feedback.processor import FeedbackProcessor
    from aegis_online.feedback.redis_applier import redis_applier
    from aegis_online.feedback.worker import FeedbackWorker

    client, setup = redis_service

    def weight() -> float:
        body = client.get("/v1/tenants/acme/weights", params={"category": "S1"}, headers=bearer(ACME_KEY)).json()
        return body["categories"]["S1"]["weights"]["right"]

    assert weight() == pytest.approx(0.5)
    for text in ("kill", "hello", "kill them", "good morning"):
        decision = client.post("/v1/moderate", json=conversation(text), headers=bearer(ACME_KEY)).json()
        label = 1.0 if "kill" in text else 0.0
        event = {"request_id": decision["request_id"], "labels": {"S1": label}}
        response = client.post("/v1/feedback", json=event, headers=bearer(ACME_KEY))
        assert response.status_code == 202 and response.json()["results"][0]["status"] == "queued"
    engine = redis_applier(servers.redis_url, EXPERTS, prefix=setup["prefix"])
    source = KafkaFeedbackSource(servers.kafka, setup["topic"], unique("srv-group"))
    worker = FeedbackWorker(source, FeedbackProcessor(engine), MemoryDeadLetters())
    try:
        stats = worker.run(max_records=4, idle_exit_s=30)
    finally:
        source.close()
    assert stats.applied == 4
    (record,) = engine.store.load([engine.keyspace.key("acme", "S1")])
    written = float(engine.learner.weights(record.state)[list(EXPERTS).index("right")])
    assert written > 0.55  # the expert that was right gained weight
    assert wait_until(lambda: weight() == pytest.approx(written), 5)  # the service sees the worker's writes in time


def test_a_retry_on_another_replica_is_a_duplicate_and_kafka_gets_one_record(servers: Services) -> None:
    """Two ingress replicas on one Redis and one topic: the client's retry lands on the other replica, which must
    answer ``duplicate`` (the bus applies deliveries once, the shared ledger makes an event one delivery)."""
    from aegis_online.feedback.kafka import KafkaFeedbackSource, ensure_topics

    prefix, topic = unique("dup") + ":", unique("dup-feedback")
    ensure_topics(servers.kafka, {topic: 1})
    sections = {
        "store": {"kind": "redis", "redis_url": servers.redis_url, "prefix": prefix},
        "bus": {"kind": "kafka", "bootstrap_servers": servers.kafka, "topic": topic},
    }
    with (
        TestClient(create_app(make_service(experts(), **sections))) as first,
        TestClient(create_app(make_service(experts(), **sections))) as second,
    ):
        decision = first.post("/v1/moderate", json=conversation("kill"), headers=bearer(ACME_KEY)).json()
        event = {"request_id": decision["request_id"], "label": "unsafe", "event_id": "client-retry-1"}
        answers = [c.post("/v1/feedback", json=event, headers=bearer(ACME_KEY)) for c in (first, second, second)]
        assert [a.json()["results"][0]["status"] for a in answers] == ["queued", "duplicate", "duplicate"]
        again = {**event, "event_id": "client-retry-2"}  # another event on the same prediction is new
        assert second.post("/v1/feedback", json=again, headers=bearer(ACME_KEY)).json()["results"][0]["status"] == (
            "queued"
        )
    source = KafkaFeedbackSource(servers.kafka, topic, unique("dup-group"))
    try:
        records = []
        deadline = time.monotonic() + 20
        while len(records) < 2 and time.monotonic() < deadline:
            records += source.poll(100, timeout_s=0.5)
        records += source.poll(100, timeout_s=1.0)  # nothing more may come
    finally:
        source.close()
    assert len(records) == 2


@pytest.fixture()
def own_redis(servers: Services) -> Iterator[dict[str, Any]]:
    """A Redis of this test's own, so that it can be stopped and started again."""
    port = spare_port()
    command = [servers.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    state: dict[str, Any] = {"port": port, "process": None}

    def start() -> None:
        state["process"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        assert wait_until(lambda: _pings(redis, port), 10)

    def stop() -> None:
        state["process"].terminate()
        state["process"].wait(10)

    state["start"], state["stop"] = start, stop
    start()
    try:
        yield state
    finally:
        if state["process"].poll() is None:
            stop()


def _pings(redis: Any, port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
    except redis.exceptions.RedisError:
        return False


def test_a_redis_outage_is_ridden_out_from_cache_and_reported(own_redis: dict[str, Any]) -> None:
    url = f"redis://127.0.0.1:{own_redis['port']}/0"
    sections = {
        "store": {"kind": "redis", "redis_url": url, "timeout_ms": 200, "retry_after_s": 0.5},
        "policies": [{"tenant": "acme", "strictness": "strict"}],
    }
    with TestClient(create_app(make_service(experts(), **sections)), raise_server_exceptions=False) as client:
        headers = bearer(ACME_KEY)
        assert client.post("/v1/moderate", json=conversation("kill"), headers=headers).status_code == 200
        own_redis["stop"]()
        started = time.monotonic()
        for _ in range(20):
            response = client.post("/v1/moderate", json=conversation("kill"), headers=headers)
            assert response.status_code == 200 and response.json()["strictness"] == pytest.approx(0.8)
        assert time.monotonic() - started < 5  # a dead store costs one timeout per retry interval, not per request
        ready = client.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["checks"]["store"]["status"] == "degraded"
        own_redis["start"]()
        threading.Event().wait(0.6)  # past the retry interval
        client.post("/v1/moderate", json=conversation("hello"), headers=headers)
        assert wait_until(lambda: client.get("/readyz").json()["status"] == "ready", 5)
