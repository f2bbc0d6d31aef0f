"""Shared by the Kafka tests: worker processes, producing, reading dead letters and committed offsets, and the
in-memory reference run that the real runs must match."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from aegis_online.feedback import loadgen
from aegis_online.schemas import OVERALL, FeedbackEvent
from aegis_online.state import MemoryLearnerStore, MemoryPredictionLog, PredictionRecord
from aegis_online.taxonomy import CANONICAL_IDS
from aegis_online.weights import FeedbackApplier

ROOT = Path(__file__).resolve().parents[2]
EXPERTS = ("guard-a", "guard-b", "classifier-c", "profanity-d")


def partition_of(tenant: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives a tenant key."""
    from kafka.partitioner.default import murmur2

    return (murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions


def partitioned_traffic(
    n: int, tenants: int, partitions: int, seed: int
) -> tuple[list[PredictionRecord], list[FeedbackEvent]]:
    """Predictions and feedback where each partition's tenants label only that partition's categories, so every
    category key (global ones included) is fed by one partition and its final state is the same in any run."""
    rng = np.random.default_rng(seed)
    names = [f"tenant-{i:03d}" for i in range(tenants)]
    records = loadgen.predictions(n, names, EXPERTS, rng, prefix=f"req{seed}")
    events = []
    for i, record in enumerate(records):
        p = partition_of(record.tenant, partitions)
        allowed = [c for j, c in enumerate(CANONICAL_IDS) if j % partitions == p]
        events += loadgen.feedback([record], rng, labels_per_event=2, categories=allowed, first_id=i)
    return records, events


def reference(records: Sequence[PredictionRecord], events: Sequence[FeedbackEvent], partitions: int) -> FeedbackApplier:
    """The uninterrupted run, in memory: each partition's events in order (the batch path equals event-by-event
    application, tests/state/test_batch_apply.py)."""
    engine = FeedbackApplier(EXPERTS, store=MemoryLearnerStore(), prediction_log=MemoryPredictionLog())
    by_id = {r.request_id: r for r in records}
    planned = [
        (engine.plan(e, by_id[e.request_id]), f"p{partition_of(e.tenant, partitions)}", i) for i, e in enumerate(events)
    ]
    engine.apply_batch(planned)
    return engine


def expected_updates(
    engine: FeedbackApplier, events: Sequence[FeedbackEvent], records: Sequence[PredictionRecord]
) -> dict:
    counts: dict[str, int] = {}
    by_id = {r.request_id: r for r in records}
    for e in events:
        plan = engine.plan(e, by_id[e.request_id])
        for key in plan.trained_keys:
            counts[key] = counts.get(key, 0) + 1
    return counts


def compare(expected: FeedbackApplier, actual: FeedbackApplier, counts: dict[str, int]) -> float:
    """Assert every key was updated exactly as often as events touched it; return the largest state difference.

    States are compared on the category keys only: the whole-request keys (``overall``) learn from every
    partition's category labels, so the global one's state (and the tenant ones copied from it) depends on how
    partitions interleave, which no two runs share; their update counts are still checked."""
    keys = sorted(counts)
    want, got = expected.store.load(keys), actual.store.load(keys)
    missing = [k for k, g in zip(keys, got, strict=True) if g is None]
    assert not missing, f"{len(missing)} keys never written, e.g. {missing[:3]}"
    wrong = {k: (g.updates, counts[k]) for k, g in zip(keys, got, strict=True) if g.updates != counts[k]}
    assert not wrong, f"update counts differ (got, expected): {dict(list(wrong.items())[:5])}"
    exact = [i for i, k in enumerate(keys) if not k.endswith(":" + OVERALL)]
    assert len(exact) > len(keys) // 2
    return max(float(np.max(np.abs(got[i].state - want[i].state))) for i in exact)


def produce(bootstrap: str, topic: str, events: Sequence[FeedbackEvent], per_second: float | None = None) -> None:
    from aegis_online.feedback.kafka import KafkaFeedbackPublisher

    publisher = KafkaFeedbackPublisher(bootstrap, topic)
    started = time.monotonic()
    for i, event in enumerate(events):
        publisher.publish(event)
        if per_second and i % 200 == 199:
            publisher.flush()
            ahead = (i + 1) / per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    publisher.flush()
    publisher.close()


def worker_command(redis_url: str, bootstrap: str, topic: str, group: str, prefix: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aegis_online.feedback.cli",
        "--experts",
        ",".join(EXPERTS),
        "--redis-url",
        redis_url,
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--dead-letter-topic",
        topic + ".dead-letter",
        "--group-id",
        group,
        "--prefix",
        prefix,
        *extra,
    ]


def start_worker(
    command: list[str], log: Path, failpoints: str = "", env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """``command`` in the repository, stderr to ``log``; ``env`` replaces this process's environment."""
    env = dict(os.environ if env is None else env) | {"AEGIS_FAILPOINTS": failpoints, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)


def summary(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker exited with {proc.returncode}"
    return json.loads(out.decode().strip().splitlines()[-1])


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list:
    """Records of ``topic`` from the start (no group), until ``expected`` came or ``timeout`` passed."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records
