"""The Ray Serve application: one deployment per expert, and the FastAPI ingress that fans out to them.

``ExpertDeployment`` wraps an ``Expert`` built from its catalog entry (``build_expert``) behind a ``ReplicaBatcher``:
concurrent requests to one replica are scored together, each batch taking every request that queued while the
previous one ran (up to ``max_batch_size``; a batch with fewer waits up to ``batch_wait_timeout_ms`` for more), or
one at a time where the replica measured that a batch costs at least its requests one by one (MiniLM on a CPU).
``@serve.batch`` froze each batch as the previous one started, and formed batches of 1-3 requests under load
(``rayserve.batching`` says why). It
loads its model and scores one text before it reports ready, so the first real request does not pay for loading.
Resources come from the catalog (``hardware.cpus`` / ``gpus`` / ``memory_gb``; fractional CPUs for light experts)
unless the config overrides them. A vLLM expert sharded over ``tensor_parallel_size`` N > 1 GPUs gets a placement
group per replica instead of ``num_gpus``: N bundles of one GPU each, on one node (``replica_resources``), in which
vLLM starts its N GPU workers.

``ModerationIngress`` builds the service (``service.build_service``) over ``RemoteExpert`` stand-ins whose
``score`` calls a deployment handle, and serves ``app.create_app``. The engine's own ``moderate`` then does the
fan-out: every expert in parallel under the request's deadline; one that fails or is late is named in
``missing_experts`` and treated as asleep, and its Ray request is cancelled.

Cheap experts (``placement``: by default catalog cost ``cpu-light``, i.e. profanity-check) are built inside the
ingress instead and called in process: a Ray hop (serialisation, a queue, a batch wait, two event-loop turns) costs
more than their work (about 4 ms), and on a small machine every hop's CPU is taken from the experts. Their work
runs in a thread (``asyncio.to_thread`` in the backend), never on the ingress' event loop. They keep their place in
the expert order (it names the learner's keys) and their CPUs are reserved by the ingress replica.

``build_app(config, keys)`` binds it all. Only key digests go to the ingress (``KeyTable.to_wire``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ray import serve
from ray.serve.handle import DeploymentHandle

from aegis_online.catalog import ExpertSpec
from aegis_online.config import Autoscaling, ExpertServing, ServiceConfig
from aegis_online.experts import Expert, ExpertInput, score_with_deadline
from aegis_online.experts.build import build_expert
from aegis_online.rayserve.batching import ReplicaBatcher
from aegis_online.schemas import ExpertOutput, Message
from aegis_online.serve.auth import KeyTable
from aegis_online.serve.metrics import REPLICA_POLL_TIMEOUT_S
from aegis_online.taxonomy import CANONICAL

log = logging.getLogger("aegis_online.serve")

#: Ray's own cap on one replica's work: an expert call that takes longer is an error, whatever the request deadline.
REPLICA_SCORE_TIMEOUT_S = 60.0
#: Tensor-parallel shards exchange activations at every layer: across nodes that traffic would cost more than the
#: sharding saves, so a sharded replica waits for one node with all its GPUs rather than spreading.
SHARDED_PLACEMENT_STRATEGY = "STRICT_PACK"
#: vLLM's engine process, when it runs apart from the replica (its V1 default), joins Ray as a new driver outside the
#: replica's placement group and would ask for N more GPUs; in process it finds the group the replica runs in.
SHARDED_REPLICA_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
WARM_UP_TEXT = "Hello! Could you help me write a short, friendly note to a colleague?"


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=5)
class ExpertDeployment:
    """One catalog expert, batched, and the experts it hosts (catalog ``shares_replica_with``: the same model,
    another reading of it), scored in the same process so that what they share (MiniLM's embedding of a text) is
    computed once."""

    async def __init__(
        self, spec: dict[str, Any], serving: dict[str, Any], guests: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.spec = ExpertSpec.model_validate(spec)
        options = ExpertServing.model_validate(serving)
        self.expert = await build_ready_expert(self.spec, options, in_thread=False)
        self.experts = {self.spec.name: self.expert}
        for guest in guests:
            guest_spec = ExpertSpec.model_validate(guest)
            self.experts[guest_spec.name] = await build_ready_expert(guest_spec, options, in_thread=False)
        self.batcher: ReplicaBatcher[tuple[ExpertInput, str], ExpertOutput] = ReplicaBatcher(
            self._score_batch,
            options.max_batch_size,
            options.batch_wait_timeout_ms / 1000.0,
            timed=lambda outputs: all(output.ok for output in outputs),
        )

    def describe(self, name: str | None = None) -> dict[str, Any]:
        """What the ingress needs to route to an expert of this deployment (default: its own): its name, coverage
        and languages (None: any)."""
        expert = self.expert if name is None else self.experts[name]
        languages = expert.languages
        return {
            "name": expert.name,
            "categories": sorted(expert.categories),
            "free_form": bool(expert.free_form),
            "languages": None if languages is None else sorted(languages),
        }

    async def score(self, item: ExpertInput, name: str) -> ExpertOutput:
        """``item`` scored by the hosted expert ``name``, in a batch with the requests queued beside it."""
        return await self.batcher((item, name))

    def batching(self) -> dict[str, Any]:
        """This replica's id, the batches it scored since it started, the requests in them (a benchmark's mean batch),
        and the fitted cost of a batch, ``fixed_ms + per_call_ms x calls`` (None before it is known), which decides
        whether the replica batches at all (``batch_pays``: ``rayserve.batching`` says how). The ingress exports it
        on ``/metrics`` (``aegis_replica_*``)."""
        fitted = self.batcher.cost.fit()
        fixed_ms, per_call_ms = (None, None) if fitted is None else (1000 * fitted[0], 1000 * fitted[1])
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batches": self.batcher.batches,
            "items": self.batcher.items,
            "fixed_ms": fixed_ms,
            "per_call_ms": per_call_ms,
            "batch_pays": self.batcher.cost.batch_pays(),
        }

    async def _score_batch(self, calls: list[tuple[ExpertInput, str]]) -> list[ExpertOutput]:
        items, names = zip(*calls, strict=True)
        return await score_named(self.experts, self.spec.name, items, names)


async def score_named(
    experts: Mapping[str, Expert], host: str, items: Sequence[ExpertInput], names: Sequence[str]
) -> list[ExpertOutput]:
    """Score each item with the expert it names, one call per expert; the host first, so that its guests find
    what they share with it (the embedding of each text) in the process' cache."""
    outputs: list[ExpertOutput | None] = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for name in sorted(groups, key=lambda n: n != host):
        index = groups[name]
        scored = await score_with_deadline(experts[name], [items[i] for i in index], REPLICA_SCORE_TIMEOUT_S)
        for i, output in zip(index, scored, strict=True):
            outputs[i] = output
    return [o for o in outputs if o is not None]


