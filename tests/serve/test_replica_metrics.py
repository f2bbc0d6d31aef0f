"""``aegis_replica_*`` on ``/metrics``: the expert replicas' batching, fetched at each scrape (one replica per
deployment answers each time), kept per replica, dropped when a replica has been silent too long, and never a
reason for a scrape to fail. Through the real Ray Serve: ``test_ray_serve.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegis_online.serve import metrics as metrics_module
from aegis_online.serve.metrics import REPLICA_REPORT_TTL_S, ReplicaReport, ServiceMetrics


def report(batches: int, items: int, fixed_ms: float | None = None, per_call_ms: float | None = None) -> dict:
    pays = fixed_ms is None or fixed_ms > 0
    return {"batches": batches, "items": items, "fixed_ms": fixed_ms, "per_call_ms": per_call_ms, "batch_pays": pays}


def scrape(metrics: ServiceMetrics) -> dict[str, dict[tuple[str, str], float]]:
    asyncio.run(metrics.refresh())
    body, _ = metrics.render()
    return {
        family.name: {(s.labels["deployment"], s.labels["replica"]): s.value for s in family.samples}
        for family in text_string_to_metric_families(body.decode())
        if family.name.startswith("aegis_replica_")
    }


class Replicas:
    """What a poll answers, and a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.answer: list[ReplicaReport] = []

    async def poll(self) -> list[ReplicaReport]:
        return list(self.answer)


@pytest.fixture
def replicas() -> Replicas:
    return Replicas()


@pytest.fixture
def metrics(replicas: Replicas) -> ServiceMetrics:
    metrics = ServiceMetrics(clock=lambda: replicas.now)
    metrics.watch_replicas(replicas.poll)
    return metrics


def test_each_replicas_report_is_exported_and_kept_while_another_replica_answers(
    replicas: Replicas, metrics: ServiceMetrics
) -> None:
    replicas.answer = [("expert-guard", "r1", report(40, 400, 120.0, 2.0)), ("expert-minilm", "m1", report(3, 3))]
    first = scrape(metrics)
    assert first["aegis_replica_batches"] == {("expert-guard", "r1"): 40, ("expert-minilm", "m1"): 3}
    assert first["aegis_replica_batched_calls"][("expert-guard", "r1")] == 400
    assert first["aegis_replica_batch_fixed_seconds"] == {("expert-guard", "r1"): pytest.approx(0.12)}
    assert first["aegis_replica_batch_per_call_seconds"] == {("expert-guard", "r1"): pytest.approx(0.002)}
    assert first["aegis_replica_batching"] == {("expert-guard", "r1"): 1.0, ("expert-minilm", "m1"): 1.0}

    replicas.now += 30
    replicas.answer = [("expert-guard", "r2", report(5, 9, -1.0, 30.0))]  # the router picked the other replica
    second = scrape(metrics)
    assert second["aegis_replica_batches"] == {
        ("expert-guard", "r1"): 40,
        ("expert-guard", "r2"): 5,
        ("expert-minilm", "m1"): 3,
    }
    assert second["aegis_replica_batching"][("expert-guard", "r2")] == 0.0


def test_a_replica_silent_past_the_ttl_is_dropped(replicas: Replicas, metrics: ServiceMetrics) -> None:
    replicas.answer = [("expert-guard", "gone", report(1, 1))]
    scrape(metrics)
    replicas.answer = [("expert-guard", "new", report(2, 2))]
    replicas.now += REPLICA_REPORT_TTL_S - 1
    assert set(scrape(metrics)["aegis_replica_batches"]) == {("expert-guard", "gone"), ("expert-guard", "new")}
    replicas.now += 2
    assert set(scrape(metrics)["aegis_replica_batches"]) == {("expert-guard", "new")}


def test_a_failing_or_stuck_poll_leaves_the_last_reports_and_the_scrape_answers(
    replicas: Replicas, metrics: ServiceMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas.answer = [("expert-guard", "r1", report(7, 70))]
    scrape(metrics)

    async def broken() -> list[ReplicaReport]:
        raise ConnectionError("the replica is restarting")

    async def stuck() -> list[ReplicaReport]:
        await asyncio.sleep(60)
        return []

    monkeypatch.setattr(metrics_module, "REPLICA_POLL_TIMEOUT_S", 0.01)
    for poll in (broken, stuck):
        replicas.now += 5
        metrics.watch_replicas(poll)
        assert scrape(metrics)["aegis_replica_batches"] == {("expert-guard", "r1"): 7}


def test_scrapes_in_quick_succession_share_one_poll(replicas: Replicas, metrics: ServiceMetrics) -> None:
    """``/metrics`` needs no key by default: flooding it must not flood the replicas."""
    polls = 0

    async def counted() -> list[ReplicaReport]:
        nonlocal polls
        polls += 1
        return await replicas.poll()

    metrics.watch_replicas(counted)
    for _ in range(50):
        scrape(metrics)
        replicas.now += 0.01
    assert polls == 1
    replicas.now += 1.0
    scrape(metrics)
    assert polls == 2


def test_experts_in_process_export_no_replica_series() -> None:
    body, _ = ServiceMetrics().render()
    names: set[Any] = {family.name for family in text_string_to_metric_families(body.decode())}
    assert not {n for n in names if n.startswith("aegis_replica_")}
