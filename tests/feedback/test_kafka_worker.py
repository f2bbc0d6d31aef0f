"""The feedback worker against the real broker (tansu) and a real redis-server: dead letters with reasons, waiting
for a late prediction, two workers sharing a group's partitions with every event applied once."""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from pathlib import Path

import numpy as np

from aegis_online.feedback import loadgen
from aegis_online.feedback.kafka import KafkaFeedbackPublisher, ensure_topics
from aegis_online.feedback.redis_applier import redis_applier
from aegis_online.schemas import FeedbackEvent
from tests.helpers import wait_until
from tests.state.services import unique

from .kafka_helpers import (
    EXPERTS,
    committed,
    expected_updates,
    produce,
    read_topic,
    reference,
    start_worker,
    summary,
    worker_command,
)


def assigned_partitions(log: Path) -> set[int]:
    """The partitions a worker holds, by its log: those of its last rebalance line if it is an assignment, else none
    (before the first assignment, or revoked and not yet assigned again)."""
    text = log.read_text() if log.exists() else ""
    lines = re.findall(r"partitions (assigned|revoked): (\[.*\])$", text, flags=re.MULTILINE)
    if not lines or lines[-1][0] != "assigned":
        return set()
    return {partition for _, partition in ast.literal_eval(lines[-1][1])}