async def build_ready_expert(spec: ExpertSpec, options: ExpertServing, *, in_thread: bool) -> Expert:
    """Build the expert of ``spec`` (in a thread when ``in_thread``: its imports and model load take seconds) and
    score one text, so that the first real request does not pay for loading; fail loudly if it cannot."""
    started = time.perf_counter()
    if options.threads:  # Ray starts a replica with OMP_NUM_THREADS = its CPUs, rounded up: 1 for a fraction
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(options.threads)
    expert = await asyncio.to_thread(build_expert, spec) if in_thread else build_expert(spec)
    item = ExpertInput(
        messages=(Message(role="user", content=WARM_UP_TEXT),),
        check="prompt",
        categories=tuple(c for c in CANONICAL if expert.covers(c)),
    )
    output = (await score_with_deadline(expert, [item], REPLICA_SCORE_TIMEOUT_S))[0]
    if not output.ok:
        raise RuntimeError(f"expert {spec.name} failed its warm-up: {output.error}")
    if options.threads and "torch" in sys.modules:  # loaded by the warm-up, when the expert uses it
        sys.modules["torch"].set_num_threads(options.threads)
    log.info("expert %s ready in %.1f s", spec.name, time.perf_counter() - started)
    return expert


class RemoteExpert(Expert):
    """An expert deployment as the engine sees it: coverage and languages known (the engine's ``moderate`` decides
    whom to call with them, as for an expert in process), ``score`` a call to the deployment's handle.

    The latency it reports is the round trip seen by the ingress (queueing and transport included): what a caller
    waits for. A cancelled call (the request's deadline passed) cancels the Ray request too.
    """

    def __init__(
        self,
        name: str,
        categories: Sequence[str],
        free_form: bool,
        handle: DeploymentHandle,
        languages: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.categories = frozenset(categories)
        self.free_form = free_form
        self.languages = None if languages is None else frozenset(languages)
        self.handle = handle

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        responses = [self.handle.score.remote(item, self.name) for item in batch]
        try:
            outputs = [await response for response in responses]
        except asyncio.CancelledError:
            for response in responses:
                response.cancel()
            raise
        elapsed = (time.perf_counter() - started) * 1000.0
        return [o.model_copy(update={"latency_ms": elapsed}) for o in outputs]


async def replica_reports(deployments: Mapping[str, DeploymentHandle]) -> list[tuple[str, str, dict[str, Any]]]:
    """One batching report per expert deployment, from whichever replica Ray routes the call to; a deployment that
    does not answer in ``REPLICA_POLL_TIMEOUT_S`` (or fails) is left out, and its call cancelled."""
    responses = {name: handle.batching.remote() for name, handle in deployments.items()}

    async def one(name: str) -> tuple[str, str, dict[str, Any]] | None:
        try:
            report = await asyncio.wait_for(responses[name], REPLICA_POLL_TIMEOUT_S)
        except Exception:  # a replica starting, stopping or stuck: the next scrape asks again
            responses[name].cancel()
            log.debug("no batching report from %s", name, exc_info=True)
            return None
        return name, report.pop("replica"), report

    return [r for r in await asyncio.gather(*(one(name) for name in responses)) if r is not None]


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=10)
@serve.ingress()
class ModerationIngress:
    """The HTTP entry point: the FastAPI app of ``create_app`` over the expert deployments and the experts placed
    in the ingress (``plan``: every expert in the engine's order, with its catalog entry and serving options;
    ``experts``: the handles of those that are deployments)."""

    async def __init__(
        self,
        config: dict[str, Any],
        keys: list[dict[str, Any]],
        experts: Mapping[str, DeploymentHandle],
        plan: Sequence[dict[str, Any]] = (),
    ) -> None:
        from aegis_online.serve.service import build_service

        self.config = ServiceConfig.model_validate(config)

        async def expert(entry: dict[str, Any]) -> Expert:
            handle = experts.get(entry["name"])
            if handle is None:
                spec, serving = ExpertSpec.model_validate(entry["spec"]), ExpertServing.model_validate(entry["serving"])
                return await build_ready_expert(spec, serving, in_thread=True)
            d = await handle.describe.remote(entry["name"])
            return RemoteExpert(d["name"], d["categories"], d["free_form"], handle, d.get("languages"))

        entries = list(plan) or [{"name": name} for name in experts]
        built = await asyncio.gather(*(expert(entry) for entry in entries))
        self.service = build_service(self.config, built, KeyTable.from_wire(keys))
        deployments = {handle.deployment_name: handle for handle in experts.values()}  # a guest shares its host's
        self.service.metrics.watch_replicas(lambda: replica_reports(deployments))

    def __serve_build_asgi_app__(self) -> Any:
        from aegis_online.serve.app import create_app

        return create_app(self.service)


