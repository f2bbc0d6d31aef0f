"""Serving benchmark: ``POST /v1/moderate`` through Ray Serve with the CPU experts, against the same experts called in
process, in the same run; and the per-request cost of the ingress itself.

Cases, each at several concurrencies (requests in flight), on the same stream of real text:

* ``in process``: ``Engine.moderate`` with the catalog's CPU experts built in this process (no HTTP, no Ray).
* ``ray serve, replicas``: the service's Ray Serve application on local Ray with every expert a deployment of its
  own (one replica each, batched by ``ReplicaBatcher``), called over HTTP from this process with the project's client
  (``aegis_online.client.AsyncAegisClient``, no retries: a refusal is an error of the run).
* ``ray serve, in ingress``: the same with the default placement: the ``cpu-light`` experts (profanity-check) are
  built inside the ingress and called in process, MiniLM stays a deployment. Same Ray session, redeployed.

Both see texts they have not seen before (MiniLM caches embeddings per process), after a warm-up. The client shares
the machine with the service, as it does in the in-process case.

Then the ingress' own cost per request in microseconds, with instant experts (outputs computed beforehand): the
engine's combine + policy + prediction log (``Engine.decide``), and the whole FastAPI request (parsing, auth,
validation, fan-out to the instant experts, decide, metrics, JSON) sent straight into the ASGI app (no client).

Run ``python bench/serving.py``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import aegis_online  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_online.client import AegisClient, AsyncAegisClient, RetryPolicy
from aegis_online.config import ServiceConfig
from aegis_online.demos.prompts import demo_prompts
from aegis_online.engine import Engine
from aegis_online.experts import Expert, ExpertInput
from aegis_online.experts.build import build_expert
from aegis_online.schemas import ExpertOutput, Message, ModerationRequest
from aegis_online.serve.auth import KeyTable
from aegis_online.taxonomy import CANONICAL_IDS

WARM_UP = 32


def percentiles(ms: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def run_load(call: Callable[[int], Awaitable[None]], n: int, concurrency: int) -> tuple[float, list[float]]:
    """``n`` calls with at most ``concurrency`` in flight; (requests/s, latencies in ms)."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started), latencies


def request(text: str) -> ModerationRequest:
    return ModerationRequest(messages=[Message(role="user", content=text)])


def in_process_case(texts: list[str], levels: Sequence[int], n: int) -> dict[int, tuple[float, float, float]]:
    config = ServiceConfig()
    engine = Engine([build_expert(spec) for spec, _ in config.expert_plan()])
    results = {}

    async def measure() -> None:
        warm = [f"{t} [in-process warm-up]" for t in texts[:WARM_UP]]
        await run_load(lambda i: engine.moderate(request(warm[i])), len(warm), max(levels))
        offset = 0
        for c in levels:

            async def call(i: int, base: int = offset, c: int = c) -> None:
                await engine.moderate(request(f"{texts[(base + i) % len(texts)]} [in-process {c}:{i}]"))

            await run_load(call, 2 * c, c)  # this level's own warm-up (threads, connections)
            rps, lat = await run_load(lambda i, base=offset + 2 * c, c=c: call(i, base, c), n, c)
            results[c] = (rps, *percentiles(lat))
            offset += n + 2 * c

    asyncio.run(measure())
    return results


def served_config(placement: str = "auto") -> ServiceConfig:
    """The CPU experts as the service runs them, with the torch threads the in-process experts have (all cores:
    Ray would give a replica reserving half a CPU a single thread); ``placement`` for every expert."""
    threads = os.cpu_count() or 1
    specs = [spec for spec, _ in ServiceConfig().expert_plan()]
    served = {spec.name for spec in specs}
    # An expert that shares its host's replica (minilm-heads reads minilm-embedding's embedding of each text) gets
    # no options: options of its own would ask for a deployment of its own, a second MiniLM embedding every text.
    plan = [
        {"name": spec.name}
        if spec.shares_replica_with in served
        else {"name": spec.name, "threads": threads, "placement": placement}
        for spec in specs
    ]
    # Admission control off: this measures the serving path at fixed concurrencies (bench/overload.py measures
    # admission control under overload); the embedded store in memory only.
    limits = {"deadline_ms": 30_000, "admission": {"enabled": False}}
    return ServiceConfig.model_validate(
        {"limits": limits, "ingress": {"num_cpus": 0.2}, "experts": {"use": plan}, "store": {"persist": False}}
    )


#: Ray Serve cases: name -> placement of every expert
RAY_CASES = {"replicas": "replica", "in ingress": "auto"}
RATIO_LABELS = {"replicas": "repl", "in ingress": "ingr"}