def test_bad_events_go_to_the_dead_letter_topic_with_a_reason_and_the_worker_carries_on(
    servers, redis_client, prefix, tmp_path
) -> None:
    topic, group = unique("feedback"), unique("group")
    ensure_topics(servers.kafka, {topic: 2, topic + ".dead-letter": 1})
    engine = redis_applier(servers.redis_url, EXPERTS, prefix=prefix)
    rng = np.random.default_rng(3)
    records = loadgen.predictions(40, ["acme", "globex"], EXPERTS, rng)
    engine.prediction_log.put_many(records)
    good = loadgen.feedback(records, rng)
    acme = next(r for r in records if r.tenant == "acme")
    bad = [
        (b"acme", b"{this is not json", "malformed"),
        (b"acme", json.dumps({"request_id": acme.request_id, "tenant": "acme"}).encode(), "malformed"),
        (b"acme", b'{"request_id": "' + b"r" * 40_000 + b'"}', "oversized"),
        (
            b"globex",
            FeedbackEvent(request_id=acme.request_id, tenant="globex", label="safe").model_dump_json().encode(),
            "wrong_tenant",
        ),
        (
            b"globex",
            FeedbackEvent(request_id=acme.request_id, tenant="acme", label="safe").model_dump_json().encode(),
            "wrong_tenant",
        ),
        (
            b"acme",
            FeedbackEvent(request_id="never-logged", tenant="acme", label="safe").model_dump_json().encode(),
            "unknown_request",
        ),
        (
            b"acme",
            FeedbackEvent(request_id=acme.request_id, tenant="acme", labels={"nope": 1.0}).model_dump_json().encode(),
            "invalid_feedback",
        ),
    ]
    publisher = KafkaFeedbackPublisher(servers.kafka, topic)
    for i, event in enumerate(good):
        publisher.publish(event)
        if i % 6 == 0 and i // 6 < len(bad):
            key, value, _ = bad[i // 6]
            publisher.publish_raw(key, value)
    publisher.flush()
    publisher.close()

    total = len(good) + len(bad)
    command = worker_command(
        servers.redis_url,
        servers.kafka,
        topic,
        group,
        prefix,
        "--max-records",
        str(total),
        "--wait-for-prediction-s",
        "1",
        "--max-event-bytes",
        "16384",
    )
    stats = summary(start_worker(command, tmp_path / "worker.log"), timeout=120)
    assert stats["applied"] == len(good) and stats["dead_letters"] == len(bad) and stats["records"] == total

    letters = [json.loads(r.value) for r in read_topic(servers.kafka, topic + ".dead-letter", len(bad))]
    assert sorted(letter["reason"] for letter in letters) == sorted(reason for _, _, reason in bad)
    for letter in letters:
        assert letter["detail"] and letter["source"]["topic"] == topic and letter["source"]["offset"] >= 0
        assert "payload" in letter or "payload_base64" in letter
    oversized = next(letter for letter in letters if letter["reason"] == "oversized")
    assert oversized["payload_bytes"] > 40_000 and oversized["payload_truncated"]
    assert {letter["payload"] for letter in letters if letter["reason"] == "malformed"} >= {"{this is not json"}
    ends = committed(servers.kafka, group, topic, 2)
    assert sum(ends.values()) == total  # everything, refused events included, is committed: nothing blocks


def test_feedback_produced_before_its_prediction_is_logged_is_applied_once_it_is(
    servers, redis_client, prefix, tmp_path
) -> None:
    topic, group = unique("feedback"), unique("group")
    ensure_topics(servers.kafka, {topic: 1, topic + ".dead-letter": 1})
    engine = redis_applier(servers.redis_url, EXPERTS, prefix=prefix)
    rng = np.random.default_rng(4)
    records = loadgen.predictions(30, ["acme"], EXPERTS, rng)
    events = loadgen.feedback(records, rng)
    engine.prediction_log.put_many(records[:20])
    produce(servers.kafka, topic, events)
    command = worker_command(
        servers.redis_url, servers.kafka, topic, group, prefix, "--max-records", "30", "--wait-for-prediction-s", "60"
    )
    worker = start_worker(command, tmp_path / "worker.log")
    assert wait_until(lambda: committed(servers.kafka, group, topic, 1)[0] >= 20, 60, interval=0.3)
    time.sleep(1.0)  # a wait for something not to happen: the worker gets a second to (wrongly) commit further
    assert committed(servers.kafka, group, topic, 1)[0] == 20  # held at the first event whose prediction is missing
    engine.prediction_log.put_many(records[20:])  # the late predictions arrive
    stats = summary(worker, timeout=60)
    assert stats["applied"] == 30 and stats["dead_letters"] == 0


def test_two_workers_in_one_group_share_the_partitions_and_apply_every_event_once(
    servers, redis_client, prefix, tmp_path
) -> None:
    partitions, n = 4, 8000
    topic, group = unique("feedback"), unique("group")
    ensure_topics(servers.kafka, {topic: partitions, topic + ".dead-letter": 1})
    engine = redis_applier(servers.redis_url, EXPERTS, prefix=prefix)
    rng = np.random.default_rng(5)
    records = loadgen.predictions(n, [f"tenant-{i:02d}" for i in range(40)], EXPERTS, rng)
    events = loadgen.feedback(records, rng, labels_per_event=2)  # every category: the global keys are shared
    engine.prediction_log.put_many(records)
    command = worker_command(
        servers.redis_url, servers.kafka, topic, group, prefix, "--idle-exit-s", "6", "--batch-size", "500"
    )
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [start_worker(command, log) for log in logs]
    producer = threading.Thread(target=produce, args=(servers.kafka, topic, events, 2000.0))

    def shared() -> bool:
        owned = [assigned_partitions(log) for log in logs]
        return all(owned) and set().union(*owned) == set(range(partitions)) and not owned[0] & owned[1]

    # both join before the traffic starts, so both get partitions
    assert wait_until(shared, 60), [log.read_text()[-2000:] for log in logs]
    producer.start()
    producer.join()
    stats = [summary(w, timeout=120) for w in workers]

    assert all(s["applied"] > 0 for s in stats), stats  # the partitions were shared
    assert sum(s["applied"] for s in stats) == n  # and no event was applied twice (duplicates are not "applied")
    counts = expected_updates(reference(records[:1], events[:1], partitions), events, records)
    keys = sorted(counts)
    got = engine.store.load(keys)
    assert {k: g.updates for k, g in zip(keys, got, strict=True)} == counts
    assert sum(committed(servers.kafka, group, topic, partitions).values()) == n
