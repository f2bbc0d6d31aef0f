"""Where each expert runs (issue 11, item 5): cheap experts (catalog cost ``cpu-light``) inside the ingress by
default, the others behind a Ray handle; the expert order and the resource accounting stay right either way."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from pydantic import ValidationError

from aegis_online.catalog import default_catalog_dir, load_catalog
from aegis_online.config import ConfigError, ServiceConfig
from aegis_online.experts import ExpertInput
from aegis_online.experts.build import build_expert
from aegis_online.rayserve.deployments import ingress_replica_needs, resource_needs
from aegis_online.schemas import Message
from aegis_online.taxonomy import CANONICAL


def _config(**sections: Any) -> ServiceConfig:
    return ServiceConfig.model_validate(sections)


def _placements(config: ServiceConfig) -> list[tuple[str, bool]]:
    return [(spec.name, serving.in_ingress(spec)) for spec, serving in config.expert_plan()]


def test_cpu_light_experts_go_into_the_ingress_by_default_and_keep_their_place() -> None:
    assert _placements(_config()) == [("minilm-embedding", False), ("profanity-check", True)]
    config = _config(experts={"use": ["profanity-check", "minilm-embedding"]})
    assert _placements(config) == [("profanity-check", True), ("minilm-embedding", False)]


def test_placement_can_be_chosen_per_expert() -> None:
    config = _config(
        experts={
            "use": [
                {"name": "minilm-embedding", "placement": "ingress"},
                {"name": "profanity-check", "placement": "replica"},
            ]
        }
    )
    assert _placements(config) == [("minilm-embedding", True), ("profanity-check", False)]
    # replicas of its own: a cpu-light expert left on auto gets a deployment
    scaled = _config(experts={"use": [{"name": "profanity-check", "replicas": 2}]})
    assert _placements(scaled) == [("profanity-check", False)]


def test_an_expert_in_the_ingress_cannot_have_replicas_or_gpus() -> None:
    with pytest.raises(ValidationError, match="scales with the ingress"):
        _config(experts={"use": [{"name": "profanity-check", "placement": "ingress", "replicas": 2}]})
    gpu = _config(experts={"use": [{"name": "llama-guard-3-1b", "placement": "ingress"}]})
    with pytest.raises(ConfigError, match=r"experts\.use\.0\.placement: .*GPU"):
        gpu.expert_plan()


def test_the_ingress_replica_reserves_the_cpus_of_its_experts() -> None:
    config = _config(experts={"use": ["profanity-check", "minilm-embedding"]})
    # ingress 0.5 CPU; profanity-check 0.1 in it; minilm-embedding 0.5 on its own
    assert ingress_replica_needs(config) == {"CPU": pytest.approx(0.6), "memory_gb": pytest.approx(0.3)}
    assert resource_needs(config) == {"CPU": pytest.approx(1.1), "GPU": 0.0}
    # the opt-in heads: lexical-heads (0.1) joins the ingress, minilm-heads (0.5) gets a replica
    tier = _config(experts={"use": ["lexical-heads", "minilm-embedding", "minilm-heads", "profanity-check"]})
    assert ingress_replica_needs(tier) == {"CPU": pytest.approx(0.7), "memory_gb": pytest.approx(0.6)}
    assert resource_needs(tier) == {"CPU": pytest.approx(1.7), "GPU": 0.0}
    scaled = _config(
        experts={"use": ["profanity-check", "minilm-embedding"]},
        store={"kind": "redis", "redis_url": "redis://127.0.0.1:6379/0"},
        ingress={"autoscaling": {"min_replicas": 2, "max_replicas": 4}},
    )
    assert resource_needs(scaled, "min")["CPU"] == pytest.approx(2 * 0.6 + 0.5)
    assert resource_needs(scaled, "max")["CPU"] == pytest.approx(4 * 0.6 + 0.5)
    apart = _config(experts={"use": [{"name": "profanity-check", "placement": "replica"}]})
    assert ingress_replica_needs(apart)["CPU"] == pytest.approx(0.5)
    assert resource_needs(apart)["CPU"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "spec", [s for s in load_catalog(default_catalog_dir()) if s.cost == "cpu-light"], ids=lambda s: s.name
)
def test_cpu_light_experts_leave_the_event_loop_free_while_they_score(spec: Any) -> None:
    """In the ingress their work shares the process with every request: it must run in a thread."""
    expert = build_expert(spec)
    covered = tuple(c for c in CANONICAL if expert.covers(c))
    text = "You absolute idiot, this damn thing never works and I hate every part of it. " * 20
    batch = [
        ExpertInput(messages=(Message(role="user", content=f"{text} {i}"),), check="prompt", categories=covered)
        for i in range(1000)
    ]

    async def run() -> tuple[float, float]:
        await expert.score(batch[:1])  # load the model
        ticks: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        started = time.perf_counter()
        await expert.score(batch)
        elapsed = time.perf_counter() - started
        stop.set()
        await ticker
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        return elapsed, max(gaps, default=elapsed)

    elapsed, longest_stall = asyncio.run(run())
    assert elapsed > 0.05, "the batch is too small to tell"
    assert longest_stall < elapsed / 2, (elapsed, longest_stall)