def ray_cases(
    texts: list[str], levels: Sequence[int], n: int
) -> tuple[dict[str, dict[int, tuple[float, float, float]]], float, dict[str, dict[str, Any]]]:
    """Every ``RAY_CASES`` placement in one Ray session (redeployed between them); the first start-up time; how
    MiniLM's replica batched in each (``ExpertDeployment.batching``)."""
    from aegis_online.rayserve.runtime import APP_NAME, start_ray, start_serve, stop_ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp_dir = Path(tempfile.mkdtemp(prefix="aegis-ray-", dir="/tmp"))
    results = {}
    batching = {}
    startup = 0.0
    try:
        started = time.perf_counter()
        start_ray(address="local", temp_dir=temp_dir)
        start_serve("127.0.0.1", port)
        for i, (name, placement) in enumerate(RAY_CASES.items()):
            if i:
                from ray import serve

                serve.delete(APP_NAME)
            results[name] = ray_case(port, served_config(placement), texts, levels, n, offset=i * 10 * n)
            startup = startup or time.perf_counter() - started
            batching[name] = replica_batching(BATCHED_EXPERT)
    finally:
        stop_ray(temp_dir)
    return results, startup, batching


#: the expert whose replica's batching the bench reports (the CPU tier's only model worth batching, if any)
BATCHED_EXPERT = "minilm-embedding"


def replica_batching(expert: str) -> dict[str, Any]:
    """``ExpertDeployment.batching`` of ``expert``'s replica in the running application."""
    from ray import serve

    from aegis_online.rayserve.deployments import deployment_name
    from aegis_online.rayserve.runtime import APP_NAME

    return serve.get_deployment_handle(deployment_name(expert), app_name=APP_NAME).batching.remote().result()


def describe_batching(stats: dict[str, Any]) -> str:
    """One line: calls, batches, and the fitted cost that decides whether the replica batches."""
    calls, batches = stats["items"], stats["batches"]
    line = f"{calls} calls in {batches} batches (mean {calls / max(batches, 1):.2f})"
    if stats["fixed_ms"] is None:
        return f"{line}; batch cost not fitted yet: batching"
    mode = "batching" if stats["batch_pays"] else "one call at a time"
    return f"{line}; batch cost fitted as {stats['fixed_ms']:.1f} ms + {stats['per_call_ms']:.1f} ms x calls: {mode}"


def ray_case(
    port: int, config: ServiceConfig, texts: list[str], levels: Sequence[int], n: int, offset: int
) -> dict[int, tuple[float, float, float]]:
    """Deploy ``config`` (until it is ready) and measure it over HTTP at each level; texts from ``offset`` on."""
    import httpx

    from aegis_online.rayserve.runtime import deploy

    url = f"http://127.0.0.1:{port}"
    deploy(config, KeyTable({}))
    wait_ready(url)
    results = {}

    async def measure() -> None:
        limits = httpx.Limits(max_connections=max(levels) * 2, max_keepalive_connections=max(levels) * 2)
        once = RetryPolicy(attempts=1)
        async with AsyncAegisClient(url, timeout=120, retry=once, limits=limits) as client:

            async def post(text: str) -> None:
                await client.moderate(request(text))  # an error status raises APIError

            warm = [f"{t} [serve warm-up {offset}]" for t in texts[:WARM_UP]]
            await run_load(lambda i: post(warm[i]), len(warm), max(levels))
            base = offset
            for c in levels:

                async def call(i: int, base: int = base, c: int = c) -> None:
                    await post(f"{texts[(base + i) % len(texts)]} [serve {c}:{base + i}]")

                await run_load(call, 2 * c, c)
                rps, lat = await run_load(lambda i, base=base + 2 * c, c=c: call(i, base, c), n, c)
                results[c] = (rps, *percentiles(lat))
                base += n + 2 * c

    asyncio.run(measure())
    return results


def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    """Until /readyz answers 200, ready or degraded (``deploy`` returns before the replicas have loaded their
    models)."""
    with AegisClient(url, timeout=5) as client:
        client.wait_ready(timeout_s, poll_s=0.5, accept_degraded=True)


class InstantExpert(Expert):
    """Answers at once with fixed scores: what is left is the cost of everything around the experts."""

    def __init__(self, name: str, categories: Sequence[str], value: float) -> None:
        self.name = name
        self.categories = frozenset(categories)
        self.value = value

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        return [
            ExpertOutput(expert=self.name, scores={c.id: self.value for c in item.categories if self.covers(c)})
            for item in batch
        ]


