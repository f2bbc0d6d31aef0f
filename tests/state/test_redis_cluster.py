"""The learner store on a real three-primary Redis Cluster: every script call stays in one slot, reads cross slots,
results equal the memory store's bit for bit, and a flushed script cache is reloaded on every node."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from aegis_online.state.redis_store import RedisLearnerStore, RedisPolicyStore, RedisPredictionLog, connect
from aegis_online.weights import FeedbackApplier

from .services import Services, spare_port
from .test_batch_apply import EXPERTS, make_engine, scenario

SLOTS = 16384


def cluster_port() -> int:
    """A spare port whose cluster-bus port (+10000) is spare too."""
    import socket

    while True:
        port = spare_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@pytest.fixture(scope="module")
def cluster_url(servers: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports = [cluster_port() for _ in range(3)]
    procs = []
    for port in ports:
        data = tmp_path_factory.mktemp(f"cluster-{port}")
        argv = [
            servers.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--dir", str(data), "--save", "", "--appendonly", "no",
            "--logfile", str(data / "redis.log"),
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv))
    try:
        nodes = [connect(f"redis://127.0.0.1:{p}/0") for p in ports]
        deadline = time.monotonic() + 20
        while True:
            try:
                for node in nodes:
                    node.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        bounds = [0, SLOTS // 3, 2 * SLOTS // 3, SLOTS]
        for node, start, stop in zip(nodes, bounds, bounds[1:], strict=False):
            node.execute_command("CLUSTER", "ADDSLOTS", *range(start, stop))
        for port in ports[1:]:
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        while any(n.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0 for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not converge")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def test_the_store_runs_on_a_cluster_and_matches_memory_bit_for_bit(cluster_url: str) -> None:
    client = connect(cluster_url, cluster=True)
    engine = FeedbackApplier(
        EXPERTS,
        store=RedisLearnerStore(client, "cl:"),
        prediction_log=RedisPredictionLog(client, "cl:"),
        policies=RedisPolicyStore(client, "cl:"),
    )
    records, events = scenario(31, n=300)
    engine.prediction_log.put_many(records)
    assert all(engine.prediction_log.get_many([r.request_id for r in records]))
    memory = make_engine()
    for part in (slice(0, 150), slice(150, None)):
        engine.apply_batch(
            [(engine.plan(e, r), "t:0", i) for i, (e, r) in enumerate(zip(events, records, strict=True))][part]
        )
        memory.apply_batch(
            [(memory.plan(e, r), "t:0", i) for i, (e, r) in enumerate(zip(events, records, strict=True))][part]
        )
    keys = memory.store.keys()
    slots = {client.keyslot("cl:" + k) for k in keys}
    assert len(slots) > 3  # the tenants really are spread over the cluster
    for key, want, got in zip(keys, memory.store.load(keys), engine.store.load(keys), strict=True):
        assert got.updates == want.updates and got.state.tobytes() == want.state.tobytes(), key
    client.script_flush()
    assert engine.apply(events[0].model_copy(update={"event_id": "after-flush"})).applied
