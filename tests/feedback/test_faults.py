"""Fault tests against the real servers: the worker killed with SIGKILL at random points and restarted, and Redis
killed and restarted mid-stream. In both, the final learner state must equal an uninterrupted run's and every
event must have been applied exactly once.

The traffic is built so that every key, global ones included, is fed by a single partition
(``partitioned_traffic``): its final state is then the same in every correct run, whatever the interleaving of
partitions, and can be compared with the in-memory reference to 1e-9 (in practice, bit for bit).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from aegis_online.feedback.kafka import ensure_topics
from aegis_online.feedback.redis_applier import redis_applier
from tests.state.services import spare_port, unique

from .kafka_helpers import (
    EXPERTS,
    committed,
    compare,
    expected_updates,
    partitioned_traffic,
    produce,
    reference,
    start_worker,
    summary,
    worker_command,
)

pytestmark = pytest.mark.slow  # each kills and restarts servers or workers: about two minutes in all


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log_predictions(engine, records) -> None:
    for start in range(0, len(records), 2000):
        engine.prediction_log.put_many(records[start : start + 2000])


def test_sigkill_at_random_points_while_20000_events_flow_changes_nothing(servers, redis_client, prefix, tmp_path):
    partitions, n = 3, 20_000
    topic, group = unique("feedback"), unique("group")
    ensure_topics(servers.kafka, {topic: partitions, topic + ".dead-letter": 1})
    records, events = partitioned_traffic(n, tenants=60, partitions=partitions, seed=21)
    engine = redis_applier(servers.redis_url, EXPERTS, prefix=prefix)
    log_predictions(engine, records)
    # ~80 s of flow: each restart waits for the killed member's session to expire (6 s) and a rejoin, ~12 s in all
    producer = threading.Thread(target=produce, args=(servers.kafka, topic, events, 250.0))
    producer.start()

    command = worker_command(servers.redis_url, servers.kafka, topic, group, prefix, "--batch-size", "400")
    rng = random.Random(21)
    # Random kill times hit whatever the worker is doing; failpoints make sure the narrow windows are hit too:
    # state written but offsets not committed, and between the commit and the next poll.
    kills = ["random", "after_store_write:2", "random", "before_commit:3", "random", "after_commit:1"]
    done, mid_stream = 0, 0

    def progressed(since: int) -> bool:
        return sum(committed(servers.kafka, group, topic, partitions).values()) > since

    for i, kill in enumerate(kills):
        worker = start_worker(command, tmp_path / f"worker-{i}.log", failpoints="" if kill == "random" else kill)
        if kill == "random":
            wait_for(lambda since=done: progressed(since), 60, "progress")
            time.sleep(rng.uniform(0.0, 1.5))
            worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=90)
        assert worker.returncode == -signal.SIGKILL, f"kill {i} ({kill}): exit code {worker.returncode}"
        done = sum(committed(servers.kafka, group, topic, partitions).values())
        mid_stream += producer.is_alive()
    assert mid_stream >= 4, f"only {mid_stream} kills came while events were still flowing"
    producer.join()
    final = start_worker(
        worker_command(servers.redis_url, servers.kafka, topic, group, prefix, "--idle-exit-s", "5"),
        tmp_path / "worker-final.log",
    )
    stats = summary(final, timeout=180)

    assert sum(committed(servers.kafka, group, topic, partitions).values()) == n
    assert stats["dead_letters"] == 0
    expected = reference(records, events, partitions)
    difference = compare(expected, engine, expected_updates(expected, events, records))  # counts: once each
    print(f"\n{len(kills)} kills ({mid_stream} mid-stream); largest state difference to the reference: {difference}")
    assert difference <= 1e-9
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert "redelivered events had been applied already: skipped" in logs  # the redelivery path was exercised


@pytest.fixture()
def restartable_redis(servers, tmp_path):
    """A redis-server of this test's own, with an append-only file fsynced on every write (as production should
    run it), that the test can kill and start again on the same port and data."""
    port, data = spare_port(), tmp_path / "redis-data"
    data.mkdir()
    argv = [
        servers.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
        "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(tmp_path / "redis.log"),
    ]  # fmt: skip
    from aegis_online.state.redis_store import connect

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen | None = None

        def start(self) -> None:
            self.proc = subprocess.Popen(argv)
            client = connect(self.url, timeout_s=0.5)

            def ready() -> bool:
                try:
                    return bool(client.ping())
                except Exception:
                    return False

            wait_for(ready, 20, "redis-server")

        def kill(self) -> None:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    server = Server()
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def test_redis_restarted_mid_stream_stops_commits_then_the_worker_resumes_losing_nothing(
    servers, restartable_redis, tmp_path
):
    partitions, n = 2, 6000
    topic, group, prefix = unique("feedback"), unique("group"), "restart:"
    ensure_topics(servers.kafka, {topic: partitions, topic + ".dead-letter": 1})
    records, events = partitioned_traffic(n, tenants=30, partitions=partitions, seed=22)
    engine = redis_applier(restartable_redis.url, EXPERTS, prefix=prefix)
    log_predictions(engine, records)
    producer = threading.Thread(target=produce, args=(servers.kafka, topic, events, 1000.0))
    producer.start()
    log = tmp_path / "worker.log"
    worker = start_worker(
        worker_command(restartable_redis.url, servers.kafka, topic, group, prefix, "--idle-exit-s", "8",
                       "--batch-size", "300"),
        log,
    )  # fmt: skip

    def progress() -> int:
        return sum(committed(servers.kafka, group, topic, partitions).values())

    wait_for(lambda: progress() > 1000, 60, "the worker to commit")
    restartable_redis.kill()
    time.sleep(0.5)
    frozen = progress()
    time.sleep(3.0)
    assert progress() == frozen, "offsets were committed while Redis was down"
    assert worker.poll() is None, "the worker died with Redis"
    restartable_redis.start()  # same port, same append-only file: an empty script cache (NOSCRIPT)
    producer.join()
    stats = summary(worker, timeout=180)

    assert stats["store_retries"] >= 2 and progress() == n
    delays = [float(d) for d in re.findall(r"retrying in ([0-9.]+) s", Path(log).read_text())]
    assert len(delays) >= 2 and max(delays) > min(delays), delays  # it backed off
    expected = reference(records, events, partitions)
    difference = compare(expected, engine, expected_updates(expected, events, records))
    print(f"\nbackoff delays {delays}; largest state difference to the reference: {difference}")
    assert difference <= 1e-9
