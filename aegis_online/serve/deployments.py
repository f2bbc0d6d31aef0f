"""The Ray Serve application: one deployment per expert, and the FastAPI ingress that fans out to them.

``ExpertDeployment`` wraps an ``Expert`` built from its catalog entry (``build_expert``) behind ``@serve.batch``:
concurrent requests to one replica are scored together, up to ``max_batch_size`` or ``batch_wait_timeout_ms``. It
loads its model and scores one text before it reports ready, so the first real request does not pay for loading.
Resources come from the catalog (``hardware.cpus`` / ``gpus`` / ``memory_gb``; fractional CPUs for light experts)
unless the config overrides them.

``ModerationIngress`` builds the service (``service.build_service``) over ``RemoteExpert`` stand-ins whose
``score`` calls a deployment handle, and serves ``app.create_app``. The engine's own ``moderate`` then does the
fan-out: every expert in parallel under the request's deadline; one that fails or is late is named in
``missing_experts`` and treated as asleep, and its Ray request is cancelled.

``build_app(config, keys)`` binds it all. Only key digests go to the ingress (``KeyTable.to_wire``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from aegis_online.config import Autoscaling, ExpertServing, ServiceConfig
from aegis_online.experts import Expert, ExpertInput, score_with_deadline
from aegis_online.experts.catalog import ExpertSpec, build_expert
from aegis_online.schemas import ExpertOutput, Message
from aegis_online.serve.auth import KeyTable
from aegis_online.taxonomy import CANONICAL

log = logging.getLogger("aegis_online.serve")

#: Ray's own cap on one replica's work: an expert call that takes longer is an error, whatever the request deadline.
REPLICA_SCORE_TIMEOUT_S = 60.0
WARM_UP_TEXT = "Hello! Could you help me write a short, friendly note to a colleague?"


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=5)
class ExpertDeployment:
    """One catalog expert, batched."""

    async def __init__(self, spec: dict[str, Any], serving: dict[str, Any]) -> None:
        self.spec = ExpertSpec.model_validate(spec)
        options = ExpertServing.model_validate(serving)
        if options.threads:  # Ray starts a replica with OMP_NUM_THREADS = its CPUs, rounded up: 1 for a fraction
            for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[variable] = str(options.threads)
        self.expert = build_expert(self.spec)
        self.score.set_max_batch_size(options.max_batch_size)
        self.score.set_batch_wait_timeout_s(options.batch_wait_timeout_ms / 1000.0)
        started = time.perf_counter()
        item = ExpertInput(
            messages=(Message(role="user", content=WARM_UP_TEXT),),
            check="prompt",
            categories=tuple(c for c in CANONICAL if self.expert.covers(c)),
        )
        output = (await score_with_deadline(self.expert, [item], REPLICA_SCORE_TIMEOUT_S))[0]
        if not output.ok:
            raise RuntimeError(f"expert {self.spec.name} failed its warm-up: {output.error}")
        if options.threads and "torch" in sys.modules:  # loaded by the warm-up, when the expert uses it
            sys.modules["torch"].set_num_threads(options.threads)
        log.info("expert %s ready in %.1f s", self.spec.name, time.perf_counter() - started)

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to route to this expert: its name and coverage."""
        return {
            "name": self.expert.name,
            "categories": sorted(self.expert.categories),
            "free_form": bool(self.expert.free_form),
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score(self, items: list[ExpertInput]) -> list[ExpertOutput]:
        return await score_with_deadline(self.expert, items, REPLICA_SCORE_TIMEOUT_S)


class RemoteExpert(Expert):
    """An expert deployment as the engine sees it: coverage known, ``score`` a call to the deployment's handle.

    The latency it reports is the round trip seen by the ingress (queueing and transport included): what a caller
    waits for. A cancelled call (the request's deadline passed) cancels the Ray request too.
    """

    def __init__(self, name: str, categories: Sequence[str], free_form: bool, handle: DeploymentHandle) -> None:
        self.name = name
        self.categories = frozenset(categories)
        self.free_form = free_form
        self.handle = handle

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        responses = [self.handle.score.remote(item) for item in batch]
        try:
            outputs = [await response for response in responses]
        except asyncio.CancelledError:
            for response in responses:
                response.cancel()
            raise
        elapsed = (time.perf_counter() - started) * 1000.0
        return [o.model_copy(update={"latency_ms": elapsed}) for o in outputs]


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=10)
@serve.ingress()
class ModerationIngress:
    """The HTTP entry point: the FastAPI app of ``create_app`` over the expert deployments."""

    async def __init__(
        self, config: dict[str, Any], keys: list[dict[str, Any]], experts: Mapping[str, DeploymentHandle]
    ) -> None:
        from aegis_online.serve.service import build_service

        self.config = ServiceConfig.model_validate(config)
        described = await asyncio.gather(*(handle.describe.remote() for handle in experts.values()))
        remote = [
            RemoteExpert(d["name"], d["categories"], d["free_form"], handle)
            for d, handle in zip(described, experts.values(), strict=True)
        ]
        self.service = build_service(self.config, remote, KeyTable.from_wire(keys))

    def __serve_build_asgi_app__(self) -> Any:
        from aegis_online.serve.app import create_app

        return create_app(self.service)