def ingress_cost(repeats: int) -> tuple[float, float]:
    """Microseconds per request: ``Engine.decide`` alone, and the whole FastAPI request with instant experts."""
    from aegis_online.serve.app import create_app
    from aegis_online.serve.service import build_service

    experts = [
        InstantExpert("minilm-embedding", CANONICAL_IDS, 0.2),
        InstantExpert("profanity-check", ["S8", "S10", "S12"], 0.7),
    ]
    config = ServiceConfig.model_validate({"store": {"persist": False}})  # nothing written to disk
    service = build_service(config, experts, KeyTable({}))
    engine = service.engine
    req = request("a benchmark prompt")
    outputs = [
        ExpertOutput(expert="minilm-embedding", scores=dict.fromkeys(CANONICAL_IDS, 0.2)),
        ExpertOutput(expert="profanity-check", scores={"S8": 0.7, "S10": 0.7, "S12": 0.7}),
    ]
    for _ in range(200):
        engine.decide(req, outputs)
    started = time.perf_counter()
    for _ in range(repeats):
        engine.decide(req, outputs)
    decide_us = (time.perf_counter() - started) / repeats * 1e6

    app = create_app(service)
    body = json.dumps({"messages": [{"role": "user", "content": "a benchmark prompt"}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/moderate",
        "raw_path": b"/v1/moderate",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def one() -> None:
        """One request straight into the ASGI app: only the server's work is timed, no HTTP client."""
        delivered = False
        status: list[int] = []

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"the app answered {status}")

    async def measure() -> float:
        for _ in range(200):
            await one()
        started = time.perf_counter()
        for _ in range(repeats):
            await one()
        return (time.perf_counter() - started) / repeats * 1e6

    service.start()
    try:
        request_us = asyncio.run(measure())
    finally:
        service.stop()
    return decide_us, request_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: small sizes.")
    parser.add_argument("--requests", type=int, default=None, help="Measured requests per concurrency level.")
    parser.add_argument("--concurrency", default=None, help="Comma-separated levels (default 1,4,16,32).")
    args = parser.parse_args()
    levels = [int(c) for c in (args.concurrency or ("1,8" if args.quick else "1,4,16,32")).split(",")]
    n = args.requests or (40 if args.quick else 200)
    repeats = 300 if args.quick else 3000
    rows, source = demo_prompts(max(4 * n, 400), seed=11, held_out_only=False)  # speed only: fewest repeats
    texts = [r.text for r in rows]
    print(f"machine: {os.cpu_count()} CPUs; text: {source}")
    print(
        f"{n} measured requests per concurrency level, after a warm-up ({WARM_UP} requests, then 2 x concurrency); "
        "experts: the catalog's CPU experts\n"
    )

    decide_us, request_us = ingress_cost(repeats)
    local = in_process_case(texts, levels, n)
    served, startup, batching = ray_cases(texts, levels, n)

    print(f"Ray Serve start-up (ray.init + serve.start + deploy, models warmed up): {startup:.1f} s\n")
    names = ["in process", *(f"ray serve, {name}" for name in RAY_CASES)]
    head = " | ".join(f"{name:^26}" for name in names)
    units = " | ".join(f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}" for _ in names)
    ratios = " ".join(f"{RATIO_LABELS[name]:>5}" for name in RAY_CASES)
    header = f"{'concurrency':>11} | {head} | ratio\n{'':>11} | {units} | {ratios}"
    print(header)
    print("-" * len(header.splitlines()[1]))
    for c in levels:
        cells = [local[c], *(served[name][c] for name in RAY_CASES)]
        figures = " | ".join(f"{r:>8.1f} {p50:>8.1f} {p99:>8.1f}" for r, p50, p99 in cells)
        shares = " ".join(f"{served[name][c][0] / local[c][0]:>5.2f}" for name in RAY_CASES)
        print(f"{c:>11} | {figures} | {shares}")
    print("\nratio = Ray Serve req/s / in-process req/s (same experts, same text, same run)")
    if 1 in levels:
        share = served["in ingress"][1][0] / local[1][0]
        print(f"cpu-light experts in the ingress, concurrency 1: {share:.2f} of in-process (target >= 0.80)")
    for name, stats in batching.items():
        print(f"{BATCHED_EXPERT}'s replica, ray serve, {name}: {describe_batching(stats)}")
    print()
    print("Ingress cost per request with instant experts (in process, no network):")
    rows = (
        ("combine + policy + prediction log (Engine.decide, 23 categories x 2 experts)", decide_us),
        ("whole FastAPI request (auth, validation, fan-out, decide, metrics, JSON)", request_us),
        ("  of which around the engine's decide", request_us - decide_us),
    )
    for what, us in rows:
        print(f"  {what:<78} {us:8.0f} us")


if __name__ == "__main__":
    main()