def deployment_name(expert: str) -> str:
    return f"expert-{expert}"


@dataclass(frozen=True)
class Placement:
    """Where one served expert runs: ``ingress`` (built in the ingress, called in process), ``replica`` (a
    deployment of its own) or ``guest`` (in ``host``'s deployment: catalog ``shares_replica_with``)."""

    spec: ExpertSpec
    serving: ExpertServing
    where: Literal["ingress", "replica", "guest"]
    host: str | None = None


def placements(config: ServiceConfig) -> list[Placement]:
    """Each served expert's place, in the engine's order.

    An expert whose catalog entry ``shares_replica_with`` another served expert runs where that one does (in its
    deployment, or in the ingress with it), unless the config gives it serving options of its own (replicas,
    autoscaling, CPUs, placement, ...): then it asked for a deployment of its own and gets one."""
    plan = config.expert_plan()
    own = {spec.name: serving.in_ingress(spec) for spec, serving in plan}
    result = []
    for spec, serving in plan:
        host = spec.shares_replica_with
        asked_apart = bool(serving.model_fields_set - {"name", "backend_options"})
        if host in own and not asked_apart:
            result.append(Placement(spec, serving, "ingress" if own[host] else "guest", host))
        else:
            result.append(Placement(spec, serving, "ingress" if own[spec.name] else "replica"))
    return result