def deployment_name(expert: str) -> str:
    return f"expert-{expert}"


def build_app(config: ServiceConfig, keys: KeyTable) -> serve.Application:
    """The Ray Serve application of ``config``: the expert deployments and the ingress, bound."""
    experts: dict[str, serve.Application] = {}
    for spec, serving in config.expert_plan():
        hardware = spec.hardware
        actor_options: dict[str, Any] = {
            "num_cpus": serving.num_cpus if serving.num_cpus is not None else hardware.cpus,
            "memory": int(hardware.memory_gb * 1024**3),
        }
        gpus = serving.num_gpus if serving.num_gpus is not None else hardware.gpus
        if gpus:
            actor_options["num_gpus"] = gpus
        experts[spec.name] = ExpertDeployment.options(
            name=deployment_name(spec.name),
            **_replica_options(serving.replicas, serving.autoscaling),
            max_ongoing_requests=serving.max_ongoing_requests,
            ray_actor_options=actor_options,
        ).bind(spec.model_dump(mode="json"), serving.model_dump(mode="json"))
    # The ingress gets the config without the inline keys (their digests travel in ``keys``).
    wire_config = config.model_dump(mode="json", exclude={"auth": {"keys"}})
    return ModerationIngress.options(
        name="ingress",
        **_replica_options(config.ingress.replicas, config.ingress.autoscaling),
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
    ).bind(wire_config, keys.to_wire(), experts)


def _replica_options(replicas: int, autoscaling: Autoscaling | None) -> dict[str, Any]:
    if autoscaling is None:
        return {"num_replicas": replicas}
    return {"num_replicas": "auto", "autoscaling_config": autoscaling.to_ray()}


def _replicas(replicas: int, autoscaling: Autoscaling | None, bound: str) -> int:
    if autoscaling is None:
        return replicas
    return autoscaling.max_replicas if bound == "max" else max(autoscaling.min_replicas, 1)


def resource_needs(config: ServiceConfig, bound: str = "min") -> dict[str, float]:
    """CPUs and GPUs the application reserves, summed over replicas: at start (``min``: autoscaled deployments at
    their floor, at least one replica) or at most (``max``: every autoscaled deployment at its ceiling)."""
    cpus = _replicas(config.ingress.replicas, config.ingress.autoscaling, bound) * config.ingress.num_cpus
    gpus = 0.0
    for spec, serving in config.expert_plan():
        replicas = _replicas(serving.replicas, serving.autoscaling, bound)
        cpus += replicas * (serving.num_cpus if serving.num_cpus is not None else spec.hardware.cpus)
        gpus += replicas * (serving.num_gpus if serving.num_gpus is not None else spec.hardware.gpus)
    return {"CPU": cpus, "GPU": gpus}
