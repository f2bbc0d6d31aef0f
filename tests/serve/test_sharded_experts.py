"""Tensor parallelism (issue 12, section 4): a vLLM expert sharded over N GPUs reserves, per replica, a placement group
of N one-GPU bundles on one node, in the options the local service and the KubeRay builder generate alike. Checked on
the bound application itself: no Ray, no GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve._private.build_app import build_app as flatten

from aegis_online.config import ConfigError, ServiceConfig
from aegis_online.rayserve.deployments import (
    SHARDED_PLACEMENT_STRATEGY,
    SHARDED_REPLICA_ENV,
    build_app,
    resource_needs,
)
from aegis_online.rayserve.kuberay import BuilderArgs, app_builder
from aegis_online.serve.auth import KeyTable

GIB = 1024**3


def guard_entry(name: str, gpus: float, **backend_options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "vllm",
        "model": "org/guard",
        "family": "llama_guard_3",
        "cost": "gpu-large",
        "hardware": {"gpus": gpus, "cpus": 2, "memory_gb": 16},
        "backend_options": backend_options,
    }


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    for entry in (guard_entry("sharded-guard", 4, tensor_parallel_size=4), guard_entry("half-guard", 0.5)):
        (tmp_path / f"{entry['name']}.yaml").write_text(yaml.safe_dump(entry))
    return tmp_path


def deployments(config: dict[str, Any], *, kuberay: bool = False) -> dict[str, Any]:
    if kuberay:  # as Ray Serve builds serveConfigV2's application on the cluster
        application = app_builder(BuilderArgs(config=config))
    else:
        application = build_app(ServiceConfig.model_validate(config), KeyTable({}))
    return {d.name: d for d in flatten(application, name="aegis-online").deployments}


@pytest.mark.parametrize("kuberay", [False, True], ids=["serve", "kuberay"])
def test_a_sharded_expert_reserves_one_gpu_bundle_per_shard_on_one_node(catalog: Path, kuberay: bool) -> None:
    config = {"experts": {"catalog": str(catalog), "use": ["sharded-guard", "half-guard"]}, "store": {"persist": False}}
    built = deployments(config, kuberay=kuberay)
    sharded = built["expert-sharded-guard"]
    replica = sharded._replica_config
    assert replica.placement_group_bundles == [
        {"GPU": 1.0, "CPU": 2.0, "memory": 16 * GIB},  # the replica sits in the first bundle (Ray Serve's rule)
        {"GPU": 1.0},
        {"GPU": 1.0},
        {"GPU": 1.0},
    ]
    assert replica.placement_group_strategy == SHARDED_PLACEMENT_STRATEGY == "STRICT_PACK"
    # the replica itself holds no GPU: vLLM's four workers take the bundles' GPUs
    assert "num_gpus" not in sharded.ray_actor_options
    assert sharded.ray_actor_options["runtime_env"] == {"env_vars": SHARDED_REPLICA_ENV}
    # an unsharded expert keeps its fraction of one GPU and no placement group
    half = built["expert-half-guard"]
    assert half.ray_actor_options["num_gpus"] == 0.5 and half._replica_config.placement_group_bundles is None
    plan = ServiceConfig.model_validate(config)
    assert resource_needs(plan)["GPU"] == 4.5


def test_sharding_set_in_the_service_config_needs_as_many_gpus(catalog: Path) -> None:
    base = {"catalog": str(catalog)}
    wrong = ServiceConfig.model_validate(
        {"experts": base | {"use": [{"name": "half-guard", "backend_options": {"tensor_parallel_size": 2}}]}}
    )
    with pytest.raises(ConfigError, match=r"experts\.use\.0\.num_gpus: .*tensor_parallel_size 2.*set num_gpus: 2"):
        wrong.expert_plan()
    right = ServiceConfig.model_validate(
        {
            "experts": base
            | {"use": [{"name": "half-guard", "num_gpus": 2, "backend_options": {"tensor_parallel_size": 2}}]},
            "store": {"persist": False},
        }
    )
    [(spec, _)] = right.expert_plan()
    assert (spec.tensor_parallel_size, spec.hardware.gpus) == (2, 2)
    bundles = deployments(right.model_dump(mode="json"))["expert-half-guard"]._replica_config.placement_group_bundles
    assert [b["GPU"] for b in bundles] == [1.0, 1.0]
    fewer = ServiceConfig.model_validate({"experts": base | {"use": [{"name": "sharded-guard", "num_gpus": 1}]}})
    with pytest.raises(ConfigError, match=r"experts\.use\.0\.num_gpus: .*set num_gpus: 4"):
        fewer.expert_plan()
    bad = ServiceConfig.model_validate(
        {"experts": base | {"use": [{"name": "half-guard", "backend_options": {"tensor_parallel_size": "two"}}]}}
    )
    with pytest.raises(ConfigError, match=r"experts\.use\.0: backend_options\.tensor_parallel_size"):
        bad.expert_plan()