def build_app(config: ServiceConfig, keys: KeyTable) -> serve.Application:
    """The Ray Serve application of ``config``: the expert deployments (with their guests) and the ingress, bound."""
    places = placements(config)
    plan = [
        {"name": p.spec.name, "spec": p.spec.model_dump(mode="json"), "serving": p.serving.model_dump(mode="json")}
        for p in places
    ]
    experts: dict[str, serve.Application] = {}
    for p in places:
        if p.where != "replica":
            continue
        guests = [g.spec.model_dump(mode="json") for g in places if g.where == "guest" and g.host == p.spec.name]
        experts[p.spec.name] = ExpertDeployment.options(
            name=deployment_name(p.spec.name),
            **_replica_options(p.serving.replicas, p.serving.autoscaling),
            max_ongoing_requests=p.serving.max_ongoing_requests,
            **replica_resources(p.spec, p.serving),
        ).bind(p.spec.model_dump(mode="json"), p.serving.model_dump(mode="json"), guests)
    for p in places:
        if p.where == "guest":
            experts[p.spec.name] = experts[p.host]  # the ingress calls the host's deployment, naming the guest
    # The ingress gets the config without the inline keys (their digests travel in ``keys``).
    wire_config = config.model_dump(mode="json", exclude={"auth": {"keys"}})
    ingress = ingress_replica_needs(config)
    ingress_options: dict[str, Any] = {"num_cpus": ingress["CPU"]}
    if ingress["memory_gb"]:
        ingress_options["memory"] = int(ingress["memory_gb"] * 1024**3)
    return ModerationIngress.options(
        name="ingress",
        **_replica_options(config.ingress.replicas, config.ingress.autoscaling),
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        # The proxy queues what the ingress replicas cannot take, unseen by admission control: bounded, it refuses
        # the rest at once with 503 and Retry-After.
        max_queued_requests=config.ingress.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": 1},
        ray_actor_options=ingress_options,
    ).bind(wire_config, keys.to_wire(), experts, plan)


def replica_resources(spec: ExpertSpec, serving: ExpertServing) -> dict[str, Any]:
    """The Ray Serve options that reserve what one replica of an expert deployment needs.

    Unsharded: ``ray_actor_options`` with the CPUs, memory and (fraction of a) GPU. Sharded over
    ``tensor_parallel_size`` N > 1: the replica itself holds no GPU; ``placement_group_bundles`` reserve N bundles of
    one GPU each on one node (``SHARDED_PLACEMENT_STRATEGY``), the first also holding the replica's CPUs and memory
    (Ray Serve places the replica in the first bundle), and vLLM's GPU workers, started by the replica, land in them.
    """
    actor_options: dict[str, Any] = {
        "num_cpus": serving.num_cpus if serving.num_cpus is not None else spec.hardware.cpus,
        "memory": int(spec.hardware.memory_gb * 1024**3),
    }
    shards = spec.tensor_parallel_size
    if shards > 1:
        bundles = [{"GPU": 1.0} for _ in range(shards)]
        bundles[0] |= {"CPU": actor_options["num_cpus"], "memory": actor_options["memory"]}
        return {
            "ray_actor_options": actor_options | {"runtime_env": {"env_vars": dict(SHARDED_REPLICA_ENV)}},
            "placement_group_bundles": bundles,
            "placement_group_strategy": SHARDED_PLACEMENT_STRATEGY,
        }
    gpus = serving.num_gpus if serving.num_gpus is not None else spec.hardware.gpus
    if gpus:
        actor_options["num_gpus"] = gpus
    return {"ray_actor_options": actor_options}


def _replica_options(replicas: int, autoscaling: Autoscaling | None) -> dict[str, Any]:
    if autoscaling is None:
        return {"num_replicas": replicas}
    return {"num_replicas": "auto", "autoscaling_config": autoscaling.to_ray()}


def _replicas(replicas: int, autoscaling: Autoscaling | None, bound: str) -> int:
    if autoscaling is None:
        return replicas
    return autoscaling.max_replicas if bound == "max" else max(autoscaling.min_replicas, 1)


def ingress_replica_needs(config: ServiceConfig) -> dict[str, float]:
    """What one ingress replica reserves: its own CPUs plus those (and the memory) of the experts placed in it."""
    cpus, memory_gb = config.ingress.num_cpus, 0.0
    for p in placements(config):
        if p.where == "ingress" and p.host is None:  # a guest shares its host's reservation
            cpus += p.serving.num_cpus if p.serving.num_cpus is not None else p.spec.hardware.cpus
            memory_gb += p.spec.hardware.memory_gb
    return {"CPU": cpus, "memory_gb": memory_gb}


def resource_needs(config: ServiceConfig, bound: str = "min") -> dict[str, float]:
    """CPUs and GPUs the application reserves, summed over replicas: at start (``min``: autoscaled deployments at
    their floor, at least one replica) or at most (``max``: every autoscaled deployment at its ceiling). Experts
    placed in the ingress count once per ingress replica."""
    ingress = _replicas(config.ingress.replicas, config.ingress.autoscaling, bound)
    cpus = ingress * ingress_replica_needs(config)["CPU"]
    gpus = 0.0
    for p in placements(config):
        if p.where != "replica":
            continue
        spec, serving = p.spec, p.serving
        replicas = _replicas(serving.replicas, serving.autoscaling, bound)
        cpus += replicas * (serving.num_cpus if serving.num_cpus is not None else spec.hardware.cpus)
        gpus += replicas * (serving.num_gpus if serving.num_gpus is not None else spec.hardware.gpus)
    return {"CPU": cpus, "GPU": gpus}
