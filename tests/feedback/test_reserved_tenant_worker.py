"""A Kafka event naming the reserved tenant ``global`` (the global learner scope) is a dead letter that says why,
and the worker carries on: real broker (tansu), real redis-server, the ``feedback-worker`` command."""

from __future__ import annotations

import json

import numpy as np

from aegis_online.feedback import loadgen
from aegis_online.feedback.kafka import KafkaFeedbackPublisher, ensure_topics
from aegis_online.feedback.redis_applier import redis_applier
from tests.state.services import unique

from .kafka_helpers import EXPERTS, read_topic, start_worker, summary, worker_command


def test_an_event_for_the_global_scope_is_dead_lettered_with_the_field_and_the_rest_applied(
    servers, redis_client, prefix, tmp_path
) -> None:
    topic, group = unique("feedback"), unique("group")
    ensure_topics(servers.kafka, {topic: 1, topic + ".dead-letter": 1})
    applier = redis_applier(servers.redis_url, EXPERTS, prefix=prefix)
    rng = np.random.default_rng(5)
    records = loadgen.predictions(3, ["acme"], EXPERTS, rng)
    applier.prediction_log.put_many(records)
    good = loadgen.feedback(records, rng)
    publisher = KafkaFeedbackPublisher(servers.kafka, topic)
    for event in good:
        publisher.publish(event)
    # What a producer other than the API could send: the request is acme's, the tenant the global scope.
    publisher.publish_raw(b"global", json.dumps({"request_id": records[0].request_id, "tenant": "global"}).encode())
    publisher.flush()
    publisher.close()

    total = len(good) + 1
    command = worker_command(servers.redis_url, servers.kafka, topic, group, prefix, "--max-records", str(total))
    stats = summary(start_worker(command, tmp_path / "worker.log"), timeout=120)
    assert stats["applied"] == len(good) and stats["dead_letters"] == 1
    assert stats["dead_letter_reasons"] == {"malformed": 1}  # what /metrics exports as {reason="malformed"}

    (letter,) = [json.loads(r.value) for r in read_topic(servers.kafka, topic + ".dead-letter", 1)]
    assert letter["reason"] == "malformed" and letter["source"]["key"] == "global"
    assert letter["detail"].startswith("tenant: 'global' is reserved"), letter["detail"]
