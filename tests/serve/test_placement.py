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
from aegis_online.rayserve.deployments import (
    ExpertDeployment,
    build_app,
    ingress_replica_needs,
    placements,
    resource_needs,
    score_named,
)
from aegis_online.schemas import Message
from aegis_online.serve.auth import KeyTable
from aegis_online.taxonomy import CANONICAL


def _config(**sections: Any) -> ServiceConfig:
    return ServiceConfig.model_validate(sections)


def _placements(config: ServiceConfig) -> list[tuple[str, bool]]:
    return [(spec.name, serving.in_ingress(spec)) for spec, serving in config.expert_plan()]


def test_cpu_light_experts_go_into_the_ingress_by_default_and_keep_their_place() -> None:
    assert _placements(_config()) == [
        ("lexical-heads", True),
        ("minilm-embedding", False),
        ("minilm-heads", False),
        ("profanity-check", True),
    ]
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
    # the heads: lexical-heads (0.1) joins the ingress, minilm-heads is served by minilm-embedding's replica
    tier = _config(experts={"use": ["lexical-heads", "minilm-embedding", "minilm-heads", "profanity-check"]})
    assert ingress_replica_needs(tier) == {"CPU": pytest.approx(0.7), "memory_gb": pytest.approx(0.6)}
    assert resource_needs(tier) == {"CPU": pytest.approx(1.2), "GPU": 0.0}
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


def _where(config: ServiceConfig) -> list[tuple[str, str, str | None]]:
    return [(p.spec.name, p.where, p.host) for p in placements(config)]


def test_an_expert_that_shares_a_model_is_served_by_that_experts_deployment() -> None:
    tier = _config(experts={"use": ["minilm-embedding", "minilm-heads", "profanity-check"]})
    assert _where(tier) == [
        ("minilm-embedding", "replica", None),
        ("minilm-heads", "guest", "minilm-embedding"),
        ("profanity-check", "ingress", None),
    ]
    app = build_app(tier, KeyTable({}))
    ingress_args = app._bound_deployment.init_args
    handles = ingress_args[2]
    assert set(handles) == {"minilm-embedding", "minilm-heads"}
    assert handles["minilm-heads"] is handles["minilm-embedding"]  # one deployment, the guest named in each call
    host_args = handles["minilm-embedding"]._bound_deployment.init_args
    assert [g["name"] for g in host_args[2]] == ["minilm-heads"]
    # alone, or given serving options of its own, it has a deployment of its own
    assert _where(_config(experts={"use": ["minilm-heads"]})) == [("minilm-heads", "replica", None)]
    apart = _config(experts={"use": ["minilm-embedding", {"name": "minilm-heads", "replicas": 2}]})
    assert _where(apart)[1] == ("minilm-heads", "replica", None)
    assert resource_needs(apart)["CPU"] == pytest.approx(0.5 + 0.5 + 2 * 0.5)
    # a host in the ingress keeps its guest with it
    inside = _config(experts={"use": [{"name": "minilm-embedding", "placement": "ingress"}, "minilm-heads"]})
    assert _where(inside) == [("minilm-embedding", "ingress", None), ("minilm-heads", "ingress", "minilm-embedding")]
    assert ingress_replica_needs(inside)["CPU"] == pytest.approx(0.5 + 0.5)


def test_the_host_deployment_embeds_each_text_once_for_itself_and_its_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero-shot and heads in one replica: a batch naming both experts for the same texts embeds each text once."""
    from aegis_online.experts.cpu import get_embedder

    specs = {s.name: s for s in load_catalog(default_catalog_dir())}
    cls = ExpertDeployment.func_or_class
    replica = cls.__new__(cls)
    host, guest = specs["minilm-embedding"], specs["minilm-heads"]
    serving = {"name": host.name}
    asyncio.run(cls.__init__(replica, host.model_dump(mode="json"), serving, [guest.model_dump(mode="json")]))
    assert replica.describe("minilm-heads")["name"] == "minilm-heads" and replica.describe()["name"] == host.name

    model = get_embedder()._load()
    embedded: list[str] = []
    original = model.encode

    def counting(texts: list[str], **options: Any) -> Any:
        embedded.extend(texts)
        return original(texts, **options)

    monkeypatch.setattr(model, "encode", counting)
    texts = [f"a text the replica has not seen yet, number {n}" for n in range(3)]
    items = [
        ExpertInput(
            messages=(Message(role="user", content=t),),
            check="prompt",
            categories=tuple(c for c in CANONICAL if c.id in ("S1", "S11")),
        )
        for t in texts
    ]

    names = ["minilm-heads", "minilm-embedding"] * 3  # one batch, as the replica's batcher hands it over
    batch = [item for item in items for _ in range(2)]
    outputs = asyncio.run(score_named(replica.experts, replica.spec.name, batch, names))
    assert sorted(embedded) == sorted(texts)  # each text once, for both experts
    assert [o.expert for o in outputs] == ["minilm-heads", "minilm-embedding"] * 3
    assert all(o.ok and set(o.scores) == {"S1", "S11"} for o in outputs)


@pytest.mark.parametrize(
    "spec",
    [s for s in load_catalog(default_catalog_dir()) if s.cost == "cpu-light" and s.ships_its_weights],
    ids=lambda s: s.name,
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
